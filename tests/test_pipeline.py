"""End to end: the pipeline with the tiny random Mistral on the shipped samples, then a resumed (cached) rerun."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnlu_jax.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "demo"
    cwd = os.getcwd()
    os.chdir(ROOT)  # the config's relative paths are relative to the repository, as in the README
    try:
        assert main(["pipeline", "--config", "configs/demo_tiny.yaml", f"output_dir={out}"]) == 0
    finally:
        os.chdir(cwd)
    return out


def test_pipeline_tiny_end_to_end_and_cached_rerun(demo, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = demo
    report = out / "report"
    scores = json.loads((report / "scores.json").read_text())
    assert set(scores) == {"base", "finetuned", "merged"}
    assert len(scores["merged"]["datasets"]) == 15
    md = (report / "report.md").read_text()
    assert "| NER | Entity-level F1 | BC2GM † | 6,322 |" in md
    for f in ("table5_paper.csv", "table5_official.md", "scores_paper.png", "loss.png"):
        assert (report / f).exists(), f
    assert json.loads((out / "merged" / "merge_config.json").read_text())["drop_rate"] == 0.2
    # every prediction file is complete
    manifest = json.loads((out / "eval_sets" / "manifest.json").read_text())
    for name, info in manifest["sets"].items():
        for system in ("base", "finetuned", "merged"):
            lines = (out / "eval" / system / "predictions" / info["file"]).read_text().splitlines()
            assert len(lines) == info["instances"], (system, name)
    capsys.readouterr()
    # rerun: every stage but the report is cached
    assert main(["pipeline", "--config", "configs/demo_tiny.yaml", f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": cached") == 9
    from mnlu_jax.weights.convert import load_model

    merged_gguf = out / "gguf" / "merged-f16.gguf"  # the merge for llama.cpp: our reader takes it back
    assert load_model(merged_gguf)[1].num_hidden_layers == 2 and "gguf/merged-f16.gguf" in md
    # a rerun with another drop rate is not answered from the merge made with the old one
    assert main(["pipeline", "--config", "configs/demo_tiny.yaml", f"output_dir={out}", "drop_rate=0.3"]) == 2
    err = capsys.readouterr().err
    assert "stages made with other settings: merge (merged/: drop_rate: 0.2 then, 0.3 now), gguf (gguf/: drop_rate: " \
           "0.2 then, 0.3 now), eval-merged (eval/merged/: drop_rate: 0.2 then, 0.3 now). Delete those folders" in err
    assert "drop_rate: 0.2" in (out / "pipeline.yaml").read_text()  # the record still says what made the outputs


def test_pipeline_checks_the_fine_tune_config_before_any_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "bad"
    assert main(["pipeline", "--config", "configs/demo_tiny.yaml", f"output_dir={out}",
                 "train_overrides=[max_steps=12, optim.warmup_ratio=1.5]"]) == 2
    assert "optim.warmup_ratio: expected a number in [0, 1), got 1.5" in capsys.readouterr().err
    assert not (out / "data").exists() and not (out / "base").exists()
    # the merge, decode and eval settings too (a bad merge method used to stop the run after training)
    for override, message in [("merge_method=dar", "merge method 'dar': expected one of"),
                              ("drop_rate=1.5", "drop_rate 1.5: expected 0 <= p <= 1"),
                              ("decode.batch_size=0", "batch_size 0: expected an integer >= 1"),
                              ("decode.dtype=fp16", "decode.dtype 'fp16': expected float32 or bfloat16"),
                              ("benchmark=blurbb", "benchmark 'blurbb': expected blurb, blue or all"),
                              ("eval_data_root=data/nowhere", "eval_data_root data/nowhere: no such directory"),
                              ("train_overrides=[output_dir=/tmp/elsewhere]",
                               "train_overrides ['output_dir=/tmp/elsewhere']: the pipeline sets")]:
        assert main(["pipeline", "--config", "configs/demo_tiny.yaml", f"output_dir={out}", override]) == 2
        assert message in capsys.readouterr().err, override
        assert not out.exists()
    # one pipeline per output_dir: a second one is refused before its first stage
    import fcntl

    out.mkdir()
    with open(out / "pipeline.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["pipeline", "--config", "configs/demo_tiny.yaml", f"output_dir={out}"]) == 2
    assert "being written by another process (lock" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.lock"]


def test_generate_resumes_after_a_crash(demo):
    """A torn last line (crash mid-write) is dropped and only missing ids are decoded again."""
    out = demo
    pred = out / "eval" / "base" / "predictions" / "BC2GM.jsonl"
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # 3 good lines + a torn one
    from mnlu_jax.decode.engine import DecodeConfig
    from mnlu_jax.decode.generate import run_generate

    def resume(model="base", eval_set=out / "eval_sets" / "BC2GM.jsonl", max_new_tokens=16):  # the pipeline's settings
        return run_generate(out / model, eval_set, pred, DecodeConfig(batch_size=4, max_new_tokens=max_new_tokens,
                                                                      buckets=(256, 512)),
                            chat_template="zephyr", progress=False)

    stats = resume()
    assert stats["skipped"] == 3 and stats["total"] == len(lines)
    again = pred.read_text().splitlines()
    assert len(again) == len(lines) and len({json.loads(l)["id"] for l in again}) == len(lines)
    # what wrote it is kept beside it: another model, setting or input does not resume into it
    assert json.loads(pred.with_name("BC2GM.jsonl.run.json").read_text())["model"] == str((out / "base").resolve())
    with pytest.raises(ValueError, match=r"BC2GM\.jsonl: written by another run \(max_new_tokens: 16 then, 8 now\)"):
        resume(max_new_tokens=8)
    with pytest.raises(ValueError, match=r"model: '.*base' then, '.*merged' now"):
        resume(model="merged")
    edited = [json.loads(l) for l in (out / "eval_sets" / "BC2GM.jsonl").read_text().splitlines()]
    edited[1]["messages"][-2]["content"] += " Answer briefly."
    (out / "edited.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edited))
    with pytest.raises(ValueError, match=r"BC2GM\.jsonl: holds other prompts for 1 ids of .*edited\.jsonl"):
        resume(eval_set=out / "edited.jsonl")
    with pytest.raises(ValueError, match=r"BC2GM\.jsonl: holds \d+ ids that .*NCBI-disease\.jsonl does not"):
        resume(eval_set=out / "eval_sets" / "NCBI-disease.jsonl")
    # only the last line may be torn: a bad line before it, or an id written twice, is named, not dropped
    complete = pred.read_text()
    good = complete.splitlines(keepends=True)
    pred.write_text(good[0] + good[1][:30] + "\n" + "".join(good[2:]))
    with pytest.raises(ValueError, match=r"BC2GM\.jsonl:2: not JSON .*not a torn last line"):
        resume()
    pred.write_text(good[0] + good[1] + good[0])
    with pytest.raises(ValueError, match=r"BC2GM\.jsonl:3: id '[^']+' again \(first on line 1\)"):
        resume()
    pred.write_text(complete)
    # the input given as the output (its records have no prediction: they were all taken as done), or a folder,
    # is refused before a model is loaded
    eval_set = out / "eval_sets" / "BC2GM.jsonl"
    for wrong, match in [(eval_set, r"--out .*BC2GM\.jsonl is the input file"), (out, r"--out .*: a directory")]:
        with pytest.raises(ValueError, match=match):
            run_generate("no-model-loaded", eval_set, wrong, DecodeConfig())
    (out / "empty.jsonl").write_text("")  # an empty input wrote no output and reported 0 prompts, as if done
    with pytest.raises(ValueError, match=r"--input .*empty\.jsonl: no records \(an empty file\)"):
        run_generate("no-model-loaded", out / "empty.jsonl", out / "empty_out.jsonl", DecodeConfig())
    (out / "copy.jsonl").write_text(eval_set.read_text())
    with pytest.raises(ValueError, match=r"copy\.jsonl:1: expected a prediction record .*an input rather than"):
        run_generate(out / "base", eval_set, out / "copy.jsonl", DecodeConfig(batch_size=4, max_new_tokens=16,
                                                                               buckets=(256, 512)),
                     chat_template="zephyr", progress=False)
    # a second run on the same output (another shell, every worker of a pod) is refused while the first holds it
    import fcntl

    with open(pred.with_name("BC2GM.jsonl.lock"), "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("pid 1 on elsewhere\n")
        held.flush()
        with pytest.raises(ValueError, match=r"BC2GM\.jsonl: being written by pid 1 on elsewhere \(lock "):
            resume()
    assert resume()["skipped"] == len(lines)  # released: the next run goes on
    twice = eval_set.read_text().splitlines(keepends=True)
    (out / "twice.jsonl").write_text("".join(twice[:2] + twice[:1]))
    with pytest.raises(ValueError, match=r"twice\.jsonl: record 3 has the id '[^']+' of record 1; ids must be unique"):
        run_generate("no-model-loaded", out / "twice.jsonl", out / "twice_out.jsonl", DecodeConfig())
    # a record written before the run record named the overflow policy was cut from the left: resumable as "left"
    meta = pred.with_name("BC2GM.jsonl.run.json")
    old_record = {k: v for k, v in json.loads(meta.read_text()).items() if k != "prompt_overflow"}
    meta.write_text(json.dumps(old_record))
    with pytest.raises(ValueError, match=r"prompt_overflow: 'left' then, 'middle' now"):
        resume()
    assert run_generate(out / "base", out / "eval_sets" / "BC2GM.jsonl", pred,
                        DecodeConfig(batch_size=4, max_new_tokens=16, buckets=(256, 512), prompt_overflow="left"),
                        chat_template="zephyr", progress=False)["skipped"] == len(lines)


def test_prompts_start_with_one_bos_in_training_and_decoding_alike():
    """With a tokenizer that puts BOS in front of plain text (Mistral, Llama 2): a plain `prompt` gets it, as vLLM's
    generate() gives it; a chat prompt starts with exactly one, whether its template writes `bos_token` (Mistral's
    own) or not (the paper's zephyr template), and training's tokens for the same conversation begin with the same
    prompt ids. Before session 22 decoding gave chat prompts no BOS and training doubled a template's own."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from mnlu_jax.data.chat import ZEPHYR_TEMPLATE
    from mnlu_jax.data.schema import Instance
    from mnlu_jax.data.tokenize import tokenize_instance
    from mnlu_jax.decode.generate import encode_records

    words = ["<unk>", "<s>", "</s>", "hello", "world", "[INST]", "[/INST]", "<|user|>", "<|assistant|>", "yes"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    mistral = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]" \
              "{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}"
    zephyr = ZEPHYR_TEMPLATE.replace("\\n", " ")  # the vocabulary splits on whitespace only
    chat = [{"role": "user", "content": "hello"}]
    for template, prompt_ids in ((mistral, [1, 5, 3, 6]), (zephyr, [1, 7, 3, 2, 8])):
        tok.chat_template = template
        ids, dropped = encode_records([{"id": "plain", "prompt": "hello world"}, {"id": "chat", "messages": chat}],
                                      tok, "tokenizer", False, 64)
        assert ids == [[1, 3, 4], prompt_ids] and dropped == [0, 0], template
        trained = tokenize_instance(Instance("i", "d", "NLI", "t", [], chat + [{"role": "assistant", "content": "yes"}],
                                             {}), tok, template, 64)
        assert list(trained.ids[:len(prompt_ids)]) == prompt_ids and trained.ids[len(prompt_ids)] == 9
        assert trained.loss_mask.tolist() == [False] * len(prompt_ids) + [True] * (len(trained.ids) - len(prompt_ids))
    core.post_processor = None  # no BOS: an empty plain prompt has no token to start from
    with pytest.raises(ValueError, match=r"in\.jsonl: record 2 \(id 'e'\): the prompt has no tokens"):
        encode_records([{"id": "p", "prompt": "hello"}, {"id": "e", "prompt": ""}],
                       PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>"), "tokenizer", False, 64,
                       "in.jsonl")
    for rec, match in [({"id": "r", "messages": [{"role": "bot", "content": "hello"}]},
                        r"in\.jsonl: record 1 \(id 'r'\): messages\[0\]: expected \{\"role\": one of"),
                       ({"id": "s", "messages": "hello"}, r"record 1 \(id 's'\): messages: expected a non-empty list"),
                       ({"id": "t", "prompt": ["hello"]}, r"record 1 \(id 't'\): prompt: expected text, got list")]:
        with pytest.raises(ValueError, match=match):  # was rendered (or tokenized as a batch) as it came
            encode_records([rec], tok, "tokenizer", False, 64, "in.jsonl")


def test_generate_cuts_prompts_longer_than_the_largest_bucket(demo, tmp_path, caplog):
    """Prompts over the largest bucket keep their first and last halves (the chat header and instruction, the options
    and generation prompt), or their end, or are refused; each cut record says how many tokens it lost."""
    from mnlu_jax.decode.engine import DecodeConfig
    from mnlu_jax.decode.generate import encode_records, fit_prompt, read_jsonl, run_generate
    from mnlu_jax.weights.convert import load_tokenizer

    assert fit_prompt(list(range(10)), 6, "middle", "x") == ([0, 1, 2, 7, 8, 9], 4)
    assert fit_prompt(list(range(10)), 7, "middle", "x") == ([0, 1, 2, 6, 7, 8, 9], 3)
    assert fit_prompt(list(range(10)), 6, "left", "x") == ([4, 5, 6, 7, 8, 9], 4)
    assert fit_prompt(list(range(5)), 6, "error", "x") == ([0, 1, 2, 3, 4], 0)
    with pytest.raises(ValueError, match="prompt_overflow 'right'"):
        DecodeConfig(prompt_overflow="right")
    eval_set = demo / "eval_sets" / "ChemProt.jsonl"
    records = read_jsonl(eval_set)
    tok = load_tokenizer(demo / "base")
    full, _ = encode_records(records, tok, "zephyr", False, 10_000)
    limit = 64
    assert min(map(len, full)) > limit  # every prompt is cut
    cut, dropped = encode_records(records, tok, "zephyr", False, limit)
    assert dropped == [len(ids) - limit for ids in full]
    assert all(c == ids[:32] + ids[-32:] for c, ids in zip(cut, full))

    def generate(policy, out):
        return run_generate(demo / "base", eval_set, out, DecodeConfig(batch_size=4, max_new_tokens=4, buckets=(limit,),
                                                                       prompt_overflow=policy),
                            chat_template="zephyr", progress=False)

    with pytest.raises(ValueError, match=r"ChemProt\.jsonl: record 1 \(id '[^']+'\): prompt of \d+ tokens is "
                                         r"longer than the largest bucket \(64\)"):
        generate("error", tmp_path / "refused.jsonl")
    with caplog.at_level("WARNING"):
        stats = generate("middle", tmp_path / "cut.jsonl")
    assert stats["prompts_cut"] == len(records)
    assert f"{len(records)} of {len(records)} prompts longer than 64 tokens cut" in caplog.text
    written = {r["id"]: r for r in read_jsonl(tmp_path / "cut.jsonl")}
    assert [written[r["id"]]["prompt_tokens_dropped"] for r in records] == dropped


def test_a_base_checkpoint_is_copied_whole_or_not_at_all(tmp_path, monkeypatch):
    import shutil

    from mnlu_jax.pipeline import copy_checkpoint

    src = tmp_path / "ckpt"
    (src / "params").mkdir(parents=True)
    for name in ("mnlu_jax.json", "config.json", "params/shard"):
        (src / name).write_text(name)
    real_copytree = shutil.copytree

    def failing_copy2(a, b, **kw):
        if Path(a).name == "shard":
            raise OSError("disk full")
        return shutil.copy2(a, b, **kw)

    def copytree(src, dst, *rest, **kw):  # copytree calls itself for subdirectories, passing copy_function on
        return real_copytree(src, dst, *rest, **kw) if rest else real_copytree(src, dst, copy_function=failing_copy2,
                                                                                  **kw)

    monkeypatch.setattr(shutil, "copytree", copytree)
    with pytest.raises(OSError, match="disk full"):
        copy_checkpoint(src, tmp_path / "base")
    assert not (tmp_path / "base").exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    monkeypatch.undo()
    copy_checkpoint(src, tmp_path / "base")
    assert (tmp_path / "base" / "params" / "shard").read_text() == "params/shard"


def test_compilation_cache_dir_choice(monkeypatch, tmp_path):
    from mnlu_jax.compile_cache import ENV, cache_dir

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(ENV, raising=False)
    assert cache_dir() == tmp_path / "mnlu_jax" / "xla"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert cache_dir() is None  # JAX's own variable wins and JAX reads it
    for off in ("off", "0", ""):
        monkeypatch.setenv(ENV, off)
        assert cache_dir() is None
    monkeypatch.setenv(ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def _run_with_cache(script: str, cache: Path) -> subprocess.CompletedProcess:
    """`python -c script` in a fresh process with the console script's cache variable pointing at `cache`."""
    env = {**os.environ, "MNLU_JAX_COMPILATION_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)


def test_compilation_cache_is_written_and_read_across_processes(tmp_path):
    """The console script's cache, in fresh processes: the first compile writes an entry, the second loads it."""
    script = (
        "import jax, jax.numpy as jnp\n"
        "from mnlu_jax.compile_cache import enable_compilation_cache\n"
        "enable_compilation_cache()\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "from jax._src import monitoring\n"
        "hits = []\n"
        "monitoring.register_event_listener(lambda e, **k: hits.append(e) if 'cache_hits' in e else None)\n"
        "print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum()))\n"
        "print('HITS', len(hits))\n"
    )
    runs = [_run_with_cache(script, tmp_path / "cache") for _ in range(2)]
    assert any((tmp_path / "cache").iterdir()), "no cache entry written"
    hits = [int(r.stdout.split("HITS")[1]) for r in runs]
    assert hits[0] == 0 and hits[1] >= 1, (hits, runs[1].stderr[-2000:])


def test_compilation_cache_before_jax_is_imported_goes_through_the_environment(tmp_path):
    """Commands that never import jax (build-data, score) must not import it for the cache; jax, imported later,
    still uses the directory."""
    script = (
        "import sys\n"
        "from mnlu_jax.compile_cache import enable_compilation_cache\n"
        "enable_compilation_cache()\n"
        "print('IMPORTED', 'jax' in sys.modules)\n"
        "import jax\n"
        "print('DIR', jax.config.jax_compilation_cache_dir)\n"
    )
    out = _run_with_cache(script, tmp_path / "cache").stdout
    assert "IMPORTED False" in out and f"DIR {tmp_path / 'cache'}" in out


def test_version_is_the_packages(capsys):
    import re

    import mnlu_jax

    # tomllib is 3.11+, and the package supports 3.10
    declared = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mnlu-jax {declared}" == \
        f"mnlu-jax {mnlu_jax.__version__}"


def test_an_output_on_a_filesystem_without_locks_goes_on_unlocked(tmp_path, monkeypatch, caplog):
    """NFS mounted nolock answers flock with ENOLCK: the run must not fail for want of a lock it never had."""
    import errno
    import fcntl
    import logging

    from mnlu_jax.locks import exclusive

    def no_locks(f, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with caplog.at_level(logging.WARNING, logger="mnlu_jax.locks"):
        with exclusive(tmp_path / "x.lock", "x"):
            ran.append(True)
    assert ran == [True] and "cannot lock" in caplog.text and "No locks available" in caplog.text


def test_merge_sweep_scores_every_point_of_its_grid_and_resumes(demo, tmp_path, capsys, monkeypatch):
    """merge-sweep on the pipeline's base and fine-tune: each point is merged, decoded and scored (the pipeline's own
    merge, DARE p = 0.2 seed 0, gives the same predictions as its point; the seed changes p = 0.9's masks), the table,
    seed summary and plot are written, references evaluated or read from an evaluation; a rerun with a larger grid
    runs only the new points; other fixed settings, a field that is not a merge setting and a point with a bad value
    are refused before anything is merged."""
    import yaml

    monkeypatch.chdir(ROOT)
    out, config = tmp_path / "sweep", tmp_path / "sweep.yaml"
    decode = yaml.safe_load((ROOT / "configs" / "demo_tiny.yaml").read_text())["decode"]
    config.write_text(yaml.safe_dump({
        "output_dir": str(out), "eval_dir": str(demo / "eval_sets"), "sets": ["BioSSES", "MedNLI"],
        "merge": {"base": str(demo / "base"), "models": [str(demo / "base"), str(demo / "train" / "final")],
                  "method": "dare"},
        "grid": {"drop_rate": [0.2, 0.9], "seed": [0, 1]}, "metric": "MedNLI", "chat_template": "zephyr",
        "references": {"finetuned": str(demo / "train" / "final"), "base": str(demo / "eval" / "base")},
        "decode": decode}))
    assert main(["merge-sweep", "--config", str(config), "--dry-run"]) == 0  # (lists the plan, makes nothing)
    assert "4 points, each scored on 2 sets (MedNLI, paper mode):\n  drop_rate=0.2,seed=0: to merge and evaluate" \
        in capsys.readouterr().out and not out.exists()
    assert main(["merge-sweep", "--config", str(config), "keep_merges=true"]) == 0
    printed = capsys.readouterr().out
    names = ["drop_rate=0.2,seed=0", "drop_rate=0.2,seed=1", "drop_rate=0.9,seed=0", "drop_rate=0.9,seed=1"]
    results = json.loads((out / "results.json").read_text())
    assert [p["name"] for p in results["points"]] == names and printed.count(": merging") == 4

    def predictions(eval_out: Path) -> dict:
        return {(r["dataset"], r["id"]): r["prediction"] for f in ("BioSSES.jsonl", "MedNLI.jsonl")
                for r in map(json.loads, (eval_out / "predictions" / f).read_text().splitlines())}

    assert predictions(out / "points" / names[0] / "eval") == predictions(demo / "eval" / "merged")
    assert predictions(out / "references" / "finetuned") == predictions(demo / "eval" / "finetuned")
    base_scores = json.loads((demo / "eval" / "base" / "scores.json").read_text())["base"]["datasets"]
    read = results["references"]["base"]  # (read, not rerun; its averages over the sweep's two sets, not its 15)
    assert read["MedNLI"] == base_scores["MedNLI"]["paper"]["score"]
    assert read["BLUE macro avg (paper)"] == pytest.approx(np.mean([base_scores[n]["paper"]["score"]
                                                                    for n in ("MedNLI", "BioSSES")]))
    assert not (out / "references" / "base").exists()
    from mnlu_jax.weights.named_tensors import NamedTensors

    a, b = (NamedTensors(out / "points" / n / "merged") for n in names[2:])
    assert not np.array_equal(a.get("model.layers.0.mlp.up_proj.weight"), b.get("model.layers.0.mlp.up_proj.weight"))
    point = json.loads((out / "points" / names[3] / "point.json").read_text())
    assert point["values"] == {"drop_rate": 0.9, "seed": 1} and point["merge"]["drop_rate"] == 0.9
    assert point["merge_s"] > 0 and point["eval_s"] > 0
    best = max(results["points"], key=lambda p: p["scores"]["MedNLI"])
    assert results["best"] == {"name": best["name"], "values": best["values"], "score": best["scores"]["MedNLI"]}
    over_seeds = {s["values"]["drop_rate"]: s for s in results["by_setting"]}
    runs = [p["scores"]["MedNLI"] for p in results["points"][2:]]
    assert over_seeds[0.9]["seeds"] == 2 and over_seeds[0.9]["mean"] == pytest.approx(np.mean(runs))
    assert over_seeds[0.9]["std"] == pytest.approx(np.std(runs, ddof=1))
    md = (out / "results.md").read_text()
    assert sum(line.startswith("| **") for line in md.splitlines()) == 1 and "Over seeds (MedNLI):" in md
    assert "| finetuned |" in md and "| base |" in md
    assert len((out / "results.csv").read_text().splitlines()) == 5 and (out / "sweep.png").stat().st_size > 0
    # the bootstrap: 200 resamples per point, kept in point.json; the best beats itself on every one of them
    assert len(point["bootstrap"]["samples"]) == 200 and "| 95% interval | P(>= best) |" in md
    assert results["points"][names.index(best["name"])]["p_ge_best"] == 1.0
    assert all(p["ci95"][0] <= p["ci95"][1] for p in results["points"])
    # its draws depend on the seed and the sets' sizes only (every set draws, in the sets' order; instances in id
    # order), so that all points see the same resamples: here by hand, for BioSSES
    from mnlu_jax.evaluate.metrics import score_records
    from mnlu_jax.evaluate.score import load_predictions
    from mnlu_jax.merge.sweep import bootstrap_samples

    preds_dir = out / "points" / names[3] / "eval" / "predictions"
    recs = {n: sorted(v, key=lambda r: str(r["id"])) for n, v in load_predictions(preds_dir).items()}
    rng = np.random.default_rng(5)
    draws = {n: rng.integers(0, len(recs[n]), size=(3, len(recs[n]))) for n in ("BioSSES", "MedNLI")}
    by_hand = {n: [score_records([recs[n][i] for i in row], "paper")["score"] for row in draws[n]]
               for n in ("BioSSES", "MedNLI")}
    assert bootstrap_samples(preds_dir, ["BioSSES", "MedNLI"], "BioSSES", "paper", 3, 5) == by_hand["BioSSES"]
    # a weighted mean, of sets and of an aggregate, on the same draws
    assert bootstrap_samples(preds_dir, ["BioSSES", "MedNLI"], "weighted mean", "paper", 3, 5,
                             {"MedNLI": 3, "BioSSES": 1}) == \
        pytest.approx([(3 * m + b) / 4 for b, m in zip(by_hand["BioSSES"], by_hand["MedNLI"])])
    assert bootstrap_samples(preds_dir, ["BioSSES", "MedNLI"], "weighted mean", "paper", 3, 5,
                             {"BLUE macro avg (paper)": 1, "MedNLI": 1}) == \
        pytest.approx([((b + m) / 2 + m) / 2 for b, m in zip(by_hand["BioSSES"], by_hand["MedNLI"])])
    import mnlu_jax.merge.sweep as sweep_module

    computed = []
    monkeypatch.setattr(sweep_module, "bootstrap_samples", lambda *a: computed.append(a) or [0.0] * 200)
    assert main(["merge-sweep", "--config", str(config), "grid.drop_rate=[0.2, 0.5, 0.9]", "--dry-run"]) == 0
    assert capsys.readouterr().out.count(": scored\n") == 4
    # a larger grid: only its new points run; their merges are deleted once scored (no keep_merges)
    assert main(["merge-sweep", "--config", str(config), "grid.drop_rate=[0.2, 0.5, 0.9]"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": already scored") == 4 and printed.count(": merging") == 2
    assert len(json.loads((out / "results.json").read_text())["points"]) == 6
    assert sorted(p.parent.name for p in out.glob("points/*/merged")) == names  # (the 2 new ones deleted)
    assert len(computed) == 2  # (the scored points' resamples read from their point.json)
    # ranked by a weighted mean of the sets instead (as mergekit-evolve weighs its tasks): nothing is merged or
    # evaluated again, each point's resamples are drawn again for the new metric
    weighted = ["grid.drop_rate=[0.2, 0.5, 0.9]", "metric=weighted mean", "metric_weights={MedNLI: 3, BioSSES: 1}"]
    assert main(["merge-sweep", "--config", str(config), *weighted]) == 0
    assert capsys.readouterr().out.count(": already scored") == 6 and len(computed) == 8
    results = json.loads((out / "results.json").read_text())
    for row in [*results["points"], results["references"]["base"]]:
        scores = row.get("scores", row)
        assert scores["weighted mean"] == pytest.approx((3 * scores["MedNLI"] + scores["BioSSES"]) / 4)
    best = max(results["points"], key=lambda p: p["scores"]["weighted mean"])
    assert results["best"]["name"] == best["name"] and results["metric_weights"] == {"MedNLI": 3, "BioSSES": 1}
    assert "weighted mean: sum(weight x score) / 4 over MedNLI x 3, BioSSES x 1." in (out / "results.md").read_text()
    for overrides, message in [
            (["metric_weights={MedNLI: 1}"], r"metric_weights: only with metric: weighted mean \(metric is 'MedNLI'\)"),
            (["metric=weighted mean"], r"metric_weights: expected \{set or aggregate: weight, \.\.\.\}"),
            (["metric=weighted mean", "metric_weights={HoC: 1}"],
             r"metric_weights\.HoC: expected one of \[.*\] or a set the sweep scores \(\['BioSSES', 'MedNLI'\]\)"),
            (["metric=weighted mean", "metric_weights={MedNLI: 0}"], r"metric_weights\.MedNLI: expected a weight > 0"),
            # an aggregate the sets cannot give would leave every point unranked: refused before any merge
            (["metric=BLURB score"], r"metric 'BLURB score': not computable on the sets the sweep scores "
                                     r"\(\['BioSSES', 'MedNLI'\]\): it needs a set of each of BLURB's six task types"),
            (["sets=[MedNLI]", "metric=weighted mean", "metric_weights={MedNLI: 1, BLURB macro avg (paper): 1}"],
             r"metric_weights\.BLURB macro avg \(paper\): not computable .* it needs at least one BLURB set")]:
        assert main(["merge-sweep", "--config", str(config), *overrides, "--dry-run"]) == 2, overrides
        assert re.search(message, capsys.readouterr().err), overrides
    # refused before anything is merged, naming the field
    for override, message in [
            ("decode.max_new_tokens=8", r"holds a sweep of other settings \(decode: .*'max_new_tokens': 16.* then, "
                                        r".*'max_new_tokens': 8.* now\); its points would not compare"),
            ("grid.drop_rat=[0.1]", r"grid\.drop_rat: not a merge setting to sweep \(did you mean 'drop_rate'\?\)"),
            ("grid.drop_rate=[0.1, 1.5]", r"point drop_rate=1\.5,seed=0: drop_rate 1\.5: expected 0 <= p <= 1"),
            ("grid.seed=[]", r"grid\.seed: expected a non-empty list of values"),
            ("metric=BLUB", r"metric 'BLUB': expected one of \['BLURB macro avg \(paper\)'"),
            ("bootstrap=-1", r"bootstrap -1: expected a number of resamples >= 0"),
            ("merge.out=x", r"merge\.out: each point's merge is written under output_dir/points/")]:
        assert main(["merge-sweep", "--config", str(config), override]) == 2, override
        assert re.search(message, capsys.readouterr().err), override
    assert len(list(out.glob("points/*"))) == 6
    # a run that failed before it made anything (a wrong base) may be rerun with the setting fixed
    fresh = [f"output_dir={tmp_path / 'fresh'}", "grid.drop_rate=[0.2]", "grid.seed=[0]", "references={}"]
    assert main(["merge-sweep", "--config", str(config), *fresh, f"merge.base={tmp_path / 'nowhere'}"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["merge-sweep", "--config", str(config), *fresh]) == 0
    assert (tmp_path / "fresh" / "points" / names[0] / "eval" / "scores.json").exists()


def test_merge_sweep_searches_with_cmaes_and_goes_on_from_its_scores(demo, tmp_path, capsys, monkeypatch):
    """A CMA-ES search over DARE's drop rate on the pipeline's merge: each proposal merged, decoded and scored; the
    table and plot list the proposals in order with their generation; --dry-run replays the search from the
    scores and lists what comes next; a larger budget goes on with the same search, running only its new points;
    with `holdout:` the best point is merged again (the same merge) and scored on the held-out sets."""
    import yaml

    monkeypatch.chdir(ROOT)
    out, config = tmp_path / "search", tmp_path / "search.yaml"
    decode = yaml.safe_load((ROOT / "configs" / "demo_tiny.yaml").read_text())["decode"]
    config.write_text(yaml.safe_dump({
        "output_dir": str(out), "eval_dir": str(demo / "eval_sets"), "sets": ["MedNLI"], "metric": "MedNLI",
        "merge": {"base": str(demo / "base"), "models": [str(demo / "base"), str(demo / "train" / "final")],
                  "method": "dare"},
        "search": {"method": "cmaes", "budget": 3, "population": 2, "space": {"drop_rate": [0.1, 0.9]},
                   "start": {"drop_rate": 0.2}},
        "chat_template": "zephyr", "bootstrap": 20, "decode": decode,
        "references": {"base": str(demo / "eval" / "base")}}))
    assert main(["merge-sweep", "--config", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("cmaes search, 3 points, each scored on 1 sets (MedNLI, paper mode):\n  [1] drop_rate=")
    assert "then 1 more, proposed from the scores of those before" in printed and not out.exists()
    assert main(["merge-sweep", "--config", str(config)]) == 0
    assert capsys.readouterr().out.count(": merging") == 3
    results = json.loads((out / "results.json").read_text())
    proposals = results["search"]["proposals"]
    assert [p["number"] for p in proposals] == [1, 2, 3] and len(results["points"]) == 3
    assert [r["generation"] for r in results["points"]] == [0, 0, 1]
    scores = [r["scores"]["MedNLI"] for r in results["points"]]
    assert [p["best_so_far"] for p in proposals] == [max(scores[:k]) for k in (1, 2, 3)]
    for r in results["points"]:
        assert 0.1 <= r["values"]["drop_rate"] <= 0.9 and r["merge"]["drop_rate"] == r["values"]["drop_rate"]
        assert not (out / "points" / r["name"] / "merged").exists()  # (deleted once scored)
    md = (out / "results.md").read_text()
    assert md.startswith("# cmaes search, 3 proposals: MedNLI (paper mode)") and "| # | generation | drop_rate |" in md
    assert (out / "sweep.png").stat().st_size > 0
    # the dry run replays generation 0 from its scores: generation 1's first point is the one scored, its second new
    assert main(["merge-sweep", "--config", str(config), "search.budget=5", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": scored") == 3 and printed.count(": to merge and evaluate") == 1
    assert "then 1 more" in printed
    holdout = [f"holdout.eval_dir={demo / 'eval_sets'}", "holdout.sets=[MedNLI, BioSSES]"]
    assert main(["merge-sweep", "--config", str(config), "search.budget=5", *holdout, "--dry-run"]) == 0
    assert "then the best point and the references scored on 2 held-out sets" in capsys.readouterr().out
    assert main(["merge-sweep", "--config", str(config), "search.budget=5", *holdout]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": merging") == 2 + 1  # (the 2 new points, then the best again for the holdout)
    results = json.loads((out / "results.json").read_text())
    longer = results["search"]["proposals"]
    assert [p["name"] for p in longer[:3]] == [p["name"] for p in proposals] and len(longer) == 5
    held, best = results["holdout"], results["best"]["name"]
    assert held["point"] == best and held["sets"] == ["MedNLI", "BioSSES"]
    held_out = next((out / "holdout").iterdir()) / best

    def predictions(eval_out: Path, name: str) -> dict:
        return {r["id"]: r["prediction"]
                for r in map(json.loads, (eval_out / "predictions" / f"{name}.jsonl").read_text().splitlines())}

    # merged again from its recorded settings: the same predictions as when it was scored in the search
    assert predictions(held_out, "MedNLI") == predictions(out / "points" / best / "eval", "MedNLI")
    assert held["scores"]["MedNLI"] == results["points"][[r["name"] for r in results["points"]].index(best)][
        "scores"]["MedNLI"] and held["scores"]["BioSSES"] is not None
    base_scores = json.loads((demo / "eval" / "base" / "scores.json").read_text())["base"]["datasets"]
    assert held["references"]["base"]["BioSSES"] == base_scores["BioSSES"]["paper"]["score"]
    assert "Held out (" in (out / "results.md").read_text() and not (out / "points" / best / "merged").exists()
    assert main(["merge-sweep", "--config", str(config), "search.budget=5", *holdout]) == 0
    assert "evaluating" not in capsys.readouterr().out  # (a rerun reads the holdout's scores)
    # a grid and a search at once, and a range the merge refuses, before anything is merged
    for override, message in (("grid.seed=[0]", r"grid and search: give one"),
                              ("search.space.drop_rate=[0.1, 1.5]", r"point drop_rate=1\.5: drop_rate 1\.5")):
        assert main(["merge-sweep", "--config", str(config), override]) == 2, override
        assert re.search(message, capsys.readouterr().err), override
    for sets, message in (("[BioSSES]", r"holdout\.sets: the metric 'MedNLI' is a set the holdout does not score"),
                          ("[Nope]", r"holdout\.sets \['Nope'\]: not in .*manifest\.json")):
        assert main(["merge-sweep", "--config", str(config), holdout[0], f"holdout.sets={sets}"]) == 2, sets
        assert re.search(message, capsys.readouterr().err), sets
    weighted = ["metric=weighted mean", "metric_weights={MedNLI: 1, BLUE macro avg (paper): 1}",
                "holdout.sets=[BioSSES]"]
    assert main(["merge-sweep", "--config", str(config), holdout[0], *weighted, "--dry-run"]) == 2
    assert re.search(r"holdout\.sets: metric_weights\.MedNLI: expected one of .* or a set the holdout scores "
                     r"\(\['BioSSES'\]\)", capsys.readouterr().err)


def test_the_shipped_sweep_configs_plan_their_points():
    from mnlu_jax.config import load_config
    from mnlu_jax.merge.sweep import SweepConfig, plan_points

    for name, count in (("sweep_demo", 6), ("sweep_biomistral_nlu", 18)):
        cfg = load_config(SweepConfig, ROOT / "configs" / "merge" / f"{name}.yaml")
        points = plan_points(cfg)
        assert len(points) == count and all(p.merge.method == "dare" for p in points), name
        assert points[1].name == ("drop_rate=0.2,seed=1" if name == "sweep_demo" else "drop_rate=0.1,seed=1")
    from mnlu_jax.merge.sweep import search_points

    cfg = load_config(SweepConfig, ROOT / "configs" / "merge" / "search_demo.yaml")
    proposals = search_points(cfg, lambda p, k: -abs(p.values["drop_rate"] - 0.5))
    assert len(proposals) == 12 and [g for _, g in proposals] == [k // 4 for k in range(12)]
    assert all(p.merge.apply == "task_arithmetic" and 0.25 <= p.merge.lam <= 1.25 for p, _ in proposals)


def test_a_sweep_over_a_mergekit_config_takes_our_setting_names():
    """`merge:` in mergekit's form is read as `merge --config` reads it; the grid names our settings (a mergekit
    name gets ours in the error), and a setting the config gives model by model cannot be swept over."""
    from mnlu_jax.merge.sweep import SweepConfig, plan_points

    merge = {"merge_method": "dare_ties", "base_model": "B", "dtype": "bfloat16", "parameters": {"density": 0.5},
             "models": [{"model": "A", "parameters": {"weight": 0.5}}, {"model": "C", "parameters": {"weight": 0.5}}]}
    points = plan_points(SweepConfig(output_dir="s", merge=merge, grid={"drop_rate": [0.3, 0.6]}))
    assert [(p.merge.method, p.merge.drop_rate, p.merge.rescale_norm, p.merge.weights) for p in points] == \
        [("dare_ties", 0.3, "l1", [0.5, 0.5]), ("dare_ties", 0.6, "l1", [0.5, 0.5])]
    assert points[0].merge.mergekit_config is None  # (what ran is the point's config, recorded in point.json)
    with pytest.raises(ValueError, match=r"grid\.density: not a merge setting to sweep \(the grid takes our names, "
                                         r"even over a mergekit config: drop_rate \(1 - density\)\)"):
        plan_points(SweepConfig(merge=merge, grid={"density": [0.5]}))
    merge["models"][1]["parameters"]["density"] = 0.7  # now set model by model
    with pytest.raises(ValueError, match=r"grid\.drop_rate: the merge config sets drop_rate model by model"):
        plan_points(SweepConfig(merge=merge, grid={"drop_rate": [0.3]}))


def test_a_sweep_over_models_names_its_points_within_a_file_name():
    """A grid over `models` (which checkpoint of a run to merge) lists paths in the point's name: a long one is cut
    and kept apart by a hash, so that two points never share a directory and none exceeds a file name's length."""
    from mnlu_jax.merge.sweep import SLUG_CHARS, SweepConfig, plan_points

    run = "/data/" + "a_rather_long_directory_name/" * 6 + "train"
    grid = {"models": [[f"{run}/step_{k}", f"{run}/step_{k + 1}"] for k in (1000, 2000)], "seed": [0]}
    points = plan_points(SweepConfig(merge={"base": "B", "method": "dare"}, grid=grid))
    assert [p.merge.models for p in points] == grid["models"]
    assert len({p.name for p in points}) == 2 and all(len(p.name) == SLUG_CHARS for p in points)
    assert all(p.name.startswith('models=___data_a_rather_long') for p in points)
