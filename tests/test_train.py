"""SFT trainer: loss falls, exact resume after SIGKILL, SIGTERM checkpoint, NaN stop, multi-process equivalence."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jax

from mnlu_jax.config import load_config
from mnlu_jax.data.build import run_build
from mnlu_jax.train.config import TrainConfig
from mnlu_jax.train.loop import TrainingDiverged, run_train
from mnlu_jax.train.step import flops_per_token
from mnlu_jax.weights.convert import load_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample_data")
    run_build(ROOT / "configs/data/sample.yaml", out)
    return out


def cfg_for(data, out, *overrides):
    return load_config(TrainConfig, ROOT / "configs/train/tiny.yaml",
                       [f"data.path={data}", f"output_dir={out}", "tensorboard=false", *overrides])


def metrics(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_outputs_load(sample_data, tmp_path):
    s = run_train(cfg_for(sample_data, tmp_path / "run", "max_steps=30", "checkpoint.every_steps=10"), progress=False)
    losses = [r["loss"] for r in s["history"]]
    assert len(losses) == 30 and np.mean(losses[-5:]) < losses[0] - 1.0
    # packed rows: several documents each, and never more runs than a 512-token row of ≥ 1-token documents holds
    assert all(2 <= r["max_runs_per_row"] <= 512 for r in metrics(tmp_path / "run"))
    params, config, _ = load_model(tmp_path / "run" / "final")
    assert config.sliding_window == 32
    transformers = pytest.importorskip("transformers")
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf")
    card = (tmp_path / "run" / "hf" / "README.md").read_text()  # a model card, as transformers' Trainer writes
    assert card.startswith("---\nlibrary_name: transformers\n") and "| optimizer steps | 30 |" in card
    assert f"| final training loss | {losses[-1]:.4f} |" in card and "randomly initialised" in card
    assert (tmp_path / "run" / "loss.png").exists() and (tmp_path / "run" / "config.yaml").exists()
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == [20, 30]


@pytest.mark.parametrize("log_every", [1, 100])
def test_nan_stops_cleanly_with_last_good_checkpoint(sample_data, tmp_path, log_every):
    """Divergence stops the run, and the checkpoint it names holds finite weights, also when the steps between two
    log lines save checkpoints (log_every 100: before session 22 a NaN state was saved and named as the last good)."""
    import orbax.checkpoint as ocp

    cfg = cfg_for(sample_data, tmp_path / "nan", "optim.learning_rate=1.0e+30", "optim.grad_clip=0",
                  "checkpoint.every_steps=1", "max_steps=20", f"log_every={log_every}")
    with pytest.raises(TrainingDiverged, match=r"(loss is nan|gradient norm is nan|the weights hold non-finite "
                                               r"values) at step \d+; stopped. Last good checkpoint: step (\d+)") as e:
        run_train(cfg, progress=False)
    last_good = int(str(e.value).split("Last good checkpoint: step ")[1].split()[0])
    saved = sorted(int(p.name) for p in (tmp_path / "nan" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == last_good
    state = ocp.StandardCheckpointer().restore(tmp_path / "nan" / "checkpoints" / str(last_good) / "state")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state["params"]))
    if log_every == 1:  # the run that stopped let go of its output_dir; one that holds it keeps others out
        import fcntl

        with open(tmp_path / "nan" / "train.lock", "a+") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(ValueError, match=r"nan: being written by pid \d+ on .*\(lock .*train\.lock\)"):
                run_train(cfg, progress=False)


def test_a_resumed_run_keeps_the_metrics_of_the_steps_it_does_not_repeat(tmp_path):
    """metrics.jsonl after a kill: the records past the checkpoint and a torn last one go, so the resumed run's
    records follow on (appending glued its first record to the torn line, and repeated steps twice)."""
    from mnlu_jax.train.loop import _keep_metrics_through

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0 / i}) + "\n" for i in range(1, 6)) + '{"step": 6, "lo')
    _keep_metrics_through(path, 3)
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2, 3]
    _keep_metrics_through(path, 0)  # a run started over
    assert path.read_text() == ""


def test_a_resumed_run_continues_its_wandb_run(sample_data, tmp_path, monkeypatch):
    """wandb (optional, not installed here) through a stand-in module: the resumed run opens the same wandb run
    (id kept in output_dir, resume="allow"), logs only the steps after its checkpoint, and finishes it."""
    import types

    calls = []

    class Run:
        def __init__(self, **kw):
            calls.append(("init", kw))

        def log(self, rec, step):
            calls.append(("log", step))

        def finish(self):
            calls.append(("finish", None))

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Run(**kw)))
    out = tmp_path / "wb"
    run_train(cfg_for(sample_data, out, "max_steps=2", "checkpoint.every_steps=1", "wandb_project=p"), progress=False)
    run_train(cfg_for(sample_data, out, "max_steps=4", "checkpoint.every_steps=1", "wandb_project=p"), progress=False)
    inits = [kw for what, kw in calls if what == "init"]
    assert len(inits) == 2 and inits[0]["id"] == inits[1]["id"] == (out / "wandb_run_id").read_text().strip()
    assert all(kw["resume"] == "allow" and kw["project"] == "p" for kw in inits)
    assert [c for c in calls if c[0] != "init"] == [("log", 1), ("log", 2), ("finish", None), ("log", 3),
                                                   ("log", 4), ("finish", None)]


def test_sigterm_writes_a_restorable_checkpoint(sample_data, tmp_path, monkeypatch):
    """SIGTERM arrives during step 3 (sent from the progress bar's update, so it does not race the training speed:
    a timer once fired after a fast run had already finished)."""
    import mnlu_jax.train.loop as loop

    class TerminatingBar(loop.tqdm):
        steps = 0  # counted here: a disabled bar does not count

        def update(self, n=1):
            super().update(n)
            TerminatingBar.steps += n
            if TerminatingBar.steps == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "tqdm", TerminatingBar)
    cfg = cfg_for(sample_data, tmp_path / "term", "max_steps=30", "checkpoint.every_steps=1000")
    s = run_train(cfg, progress=False)
    monkeypatch.undo()
    assert s.get("preempted"), "the run finished without seeing SIGTERM"
    assert 3 <= s["step"] < 30
    saved = [int(p.name) for p in (tmp_path / "term" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved == [s["step"]]
    changed = cfg_for(sample_data, tmp_path / "term", "max_steps=30", "optim.learning_rate=0.01", "data.seed=7")
    with pytest.raises(ValueError, match=r"term: its checkpoints are of a run with other settings \(data\.seed: 42 "
                                         r"then, 7 now; optim\.learning_rate: 0\.003 then, 0\.01 now\)"):
        run_train(changed, progress=False)
    s2 = run_train(cfg, progress=False)  # resumes from the SIGTERM checkpoint and finishes
    assert s2["steps"] == 30 and s2["history"][0]["step"] == s["step"] + 1


def test_local_launcher_stops_the_other_processes_when_one_fails(tmp_path):
    """launch/local_multiprocess.sh with a stand-in `python3`: process 1 fails, process 0 ignores SIGTERM as a
    process blocked in a collective does; the script kills it after the grace period and exits with the failure's
    status (it used to wait for it forever)."""
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text("#!/usr/bin/env bash\n"
                    "if [ \"$MNLU_PROCESS_ID\" = 1 ]; then sleep 0.5; exit 3; fi\n"
                    "trap 'echo got-term' TERM\n"
                    "for i in $(seq 1 600); do sleep 0.1; done\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", MNLU_LAUNCH_GRACE_S="2",
               MNLU_COORDINATOR_PORT="1")
    t = time.time()
    r = subprocess.run(["bash", str(ROOT / "launch/local_multiprocess.sh"), "2", "1", "configs/train/tiny.yaml"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "a process exited with status 3; stopping the others" in r.stderr
    assert "still running 2s after SIGTERM; killing them" in r.stderr and "got-term" in r.stdout
    assert time.time() - t < 30


def _spawn(args, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "mnlu_jax", "train", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(sample_data, tmp_path):
    common = ["--config", str(ROOT / "configs/train/tiny.yaml"), f"data.path={sample_data}", "tensorboard=false",
              "max_steps=32", "checkpoint.every_steps=4", "checkpoint.async_save=false"]
    ref = _spawn(common + [f"output_dir={tmp_path / 'ref'}"])
    assert ref.wait(timeout=600) == 0, ref.stdout.read()
    victim = _spawn(common + [f"output_dir={tmp_path / 'kill'}"])
    mfile = tmp_path / "kill" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if mfile.exists() and len(mfile.read_text().splitlines()) >= 14:
            break
        time.sleep(0.01)  # 18 steps of margin after step 14, with checkpoint saves among them
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    steps = [int(p.name) for p in (tmp_path / "kill" / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) < 32, "the run finished before the kill"
    resumed = _spawn(common + [f"output_dir={tmp_path / 'kill'}"])
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert f"resumed from step {max(steps)}" in out
    a = {r["step"]: r["loss"] for r in metrics(tmp_path / "ref")}
    b = {}
    for r in metrics(tmp_path / "kill"):
        b[r["step"]] = r["loss"]  # later lines (after resume) overwrite the killed run's
    assert set(b) == set(a)
    assert all(a[k] == b[k] for k in a), [(k, a[k], b[k]) for k in a if a[k] != b[k]]
    p1, _, _ = load_model(tmp_path / "ref" / "final")
    p2, _, _ = load_model(tmp_path / "kill" / "final")
    for x, y in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.mark.slow
def test_two_processes_match_one_process_and_one_device(sample_data, tmp_path):
    common = ["--config", str(ROOT / "configs/train/tiny.yaml"), f"data.path={sample_data}", "tensorboard=false",
              "max_steps=6", "export_hf=false"]
    one4 = _spawn(common + [f"output_dir={tmp_path / 'p1d4'}"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    one1 = _spawn(common + [f"output_dir={tmp_path / 'p1d1'}"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    procs = [_spawn(common + [f"output_dir={tmp_path / 'p2d2'}", "distributed=explicit"],
                    {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "MNLU_COORDINATOR": f"127.0.0.1:{port}",
                     "MNLU_NUM_PROCESSES": "2", "MNLU_PROCESS_ID": str(i), "MNLU_CPU_COLLECTIVES": "gloo"})
             for i in range(2)]
    for p in [one4, one1, *procs]:
        out = p.communicate(timeout=600)[0]
        assert p.returncode == 0, out[-3000:]
    l4 = [r["loss"] for r in metrics(tmp_path / "p1d4")]
    l1 = [r["loss"] for r in metrics(tmp_path / "p1d1")]
    l22 = [r["loss"] for r in metrics(tmp_path / "p2d2")]
    assert len(l4) == len(l1) == len(l22) == 6
    np.testing.assert_allclose(l22, l4, rtol=2e-5)
    np.testing.assert_allclose(l1, l4, rtol=2e-5)


def test_train_configs_are_checked_before_any_work(tmp_path):
    from mnlu_jax.train.config import check_batch_fits_mesh, check_train_config

    shipped = [*sorted((ROOT / "configs/train").glob("*.yaml")),
               *sorted((ROOT / "configs/paper").glob("biomistral_nlu_*.yaml"))]
    assert len(shipped) >= 7
    for path in shipped:  # every shipped run passes
        check_train_config(load_config(TrainConfig, path))
    tiny = ROOT / "configs/train/tiny.yaml"
    cases = {"optim.learning_rate=-1": r"optim\.learning_rate: expected a number > 0, got -1\.0",
             "optim.warmup_ratio=1.5": r"optim\.warmup_ratio: expected a number in \[0, 1\), got 1\.5",
             "log_every=0": r"log_every: expected an integer >= 1, got 0",
             "max_steps=0": r"max_steps: expected an integer >= 1 or null, got 0",
             "distributed=slurm": r"distributed: expected one of \('auto', 'none', 'explicit'\), got 'slurm'",
             "model.remat_policy=dots": r"model\.remat_policy: expected one of \('none', 'full', 'save_dots'\)",
             "optim.grad_accum=3": r"global_batch_size 8 is not a multiple of optim\.grad_accum 3",
             "mesh.tensor=0": r"mesh\.tensor: expected -1 \(the rest\) or an integer >= 1, got 0",
             "output_dir=gs://bucket/run": r"output_dir: expected a directory \(a path every host sees: gs:// and "
                                            r"other URLs are not written to",
             "data.chat_template=zephir": r"data\.chat_template: chat template 'zephir': expected 'tokenizer', "
                                          r"'zephyr' or a path to a Jinja file"}
    for override, message in cases.items():
        with pytest.raises(ValueError, match=message):
            check_train_config(load_config(TrainConfig, tiny, [override]))
    with pytest.raises(ValueError, match=r"checkpoint\.keep: .*; optim\.b2: expected a number in \[0, 1\), got 1\.0"):
        check_train_config(load_config(TrainConfig, tiny, ["checkpoint.keep=0", "optim.b2=1.0"]))  # all at once
    with pytest.raises(ValueError, match=r"global_batch_size 6 is not a multiple of the data x fsdp mesh size 8"):
        check_batch_fits_mesh(6, 8, 1)
    with pytest.raises(ValueError, match=r"global_batch_size 6 is not a multiple of the number of processes 4"):
        check_batch_fits_mesh(6, 2, 4)
    with pytest.raises(ValueError, match=r"16 / optim\.grad_accum 4 = 4 rows per micro-batch, not a multiple of the "
                                         r"data x fsdp mesh size 8"):
        check_batch_fits_mesh(16, 8, 1, grad_accum=4)
    check_batch_fits_mesh(16, 8, 2, grad_accum=2)
    # a value of the wrong type names the file and the dotted key; an unknown key names the section it is not in
    with pytest.raises(ValueError, match=rf"{tiny}: optim\.learning_rate: expected float, got 'abc'"):
        load_config(TrainConfig, tiny, ["optim.learning_rate=abc"])
    # a mistyped override key is named as the override (the YAML file does not hold it), with a close field
    with pytest.raises(ValueError, match=r"override 'optim\.lr=0\.1': optim has no field 'lr'; known: \['b1'"):
        load_config(TrainConfig, tiny, ["optim.lr=0.1"])
    with pytest.raises(ValueError, match=r"override 'optimizer\.learning_rate=1': TrainConfig has no field "
                                         r"'optimizer' \(did you mean 'optim'\?\)"):
        load_config(TrainConfig, tiny, ["optimizer.learning_rate=1"])
    with pytest.raises(ValueError, match=r"override 'steps=3': TrainConfig has no field 'steps' \(did you mean "
                                         r"'max_steps'\?\)"):
        load_config(TrainConfig, tiny, ["steps=3"])
    with pytest.raises(ValueError, match=r"override 'optim\.learning_rate\.x=1': 'learning_rate' is not a section"):
        load_config(TrainConfig, tiny, ["optim.learning_rate.x=1"])
    typo = tmp_path / "typo.yaml"  # a typo in the file names the file and the section, with the close field
    typo.write_text(tiny.read_text().replace("mesh: {data: -1,", "mesh: {dta: -1,"))
    with pytest.raises(ValueError, match=rf"{typo}: mesh: unknown field\(s\) \['dta'\] for MeshSection \(did you "
                                         r"mean 'data'\?\)"):
        load_config(TrainConfig, typo)
    # PyYAML keeps the last of two equal keys without a word; a config file must not train on either silently
    twice = tmp_path / "twice.yaml"
    twice.write_text(tiny.read_text() + "global_batch_size: 4\n")
    line = tiny.read_text().splitlines().index(next(x for x in tiny.read_text().splitlines()
                                                    if x.startswith("global_batch_size:"))) + 1
    with pytest.raises(ValueError, match=rf"{twice}:\d+:1: key 'global_batch_size' is set twice in one mapping "
                                         rf"\(first on line {line}\)"):
        load_config(TrainConfig, twice)
    broken = tmp_path / "broken.yaml"  # a syntax error is one line naming file, line and column
    broken.write_text("optim: {learning_rate: 1e-3\nmesh: {}\n")
    with pytest.raises(ValueError, match=rf"^{broken}:2:\d+: while parsing a flow mapping; expected ',' or '}}'"):
        load_config(TrainConfig, broken)
    # the console script names the file and overrides, and stops before reading any data
    r = subprocess.run([sys.executable, "-m", "mnlu_jax.cli", "train", "--config", str(tiny), "optim.learning_rate=-1",
                        "data.path=/nonexistent", f"output_dir={tmp_path / 'never'}"], capture_output=True, text=True)
    assert r.returncode != 0 and f"{tiny} with optim.learning_rate=-1 data.path=/nonexistent" in r.stderr
    assert "optim.learning_rate: expected a number > 0" in r.stderr and not (tmp_path / "never").exists()
    r = subprocess.run([sys.executable, "-m", "mnlu_jax.cli", "train", "--config", str(tiny),
                        "data.path=/nonexistent", f"output_dir={tmp_path / 'never'}"], capture_output=True, text=True)
    assert r.returncode == 2 and "data.path '/nonexistent': no such file or directory (expected build-data's " \
        "output directory or one JSONL file)" in r.stderr, r.stderr
    assert not (tmp_path / "never").exists()

def test_a_mistyped_model_path_is_named_before_output_dir_is_made(sample_data, tmp_path):
    for field in ("model.source", "model.tokenizer"):  # the tokenizer's reached transformers as a bad repo id
        with pytest.raises(FileNotFoundError, match=rf"{field} '/nowhere/x': no such file or directory \(nor a "
                                                    r"Hugging Face Hub id"):
            run_train(cfg_for(sample_data, tmp_path / "never", f"{field}=/nowhere/x"), progress=False)
        assert not (tmp_path / "never").exists()


def test_optimizer_state_is_sharded_like_the_parameters():
    """AdamW's mu and nu depend on no input's data: without out_shardings `jax.jit(tx.init)` put them on one
    device, and the trainer then replicated them on every device (the whole optimizer state per device)."""
    from jax.sharding import NamedSharding, PartitionSpec

    from mnlu_jax.model.config import ModelConfig
    from mnlu_jax.model.mistral import init_params
    from mnlu_jax.sharding import make_mesh, param_shardings
    from mnlu_jax.train.config import OptimSection
    from mnlu_jax.train.step import init_state, make_optimizer

    config = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    mesh = make_mesh(1, jax.device_count(), 1)
    params = jax.tree_util.tree_map(jax.device_put, init_params(config, jax.random.PRNGKey(0), "float32"),
                                    param_shardings(config, mesh))
    tx, _ = make_optimizer(OptimSection(weight_decay=0.1), 10)
    adam = init_state(params, tx)["opt_state"][1][0]
    for moments in (adam.mu, adam.nu):
        for (path, m), p in zip(jax.tree_util.tree_leaves_with_path(moments), jax.tree_util.tree_leaves(params)):
            assert m.sharding == p.sharding, jax.tree_util.keystr(path)
    assert adam.count.sharding == NamedSharding(mesh, PartitionSpec())
    if jax.device_count() > 1:
        assert not adam.mu["model"]["layers"]["mlp"]["up_proj"]["kernel"].sharding.is_fully_replicated


def test_ahead_of_time_compile_check(tmp_path, capsys):
    """`train --aot-devices N`: the step compiled for the mesh with abstract inputs, memory per device reported;
    nothing read, nothing written but the report."""
    from mnlu_jax.cli import main

    n = jax.device_count()  # 8 under scripts/test.sh
    common = ["train", "--config", str(ROOT / "configs/train/tiny.yaml"), "mesh.data=1", "mesh.fsdp=-1",
              "data.path=/nonexistent", f"output_dir={tmp_path / 'never'}"]
    assert main([*common, "--aot-devices", str(n), "--device-memory", "1GB", "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert f"compiled ahead of time for {n} devices" in out and "Fits in 0.93 GiB" in out
    report = json.loads((tmp_path / "r.json").read_text())
    b = report["per_device_bytes"]
    assert report["mesh"] == {"data": 1, "fsdp": n, "tensor": 1} and report["fits"]
    total = report["model"]["parameters"] * 4
    assert b["parameters"] < total and b["optimizer_state"] <= 2 * b["parameters"] + 64  # sharded, both moments
    assert b["peak"] == b["arguments"] + b["outputs"] - b["aliased"] + b["temporaries"] and b["temporaries"] > 0
    assert not (tmp_path / "never").exists()
    assert main([*common, "--aot-devices", str(n), "--device-memory", "1KB"]) == 1
    assert "Does NOT fit" in capsys.readouterr().out
    # another device count than this process has: a child process with that many host devices
    assert main([*common, "--aot-devices", "2", "--report", str(tmp_path / "two.json")]) == 0
    assert json.loads((tmp_path / "two.json").read_text())["mesh"]["fsdp"] == 2


def test_flop_count():
    from mnlu_jax.model.config import ModelConfig

    # Mistral-7B: 7.24B params, of which the embedding (131M) is a lookup, not a matmul.
    cfg = ModelConfig()
    fpt = flops_per_token(cfg, 2048)
    matmul = cfg.num_params() - cfg.vocab_size * cfg.hidden_size - cfg.num_hidden_layers * 2 * cfg.hidden_size - cfg.hidden_size
    attn = 3 * cfg.num_hidden_layers * 2 * 2 * 4096 * 1024
    assert fpt == pytest.approx(6 * matmul + attn)
    assert 6.9e9 < matmul < 7.2e9


def test_explicit_distributed_settings_are_named(monkeypatch):
    """MNLU_COORDINATOR without its two companions was a KeyError; a malformed one reached jax.distributed."""
    from mnlu_jax.train import distributed

    monkeypatch.setenv("MNLU_COORDINATOR", "127.0.0.1:12355")
    monkeypatch.delenv("MNLU_NUM_PROCESSES", raising=False)
    with pytest.raises(ValueError, match=r"MNLU_NUM_PROCESSES must be an integer >= 1; got None"):
        distributed.initialize("explicit")
    monkeypatch.setenv("MNLU_NUM_PROCESSES", "2")
    monkeypatch.setenv("MNLU_PROCESS_ID", "2")
    with pytest.raises(ValueError, match=r"MNLU_PROCESS_ID=2: expected 0 \.\. MNLU_NUM_PROCESSES - 1 = 1"):
        distributed.initialize("explicit")
    monkeypatch.setenv("MNLU_COORDINATOR", "127.0.0.1")
    with pytest.raises(ValueError, match=r"MNLU_COORDINATOR='127\.0\.0\.1': expected host:port"):
        distributed.initialize("auto")


def test_a_damaged_checkpoint_is_named_with_what_to_do(sample_data, tmp_path):
    """A newest step that cannot be restored (a cut file: disk full, a partial copy) was a 150-line Orbax traceback,
    then "Event loop is closed" noise at exit; now one error naming the step, the cause and the step to go back to."""
    from mnlu_jax.train.loop import CheckpointUnreadable

    out = tmp_path / "run"
    run_train(cfg_for(sample_data, out, "max_steps=2", "checkpoint.every_steps=1", "export_hf=false"), progress=False)
    for f in (out / "checkpoints" / "2" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:100])
    step2 = out / "checkpoints" / "2"
    with pytest.raises(CheckpointUnreadable, match=rf"{step2}: cannot restore the training state of step 2 \(.*Error "
                                                   rf"reading .*\); move it aside \(mv {step2} {step2}\.bad\) to "
                                                   r"resume from step 1"):
        run_train(cfg_for(sample_data, out, "max_steps=3", "checkpoint.every_steps=1", "export_hf=false"),
                  progress=False)
    step2.rename(step2.with_name("2.bad"))  # as the message says: the run goes on from step 1
    s = run_train(cfg_for(sample_data, out, "max_steps=3", "checkpoint.every_steps=1", "export_hf=false"),
                  progress=False)
    assert s["steps"] == 3 and [r["step"] for r in s["history"]] == [2, 3]
