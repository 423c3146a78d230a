"""Metrics in two modes over Instances (dicts) carrying a `prediction`.

paper mode    reproduces the original `evaluation.py` rules, quirks included (see README "Scoring"):
              NER spans matched as lowercased strings, greedy one-to-one per instance and type; PICO bag of
              words per type; QA/NLI correct iff the gold option string is a substring of the output; multi-label
              options = every `(X)` present; other classification = the first option (in option order) whose
              letter appears, `options[0]` when none does; STS Pearson x 100 on option scores; the Overall row
              sums NT/NP/TP over keys with NT > 0 that do not look negative ("no", "none", ...).
official mode BLURB/BLUE definitions: untyped exact-match NER micro F1 (plus relaxed overlap F1), PICO token F1
              macro over the three types, RE micro F1 over positive classes (DDI also macro), HoC micro F1
              (BLURB) and example-based F1 (BLUE), accuracy for QA/NLI, Pearson for BioSSES.
Every function returns a dict with `score` (0-100), per-key P/R/F1 where it applies, `unparseable`, and
`errors` (per-instance false positives/negatives) for the error files.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from mnlu_jax.data.labels import NEGATIVE_MARKERS
from mnlu_jax.evaluate import parse as P

NEGATIVE_LABELS = {"false", "ddi-false", "0", "none"}


def prf(nt: float, np_: float, tp: float) -> dict[str, float]:
    nt, np_, tp = float(nt), float(np_), float(tp)
    p = tp / np_ if np_ else 0.0
    r = tp / nt if nt else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"P": 100 * p, "R": 100 * r, "F1": 100 * f, "NT": nt, "NP": np_, "TP": tp}


def _greedy_match(pred: list[str], gold: list[str], same=lambda a, b: a == b) -> tuple[int, list[str], list[str]]:
    """One-to-one greedy matching; returns TP and the unmatched predictions (FP) and gold (FN)."""
    left = list(gold)
    fps = []
    tp = 0
    for p in pred:
        k = next((j for j, g in enumerate(left) if same(p, g)), None)
        if k is None:
            fps.append(p)
        else:
            tp += 1
            left.pop(k)
    return tp, fps, left


def _norm(s: str) -> str:
    return " ".join(str(s).lower().split())


def _overall(keys: dict[str, list[float]]) -> dict[str, float]:
    tot = np.zeros(3)
    for k, (nt, np_, tp) in keys.items():
        if nt > 0 and not any(m in k.lower() for m in NEGATIVE_MARKERS):
            tot += (nt, np_, tp)
    return prf(*tot)


def _pearson(x: list[float], y: list[float]) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1]) * 100


# ------------------------------------------------------------------------------------------------ paper mode
def paper_spans(records: list[dict], bag_of_words: bool = False) -> dict:
    keys: dict[str, list[float]] = {}
    errors, unparseable = [], 0
    for r in records:
        names = list(r["gold"]["entities"])
        pred, ok = P.parse_spans(r["prediction"], names)
        unparseable += not ok
        err = {"id": r["id"], "fp": {}, "fn": {}}
        for n in names:
            g = [_norm(s) for s in r["gold"]["entities"][n]]
            p = [_norm(s) for s in pred[n]]
            if bag_of_words:
                g, p = [w for s in g for w in s.split()], [w for s in p for w in s.split()]
                inter = Counter(g) & Counter(p)
                tp = sum(inter.values())
                fp, fn = list((Counter(p) - inter).elements()), list((Counter(g) - inter).elements())
            else:
                tp, fp, fn = _greedy_match(p, g)
            k = keys.setdefault(n, [0, 0, 0])
            k[0] += len(g)
            k[1] += len(p)
            k[2] += tp
            if fp:
                err["fp"][n] = fp
            if fn:
                err["fn"][n] = fn
        if err["fp"] or err["fn"]:
            errors.append(err)
    per = {k: prf(*v) for k, v in keys.items()}
    overall = _overall(keys)
    return {"score": overall["F1"], "overall": overall, "per_key": per, "unparseable": unparseable, "errors": errors}


def paper_choice_substring(records: list[dict]) -> dict:
    correct, unparseable, errors = 0, 0, []
    for r in records:
        gold = r["gold"]["labels"][0]
        ok = gold in str(r["prediction"])
        correct += ok
        unparseable += not P.letters_in_text_order(r["prediction"])
        if not ok:
            errors.append({"id": r["id"], "gold": gold, "prediction": r["prediction"][:200]})
    n = len(records)
    return {"score": 100 * correct / n if n else 0.0, "accuracy": 100 * correct / n if n else 0.0, "n": n,
            "unparseable": unparseable, "errors": errors}


def paper_multilabel(records: list[dict]) -> dict:
    keys: dict[str, list[float]] = {}
    errors, unparseable = [], 0
    for r in records:
        opts, okeys = r["options"], r["gold"]["option_keys"]
        pred = set(P.options_in_text(r["prediction"], opts))
        unparseable += not pred and str(r["prediction"]).strip().lower().rstrip(".") != "none"
        gold = {opts.index(g) for g in r["gold"]["labels"]}
        for i, k in enumerate(okeys):
            c = keys.setdefault(k, [0, 0, 0])
            c[0] += i in gold
            c[1] += i in pred
            c[2] += i in gold and i in pred
        if pred != gold:
            errors.append({"id": r["id"], "fp": [okeys[i] for i in pred - gold], "fn": [okeys[i] for i in gold - pred]})
    tot = np.array([sum(v[j] for v in keys.values()) for j in range(3)])  # micro over (document, label)
    overall = prf(*tot)
    return {"score": overall["F1"], "overall": overall, "per_key": {k: prf(*v) for k, v in keys.items()},
            "unparseable": unparseable, "errors": errors}


def paper_classification(records: list[dict]) -> dict:
    keys: dict[str, list[float]] = {}
    errors, unparseable = [], 0
    for r in records:
        opts, okeys = r["options"], r["gold"]["option_keys"]
        i = P.first_option_in_option_order(r["prediction"], opts)
        if i is None:
            unparseable += 1
            i = 0  # the original's fallback: the first option
        g = opts.index(r["gold"]["labels"][0])
        keys.setdefault(okeys[g], [0, 0, 0])[0] += 1
        keys.setdefault(okeys[i], [0, 0, 0])[1] += 1
        if i == g:
            keys[okeys[g]][2] += 1
        else:
            errors.append({"id": r["id"], "gold": okeys[g], "predicted": okeys[i]})
    overall = _overall(keys)
    return {"score": overall["F1"], "overall": overall, "per_key": {k: prf(*v) for k, v in keys.items()},
            "unparseable": unparseable, "errors": errors}


def _sts(records: list[dict], pick, use_annotator_score: bool) -> dict:
    """Pearson x 100 between gold and predicted option scores; no option found -> the first option's score.
    Paper mode compares option scores on both sides; official mode compares with the annotators' mean score."""
    gold, pred, unparseable = [], [], 0
    for r in records:
        opts, labels = r["options"], r["gold"]["option_labels"]
        i = pick(r["prediction"], opts)
        if i is None:
            unparseable += 1
            i = 0
        gold_option_score = float(labels[opts.index(r["gold"]["labels"][0])])
        gold.append(float(r["gold"].get("score", gold_option_score)) if use_annotator_score else gold_option_score)
        pred.append(float(labels[i]))
    s = _pearson(gold, pred)
    return {"score": s, "pearson": s, "n": len(records), "unparseable": unparseable, "errors": []}


def paper_sts(records: list[dict]) -> dict:
    return _sts(records, P.first_option_in_option_order, use_annotator_score=False)


# ------------------------------------------------------------------------------------------------ official mode
def official_ner(records: list[dict]) -> dict:
    """Untyped exact match (BLURB collapses JNLPBA's types), micro F1; relaxed = any shared token."""
    tot, rel = np.zeros(3), np.zeros(3)
    unparseable, errors = 0, []
    for r in records:
        names = list(r["gold"]["entities"])
        pred, ok = P.parse_spans(r["prediction"], names)
        unparseable += not ok
        g = [_norm(s) for n in names for s in r["gold"]["entities"][n]]
        p = [_norm(s) for n in names for s in pred[n]]
        tp, fp, fn = _greedy_match(p, g)
        tot += (len(g), len(p), tp)
        rtp, _, _ = _greedy_match(p, g, same=lambda a, b: bool(set(a.split()) & set(b.split())))
        rel += (len(g), len(p), rtp)
        if fp or fn:
            errors.append({"id": r["id"], "fp": fp, "fn": fn})
    exact, relaxed = prf(*tot), prf(*rel)
    return {"score": exact["F1"], "overall": exact, "relaxed": relaxed, "unparseable": unparseable, "errors": errors}


def official_pico(records: list[dict]) -> dict:
    res = paper_spans(records, bag_of_words=True)
    per = res["per_key"]
    macro = float(np.mean([v["F1"] for v in per.values()])) if per else 0.0
    return {**res, "score": macro, "macro_f1": macro}


def official_re(records: list[dict]) -> dict:
    keys: dict[str, list[float]] = {}
    tot = np.zeros(3)
    unparseable, errors = 0, []
    for r in records:
        opts, labels = r["options"], r["gold"]["option_labels"]
        i = P.first_option_in_text(r["prediction"], opts)
        g = labels[opts.index(r["gold"]["labels"][0])]
        if i is None:
            unparseable += 1
            p = next((l for l in labels if l.lower() in NEGATIVE_LABELS), "none")
        else:
            p = labels[i]
        gpos, ppos = g.lower() not in NEGATIVE_LABELS, p.lower() not in NEGATIVE_LABELS
        tot += (gpos, ppos, gpos and ppos and g == p)
        for lab in {g, p}:
            keys.setdefault(lab, [0, 0, 0])
        keys[g][0] += 1
        keys[p][1] += 1
        keys[g][2] += g == p
        if g != p:
            errors.append({"id": r["id"], "gold": g, "predicted": p})
    per = {k: prf(*v) for k, v in keys.items()}
    pos = [v["F1"] for k, v in per.items() if k.lower() not in NEGATIVE_LABELS]
    micro = prf(*tot)
    return {"score": micro["F1"], "overall": micro, "macro_f1": float(np.mean(pos)) if pos else 0.0, "per_key": per,
            "unparseable": unparseable, "errors": errors}


def official_hoc(records: list[dict]) -> dict:
    res = paper_multilabel(records)
    ps, rs = [], []
    for r in records:
        opts = r["options"]
        pred = set(P.options_in_text(r["prediction"], opts))
        gold = {opts.index(g) for g in r["gold"]["labels"]}
        inter = len(pred & gold)
        ps.append(inter / len(pred) if pred else (1.0 if not gold else 0.0))
        rs.append(inter / len(gold) if gold else (1.0 if not pred else 0.0))
    p, rr = float(np.mean(ps)) if ps else 0.0, float(np.mean(rs)) if rs else 0.0
    example_f = 100 * 2 * p * rr / (p + rr) if p + rr else 0.0
    return {**res, "blue_example_f1": example_f}


def official_accuracy(records: list[dict]) -> dict:
    correct, unparseable, errors = 0, 0, []
    for r in records:
        opts = r["options"]
        i = P.first_option_in_text(r["prediction"], opts)
        unparseable += i is None
        ok = i is not None and opts[i] == r["gold"]["labels"][0]
        correct += ok
        if not ok:
            errors.append({"id": r["id"], "gold": r["gold"]["labels"][0], "predicted": None if i is None else opts[i]})
    n = len(records)
    return {"score": 100 * correct / n if n else 0.0, "accuracy": 100 * correct / n if n else 0.0, "n": n,
            "unparseable": unparseable, "errors": errors}


def official_sts(records: list[dict]) -> dict:
    return _sts(records, P.first_option_in_text, use_annotator_score=True)


# ------------------------------------------------------------------------------------------------ dispatch
def score_records(records: list[dict], mode: str) -> dict[str, Any]:
    """Score one dataset's records (all of one scoring type)."""
    if not records:
        return {"score": 0.0, "n": 0, "unparseable": 0, "errors": []}
    kind = records[0]["type"]
    if mode == "paper":
        fn = {"events": paper_spans, "PICO": lambda rs: paper_spans(rs, bag_of_words=True), "QA": paper_choice_substring,
              "NLI": paper_choice_substring, "MultiQA": paper_multilabel, "other classification": paper_classification,
              "STS": paper_sts}.get(kind)
    elif mode == "official":
        fn = {"events": official_ner, "PICO": official_pico, "QA": official_accuracy, "NLI": official_accuracy,
              "MultiQA": official_hoc, "other classification": official_re, "STS": official_sts}.get(kind)
    else:
        raise ValueError(f"mode {mode!r}: expected paper or official")
    if fn is None:
        raise ValueError(f"dataset {records[0]['dataset']}: no metric for instance type {kind!r}")
    out = fn(records)
    out["n"] = len(records)
    return out
