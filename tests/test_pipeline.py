"""End to end: the pipeline with the tiny random Mistral on the shipped samples, then a resumed (cached) rerun."""

import json
import os
from pathlib import Path

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
    assert printed.count(": cached") == 8


def test_generate_resumes_after_a_crash(demo):
    """A torn last line (crash mid-write) is dropped and only missing ids are decoded again."""
    out = demo
    pred = out / "eval" / "base" / "predictions" / "BC2GM.jsonl"
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # 3 good lines + a torn one
    from mnlu_jax.decode.engine import DecodeConfig
    from mnlu_jax.decode.generate import run_generate

    stats = run_generate(out / "base", out / "eval_sets" / "BC2GM.jsonl", pred,
                         DecodeConfig(batch_size=4, max_new_tokens=16, buckets=(256, 512)), chat_template="zephyr",
                         progress=False)
    assert stats["skipped"] == 3 and stats["total"] == len(lines)
    again = pred.read_text().splitlines()
    assert len(again) == len(lines) and len({json.loads(l)["id"] for l in again}) == len(lines)
