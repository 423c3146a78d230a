"""`mnlu-jax train --config configs/train/NAME.yaml [key=value ...]`."""

from __future__ import annotations

import argparse


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="sharded SFT on MNLU-Instruct (resumes from output_dir/checkpoints)")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", help="key=value overrides, dotted for sections (optim.learning_rate=1e-4)")
    p.add_argument("--aot-devices", dest="aot_devices", type=int, default=None,
                   help="compile the train step ahead of time for the config's mesh over N devices (simulated on the "
                        "CPU), report its memory per device and stop; no data or weights are read (train/aot.py)")
    p.add_argument("--model-config", dest="model_config", default=None,
                   help="--aot-devices: the architecture as a config.json, when model.source is not on this machine")
    p.add_argument("--device-memory", dest="device_memory", default=None,
                   help="--aot-devices: memory per device to check the peak against (e.g. 80GB, 95GiB)")
    p.add_argument("--report", default=None, help="--aot-devices: also write the report as JSON to this file")

    def run_aot(a) -> int:
        import sys

        from mnlu_jax.train.aot import compile_check, host_devices_env, markdown, run_with_devices, write_report

        if a.aot_devices < 1:
            raise ValueError(f"--aot-devices {a.aot_devices}: expected at least 1")
        if "jax" not in sys.modules:  # XLA reads the host device count only when it starts
            import os

            os.environ.update(host_devices_env(a.aot_devices))
        import jax

        if jax.default_backend() != "cpu" or jax.device_count() != a.aot_devices:
            argv = ["--config", a.config, *a.overrides, "--aot-devices", str(a.aot_devices)]
            for flag, value in (("--model-config", a.model_config), ("--device-memory", a.device_memory),
                                ("--report", a.report)):
                if value is not None:
                    argv += [flag, value]
            return run_with_devices(argv, a.aot_devices)
        from mnlu_jax.cli import _size
        from mnlu_jax.config import load_config
        from mnlu_jax.train.config import TrainConfig

        report = compile_check(load_config(TrainConfig, a.config, a.overrides), a.model_config,
                               _size(a.device_memory) if a.device_memory else None)
        print(markdown(report), end="")
        if a.report:
            write_report(report, a.report)
        return 0 if report.get("fits", True) else 1

    def run(a):
        if a.aot_devices is not None:
            return run_aot(a)
        from mnlu_jax.config import load_config
        from mnlu_jax.train.config import TrainConfig, check_train_config
        from mnlu_jax.train.loop import TrainingDiverged, run_train

        cfg = load_config(TrainConfig, a.config, a.overrides)
        try:
            check_train_config(cfg)
        except ValueError as e:  # name the file (the overrides are on the command line the user just typed)
            raise ValueError(f"{a.config}{' with ' + ' '.join(a.overrides) if a.overrides else ''}: {e}") from None
        try:
            s = run_train(cfg)
        except TrainingDiverged as e:
            print(f"mnlu-jax train: {e}")
            return 3
        if s.get("preempted"):
            return 0
        print(f"trained {s['steps']} steps; outputs in {cfg.output_dir}")
        return 0

    p.set_defaults(func=run)
