"""`mnlu-jax train --config configs/train/NAME.yaml [key=value ...]`."""

from __future__ import annotations

import argparse


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="sharded SFT on MNLU-Instruct (resumes from output_dir/checkpoints)")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", help="key=value overrides, dotted for sections (optim.learning_rate=1e-4)")

    def run(a):
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
