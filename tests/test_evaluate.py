"""Parsers (fuzzed), metrics in both modes (hand-computed and cross-checked), report and build-eval."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnlu_jax.data import tasks as T
from mnlu_jax.evaluate import parse as P
from mnlu_jax.evaluate.metrics import score_records
from mnlu_jax.evaluate.score import aggregates, run_score, table5
from mnlu_jax.data.schema import DataError
from mnlu_jax.evaluate.sets import build_eval

ROOT = Path(__file__).resolve().parent.parent


def rec(inst, prediction):
    d = json.loads(inst.to_json())
    d["prediction"] = prediction
    return d


def ner(text, ents, types, did="d"):
    doc = {"id": did, "text": text, "entities": [
        {"id": f"T{i}", "type": t, "offsets": [[text.index(s), text.index(s) + len(s)]], "text": [s]}
        for i, (t, s) in enumerate(ents)]}
    return T.ner_instance(doc, "ner", types)


# ------------------------------------------------------------------ parsers never raise
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_never_raise(s):
    spans, ok = P.parse_spans(s, ["Disease", "Cell line", "Cell"])
    assert set(spans) == {"Disease", "Cell line", "Cell"} and isinstance(ok, bool)
    opts = ["(A) yes", "(B) no", "(C) maybe"]
    for f in (P.first_option_in_option_order, P.first_option_in_text):
        i = f(s, opts)
        assert i is None or 0 <= i < 3
    assert all(0 <= i < 3 for i in P.options_in_text(s, opts))


def test_parse_spans_rules():
    out, ok = P.parse_spans("Cell line: HeLa ... Jurkat\nDisease: None\nnoise", ["Disease", "Cell line", "Cell"])
    assert ok and out == {"Disease": [], "Cell line": ["HeLa", "Jurkat"], "Cell": []}
    assert P.parse_spans("I cannot help", ["Disease"])[1] is False
    assert P.parse_spans("None", ["Disease"]) == ({"Disease": []}, True)


# ------------------------------------------------------------------ NER / PICO
def test_ner_paper_and_official_hand_computed():
    i1 = ner("aspirin caused renal failure and rash", [("Disease", "renal failure"), ("Disease", "rash")], ["Disease", "Chemical"])
    i2 = ner("no findings here", [], ["Disease", "Chemical"], did="e")
    recs = [rec(i1, "Disease: renal failure ... fever\nChemical: aspirin"), rec(i2, "Disease: None\nChemical: None")]
    paper = score_records(recs, "paper")
    # Disease: NT 2, NP 2, TP 1; Chemical: NT 0, NP 1, TP 0 -> left out of Overall (NT = 0)
    assert paper["per_key"]["Disease"]["TP"] == 1 and paper["per_key"]["Chemical"]["NP"] == 1
    assert paper["overall"]["NT"] == 2 and paper["overall"]["NP"] == 2 and paper["score"] == pytest.approx(50.0)
    off = score_records(recs, "official")
    # untyped: gold 2, predicted 3, TP 1 -> P 1/3, R 1/2, F1 0.4
    assert off["score"] == pytest.approx(40.0)
    # relaxed: 'renal failure' also overlaps nothing else; 'fever' overlaps nothing -> same here
    assert off["relaxed"]["F1"] == pytest.approx(40.0)
    assert paper["errors"][0]["fp"] == {"Disease": ["fever"], "Chemical": ["aspirin"]}


def test_relaxed_ner_counts_overlaps():
    i = ner("mouse Id - 1 binds", [("Gene", "mouse Id - 1")], ["Gene"])
    r = score_records([rec(i, "Gene: Id - 1")], "official")
    assert r["score"] == 0.0 and r["relaxed"]["F1"] == 100.0


def test_official_ner_agrees_with_seqeval():
    from seqeval.metrics import f1_score

    sents = [("a b c d e", [("Gene", "b c")], "Gene: b c ... e"), ("f g h", [("Gene", "f"), ("Gene", "h")], "Gene: g ... h"),
             ("i j", [], "Gene: j")]
    recs, ytrue, ypred = [], [], []
    for k, (text, gold, pred) in enumerate(sents):
        recs.append(rec(ner(text, gold, ["Gene"], did=str(k)), pred))
        toks = text.split()

        def tags(spans):
            t = ["O"] * len(toks)
            for s in spans:
                w = s.split()
                j = next(j for j in range(len(toks)) if toks[j:j + len(w)] == w)
                t[j] = "B-Gene"
                for q in range(j + 1, j + len(w)):
                    t[q] = "I-Gene"
            return t

        ytrue.append(tags([s for _, s in gold]))
        ypred.append(tags(P.parse_spans(pred, ["Gene"])[0]["Gene"]))
    assert score_records(recs, "official")["score"] == pytest.approx(100 * f1_score(ytrue, ypred))


def test_pico_token_level():
    doc = {"id": "p", "text": "adults with asthma took aspirin", "entities": [
        {"id": "T1", "type": "Participants", "offsets": [[0, 18]], "text": ["adults with asthma"]},
        {"id": "T2", "type": "Interventions", "offsets": [[24, 31]], "text": ["aspirin"]}]}
    i = T.ner_instance(doc, "pico", ["Participants", "Interventions", "Outcomes"], scoring_type="PICO")
    r = rec(i, "Participants: adults with asthma\nInterventions: aspirin daily\nOutcomes: None")
    paper = score_records([r], "paper")
    # words: P gold 3 pred 3 tp 3; I gold 1 pred 2 tp 1 -> micro NT 4, NP 5, TP 4
    assert paper["overall"]["TP"] == 4 and paper["overall"]["NP"] == 5
    off = score_records([r], "official")
    # macro over the three types: P 100, I 2*1*.5/1.5 = 66.7, O 0 (no gold, no pred -> F1 0)
    assert off["score"] == pytest.approx((100 + 200 / 3 + 0) / 3)


# ------------------------------------------------------------------ sequence tasks
def test_classification_paper_quirk_first_option_and_official_micro():
    from sklearn.metrics import f1_score

    docs = [{"id": str(k), "text": f"@CHEMICAL$ x{k} @GENE$ .", "labels": [lab]}
            for k, lab in enumerate(["CPR:3", "CPR:4", "false", "CPR:9", "false", "CPR:3"])]
    inst = T.re_masked_instances(docs, "chemprot", "chemprot", seed=0)
    gold_lab = [d["labels"][0] for d in docs]
    pick = ["CPR:3", "CPR:9", "false", "CPR:9", "CPR:4", None]  # last: no letter at all
    recs = []
    for i, p in zip(inst, pick):
        if p is None:
            recs.append(rec(i, "I am not sure."))
        else:
            recs.append(rec(i, i.options[i.gold["option_labels"].index(p)]))
    off = score_records(recs, "official")
    y_pred = [p if p is not None else "false" for p in pick]
    positives = ["CPR:3", "CPR:4", "CPR:5", "CPR:6", "CPR:9"]
    assert off["score"] == pytest.approx(100 * f1_score(gold_lab, y_pred, labels=positives, average="micro"))
    assert off["unparseable"] == 1
    paper = score_records(recs, "paper")
    # the quirk: no letter -> options[0]; the no-relation key is left out of Overall
    fallback = recs[-1]["gold"]["option_keys"][0]
    assert paper["per_key"][fallback]["NP"] >= 1
    assert paper["overall"]["NT"] == 4  # 6 gold minus the 2 negatives


def test_qa_nli_substring_and_accuracy():
    qa = T.qa_instances([{"id": str(k), "question": "q?", "context": "c", "choices": ["yes", "no", "maybe"],
                          "answer": [a]} for k, a in enumerate(["yes", "no", "maybe", "yes"])], "pubmedqa")
    preds = [qa[0].answer, "The answer is " + qa[1].answer + " because", "maybe", "(Z) nonsense"]
    recs = [rec(i, p) for i, p in zip(qa, preds)]
    paper = score_records(recs, "paper")
    assert paper["score"] == pytest.approx(50.0)  # 'maybe' alone is not the gold option string "(X) maybe"
    off = score_records(recs, "official")
    assert off["score"] == pytest.approx(75.0)  # official falls back to the option wording
    assert off["unparseable"] == 1


def test_hoc_micro_and_blue_example_based():
    from sklearn.metrics import f1_score

    labels = T.L.HOC_HALLMARKS
    golds = [[labels[0], labels[1]], [labels[2]], []]
    inst = T.dc_instances([{"id": str(k), "text": "t", "labels": g} for k, g in enumerate(golds)], "hoc", labels, "cancer hallmark")
    picks = [[labels[0]], [labels[2], labels[3]], []]
    recs = []
    for i, p in zip(inst, picks):
        lines = [o for o in i.options if o.split(") ", 1)[1] in p]
        recs.append(rec(i, "\n".join(lines) or "None"))
    Y = np.array([[l in g for l in labels] for g in golds])
    Yp = np.array([[l in p for l in labels] for p in picks])
    off = score_records(recs, "official")
    assert off["score"] == pytest.approx(100 * f1_score(Y, Yp, average="micro"))
    # BLUE example-based: p = (1 + .5 + 1)/3, r = (.5 + 1 + 1)/3
    p, r = 2.5 / 3, 2.5 / 3
    assert off["blue_example_f1"] == pytest.approx(100 * 2 * p * r / (p + r))


def test_sts_pearson_matches_scipy():
    from scipy.stats import pearsonr

    scores = [0.4, 1.2, 2.6, 3.8, 3.1]
    inst = T.sts_instances([{"id": str(k), "text_1": "a", "text_2": "b", "label": s} for k, s in enumerate(scores)],
                           "biosses", "biosses")
    pred_scores = [0, 2, 2, 4, 4]
    recs = [rec(i, next(o for o, l in zip(i.options, i.gold["option_labels"]) if int(l) == p)) for i, p in zip(inst, pred_scores)]
    assert score_records(recs, "official")["score"] == pytest.approx(100 * pearsonr(scores, pred_scores)[0])
    gold_int = [round(s) for s in scores]
    assert score_records(recs, "paper")["score"] == pytest.approx(100 * pearsonr(gold_int, pred_scores)[0])


# ------------------------------------------------------------------ whole sets: perfect = 100, garbage = 0
@pytest.fixture(scope="module")
def eval_sets(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    build_eval("all", ROOT / "data/eval_samples", out, log=lambda s: None)
    return out


def _with_predictions(eval_dir, out_dir, fn):
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in eval_dir.glob("*.jsonl"):
        with open(out_dir / f.name, "w") as w:
            for line in f.read_text().splitlines():
                r = json.loads(line)
                r["prediction"] = fn(r)
                w.write(json.dumps(r) + "\n")


def test_perfect_predictions_score_100_and_garbage_0(eval_sets, tmp_path):
    _with_predictions(eval_sets, tmp_path / "perfect", lambda r: r["messages"][-1]["content"])
    _with_predictions(eval_sets, tmp_path / "garbage", lambda r: "\x00 lorem ipsum ((( ")
    _with_predictions(eval_sets, tmp_path / "empty", lambda r: "")
    res = run_score({"perfect": tmp_path / "perfect", "garbage": tmp_path / "garbage", "empty": tmp_path / "empty"},
                    tmp_path / "report", manifest=eval_sets / "manifest.json")
    for name, d in res["perfect"]["datasets"].items():
        for mode in ("paper", "official"):
            if name == "BioSSES" and mode == "official":
                continue  # ordinal options against the annotators' mean score: below 100 by construction
            assert d[mode]["score"] == pytest.approx(100.0), (name, mode)
    from scipy.stats import pearsonr

    bs = [json.loads(l) for l in (eval_sets / "BioSSES.jsonl").read_text().splitlines()]
    g = [r["gold"]["score"] for r in bs]
    assert res["perfect"]["datasets"]["BioSSES"]["official"]["score"] == pytest.approx(
        100 * pearsonr(g, [round(x) for x in g])[0])
    for sysname in ("garbage", "empty"):
        for name, d in res[sysname]["datasets"].items():
            if name in ("PubMedQA", "BioASQ", "MedNLI") or d["paper"].get("pearson") is not None:
                continue  # accuracy/pearson of a constant fallback is not 0 by construction
            assert d["official"]["score"] == pytest.approx(0.0), (sysname, name)
    assert res["perfect"]["aggregates_paper"]["BLURB score"] == pytest.approx(100.0)
    assert res["perfect"]["datasets"]["BC2GM"]["gold_count"] == 10
    md = (tmp_path / "report" / "table5_paper.md").read_text()
    assert "| NER | Entity-level F1 | BC2GM † | 6,322 |" in md and "61.5" in md
    assert (tmp_path / "report" / "scores_paper.png").stat().st_size > 1000
    assert (tmp_path / "report" / "table5_official.csv").exists()
    assert (tmp_path / "report" / "charts_paper" / "BC2GM.png").exists()


def test_scoring_refuses_partial_or_repeated_predictions(eval_sets, tmp_path, capsys):
    """A set decoded only in part (a stopped run) is not scored as if whole against the manifest, an instance read
    twice is named, and a manifest that is not there is an error, not a silently missing column."""
    perfect = tmp_path / "perfect"
    _with_predictions(eval_sets, perfect, lambda r: r["messages"][-1]["content"])
    manifest = eval_sets / "manifest.json"
    lines = (perfect / "HoC.jsonl").read_text().splitlines(keepends=True)
    (perfect / "HoC.jsonl").write_text("".join(lines[:-2]))
    with pytest.raises(ValueError, match=rf"perfect: predictions do not cover their eval sets \(HoC {len(lines) - 2} "
                                         rf"of {len(lines)} instances, by the manifest\)"):
        run_score({"ours": perfect}, tmp_path / "report", manifest=manifest)
    assert "HoC" in run_score({"ours": perfect}, tmp_path / "report")["ours"]["datasets"]  # a subset, on purpose
    (perfect / "HoC.jsonl").write_text("".join(lines + lines[:1]))
    with pytest.raises(ValueError, match=rf"HoC\.jsonl:{len(lines) + 1}: HoC instance '[^']+' again \(first at "
                                         r"HoC\.jsonl:1\)"):
        run_score({"ours": perfect}, tmp_path / "report", manifest=manifest)
    (perfect / "HoC.jsonl").write_text("".join(lines[:1]) + json.dumps({**json.loads(lines[1]), "prediction": None})
                                        + "\n")
    with pytest.raises(ValueError, match=r"HoC\.jsonl:2: prediction: expected the model's output text, got "
                                         r"NoneType None"):
        run_score({"ours": perfect}, tmp_path / "report")
    (perfect / "HoC.jsonl").write_text("".join(lines))
    with pytest.raises(FileNotFoundError, match="nowhere.json: no such manifest"):
        run_score({"ours": perfect}, tmp_path / "report", manifest=tmp_path / "nowhere.json")
    from mnlu_jax.decode.engine import DecodeConfig
    from mnlu_jax.evaluate.cli import run_evaluate

    with pytest.raises(FileNotFoundError, match=r"perfect: no manifest\.json \(build-eval writes"):
        run_evaluate("no-model-needed", perfect, tmp_path / "eval", DecodeConfig())  # refused before loading a model
    # and from the command line, whose parser no longer imports the decoder (and jax) before a command needs it
    from mnlu_jax.cli import main

    assert main(["evaluate", "--model", "no-model-needed", "--eval-dir", str(perfect), "--out",
                 str(tmp_path / "eval"), "--buckets", "64,128"]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    probe = "import sys, mnlu_jax.cli as c; c.build_parser(); print(sorted({'jax', 'torch'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"

    # a torn or foreign manifest names the file and what it lacks (was a bare KeyError / JSON message)
    (tmp_path / "torn.json").write_text(manifest.read_text()[:40])
    with pytest.raises(ValueError, match=r"torn\.json: cannot read as JSON"):
        run_score({"ours": perfect}, tmp_path / "report", manifest=tmp_path / "torn.json")
    (tmp_path / "other.json").write_text('{"datasets": {}}')
    with pytest.raises(ValueError, match=r"other\.json: sets: expected an object of eval sets"):
        run_score({"ours": perfect}, tmp_path / "report", manifest=tmp_path / "other.json")
    (tmp_path / "old.json").write_text('{"sets": {"HoC": {"file": "HoC.jsonl"}}}')
    with pytest.raises(ValueError, match=r"old\.json: sets\.HoC: expected keys .*missing \['instances', 'gold_count'\]"):
        run_score({"ours": perfect}, tmp_path / "report", manifest=tmp_path / "old.json")
    with pytest.raises(ValueError, match=r"manifest\.json has no eval sets \['HoCC'\]; it has \["):
        run_evaluate("no-model-needed", eval_sets, tmp_path / "eval", DecodeConfig(), names=["HoCC"])


def test_a_set_outside_table5_is_listed_after_it(eval_sets, tmp_path):
    """A user's own set (another name) is scored as its records' type says and listed after Table 5's rows, outside
    the averages; it used to appear in scores.json only."""
    perfect = tmp_path / "perfect"
    _with_predictions(eval_sets, perfect, lambda r: r["messages"][-1]["content"])
    recs = [json.loads(l) for l in (perfect / "HoC.jsonl").read_text().splitlines()]
    (perfect / "MyHoC.jsonl").write_text("".join(json.dumps({**r, "dataset": "MyHoC"}) + "\n" for r in recs))
    res = run_score({"ours": perfect}, tmp_path / "report")
    rows = {r[2]: r for r in table5(res, "paper")}
    assert rows["MyHoC (not in Table 5)"][0] == "DC" and rows["MyHoC (not in Table 5)"][-1] == "100.0"
    assert "MyHoC (not in Table 5)" in (tmp_path / "report" / "table5_official.md").read_text()
    (perfect / "MyHoC.jsonl").unlink()  # the averages are Table 5's sets' alone
    assert run_score({"ours": perfect}, tmp_path / "report2")["ours"]["aggregates_paper"] == \
        res["ours"]["aggregates_paper"]


def test_scores_json_is_written_last(eval_sets, tmp_path, monkeypatch):
    """The pipeline takes eval/<name>/scores.json as a finished evaluation: a report stopped part way (here in the
    plot) must not leave one behind."""
    from mnlu_jax.evaluate import score as S

    perfect = tmp_path / "perfect"
    _with_predictions(eval_sets, perfect, lambda r: r["messages"][-1]["content"])

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "plot_bars", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_score({"ours": perfect}, tmp_path / "report", manifest=eval_sets / "manifest.json")
    assert (tmp_path / "report" / "table5_paper.md").exists() and not (tmp_path / "report" / "scores.json").exists()
    assert not list((tmp_path / "report").glob(".*.tmp"))


def test_aggregates():
    s = {n: 50.0 for n in ["BC5-chemical", "BC5-disease", "NCBI-disease", "BC2GM", "JNLPBA", "EBM PICO", "ChemProt",
                           "DDI", "GAD", "BioSSES", "HoC", "PubMedQA", "BioASQ"]}
    s["HoC"] = 80.0
    a = aggregates(s)
    assert a["BLURB score"] == pytest.approx((50 * 5 + 80) / 6)
    assert a["BLURB macro avg (paper)"] == pytest.approx((50 * 12 + 80) / 13)
    assert aggregates({"HoC": 1.0})["BLURB score"] is None  # not all six types present


def test_build_eval_counts_and_skips(tmp_path):
    logs = []
    m = build_eval("blue", ROOT / "data/eval_samples", tmp_path / "e", log=logs.append)
    assert set(m["sets"]) == {"BC5-chemical", "BC5-disease", "HoC", "DDI", "ChemProt", "i2b2-2010", "MedNLI", "BioSSES"}
    assert m["sets"]["BC5-chemical"]["paper_count"] == 5385
    # a data root with none of the sets (or none at all) wrote an empty manifest that evaluated nothing
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match=r"nothing: none of the 15 eval sets asked for is there"):
        build_eval("all", tmp_path / "nothing", tmp_path / "e2", log=logs.append)
    assert not (tmp_path / "e2").exists()
    assert any("skip MedNLI: expected" in l and "restricted" in l for l in logs)
    with pytest.raises(FileNotFoundError, match=r"--data-root .*nowhere: no such directory"):
        build_eval("all", tmp_path / "nowhere", tmp_path / "e2")
    with pytest.raises(ValueError, match=r"shots -2: expected 0"):
        build_eval("all", ROOT / "data/eval_samples", tmp_path / "e2", shots=-2)
    with pytest.raises(ValueError, match=r"eval sets \['HOC'\]: not among"):
        build_eval("all", ROOT / "data/eval_samples", tmp_path / "e2", names=["HOC"])
    # a file that gives no instances (emptied, or cut before its first line) was written as an empty set, then
    # decoded and scored as 0 without a word
    import shutil

    shutil.copytree(ROOT / "data/eval_samples/BIOSSES", tmp_path / "cut" / "BIOSSES")
    header = (ROOT / "data/eval_samples/BIOSSES/test.tsv").read_text().splitlines(keepends=True)[0]
    (tmp_path / "cut" / "BIOSSES" / "test.tsv").write_text(header)  # the header only
    with pytest.raises(DataError, match=r"BioSSES: .*cut/BIOSSES/test\.tsv gave no instances \(an empty or cut-off "
                                        r"file\?\); nothing written"):
        build_eval("all", tmp_path / "cut", tmp_path / "e4", names=["BioSSES"])
    assert not (tmp_path / "e4" / "manifest.json").exists()
    m = build_eval("blurb", ROOT / "data/eval_samples", tmp_path / "e3", shots=2, log=logs.append)
    first = json.loads((tmp_path / "e3" / "BC2GM.jsonl").read_text().splitlines()[0])
    assert "Example 2:" in first["messages"][1]["content"]


def test_build_eval_reads_blurbs_own_file_forms(tmp_path):
    # BLURB's release (checked on a public copy): HoC as labels/sentence/index rows per sentence with k_v labels,
    # BIOSSES headed pair_id/sent1/sent2/score, JNLPBA tagged B/I/O without types, ChemProt/DDI with one mask for
    # two overlapping mentions (in BLURB's lower-case chemprot/ directory); each used to fail or give no gold
    root = tmp_path / "blurb"
    for d in ("HoC", "BIOSSES", "JNLPBA", "chemprot", "DDI"):
        (root / d).mkdir(parents=True)
    (root / "HoC/test.tsv").write_text(
        "labels\tsentence\tindex\n"
        "0_0,1_0,2_0,3_0,4_0,5_0,6_1,7_0,8_0,9_0\tVEGF drove new vessels .\t111_s0\n"
        "0_0,1_0,2_0,3_0,4_0,5_0,6_0,7_1,8_0,9_0\tCells escaped apoptosis .\t111_s1\n"
        "0_0,1_0,2_0,3_0,4_0,5_0,6_0,7_0,8_0,9_0\tNothing here .\t222_s0\n")
    (root / "BIOSSES/test.tsv").write_text("pair_id\tsent1\tsent2\tscore\n7\tA b.\tC d.\t2.5\n")
    (root / "JNLPBA/test.tsv").write_text("-DOCSTART- 1\n\nIL-2\tB\nbinds\tO\nT\tB\ncells\tI\n.\tO\n")
    (root / "chemprot/test.tsv").write_text("1.T1.T2\t@CHEM-GENE$ blockade in rats .\tfalse\n")
    (root / "DDI/test.tsv").write_text("d1.s0.p0\tSome @DRUG-DRUG$ (e.g. x) were given .\tDDI-false\n")
    m = build_eval("all", root, tmp_path / "out", log=lambda s: None)
    assert {k: v["gold_count"] for k, v in m["sets"].items()} == {"HoC": 2, "BioSSES": 1, "JNLPBA": 2, "ChemProt": 1,
                                                                   "DDI": 1}
    hoc = [json.loads(x) for x in (tmp_path / "out/HoC.jsonl").read_text().splitlines()]
    assert hoc[0]["messages"][-2]["content"].count("Cells escaped apoptosis") == 1
    assert sorted(g.split(") ")[1] for g in hoc[0]["gold"]["labels"]) == ["Inducing angiogenesis",
                                                                          "Resisting cell death"]
    jnlpba = json.loads((tmp_path / "out/JNLPBA.jsonl").read_text().splitlines()[0])
    assert jnlpba["messages"][-1]["content"] == "Protein, DNA, RNA, cell line or cell type: IL-2 ... T cells"
    chem = json.loads((tmp_path / "out/ChemProt.jsonl").read_text())
    assert "the Chemical entity '@CHEM-GENE$' and the Gene entity '@CHEM-GENE$'" in chem["messages"][-2]["content"]
    (root / "HoC/test.tsv").write_text("labels\tsentence\tindex\n0_0,12_1\tX .\t1_s0\n")
    with pytest.raises(DataError, match=r"HoC/test\.tsv:2: label '12_1'"):
        build_eval("blurb", root, tmp_path / "out2", names=["HoC"], log=lambda s: None)


def test_score_names_each_system_of_several():
    """Two bare paths were both named "ours", and the second silently replaced the first."""
    from mnlu_jax.evaluate.cli import prediction_systems

    assert prediction_systems(["runs/a.jsonl"]) == {"ours": "runs/a.jsonl"}
    assert prediction_systems(["runs/base.jsonl", "runs/merged.jsonl"]) == {"base": "runs/base.jsonl",
                                                                            "merged": "runs/merged.jsonl"}
    assert prediction_systems(["b=runs/x", "m=runs/y"]) == {"b": "runs/x", "m": "runs/y"}
    assert prediction_systems(["runs/base/predictions", "runs/merged/predictions/"]) == {
        "base": "runs/base/predictions", "merged": "runs/merged/predictions/"}  # evaluate's <out>/predictions
    with pytest.raises(ValueError, match=r"system 'preds' given twice \(a/preds and b/preds\)"):
        prediction_systems(["a/preds", "b/preds"])
    with pytest.raises(ValueError, match=r"--predictions '=x': expected FILE_OR_DIR or NAME=FILE_OR_DIR"):
        prediction_systems(["=x"])
