"""JSON/JSONL corpora: PubMedQA `ori_pqal.json` and SNLI / MultiNLI / MedNLI JSONL.

PubMedQA: {pmid: {"QUESTION", "CONTEXTS": [..], "LABELS": [..], "final_decision": yes|no|maybe, ...}};
an optional `test_ground_truth.json` ({pmid: decision}) restricts to the 500 test PMIDs and supplies labels.
NLI JSONL: one object per line with sentence1, sentence2, gold_label (SNLI's "-", no annotator consensus,
is kept as label "-" and counted as skipped by the task builder).
"""

from __future__ import annotations

from pathlib import Path

from mnlu_jax.data.schema import DataError, iter_jsonl, read_json_object


def read_pubmedqa(path: str | Path, ground_truth: str | Path | None = None) -> list[dict]:
    path = Path(path)
    data = read_json_object(path, "an object keyed by PMID")
    gt = None
    if ground_truth is not None:
        gt = read_json_object(Path(ground_truth), "an object keyed by PMID")
        missing = [k for k in gt if k not in data]
        if missing:
            raise DataError(f"{ground_truth}: {len(missing)} PMIDs not in {path.name}, e.g. {missing[:3]}")
    docs = []
    for pmid, rec in data.items():
        if gt is not None and pmid not in gt:
            continue
        for key in ("QUESTION", "CONTEXTS"):
            if key not in rec:
                raise DataError(f"{path}: PMID {pmid} lacks {key}")
        ans = gt[pmid] if gt is not None else rec.get("final_decision")
        if ans not in ("yes", "no", "maybe"):
            raise DataError(f"{path}: PMID {pmid} decision {ans!r}; expected yes, no or maybe")
        docs.append({"schema": "qa", "id": pmid, "question": rec["QUESTION"], "context": " ".join(rec["CONTEXTS"]),
                     "choices": ["yes", "no", "maybe"], "answer": [ans]})
    return docs


def read_nli_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    docs = []
    for n, r in iter_jsonl(path):
        for k in ("sentence1", "sentence2", "gold_label"):
            if k not in r:
                raise DataError(f"{path}:{n}: missing field {k!r}")
        docs.append({"schema": "te", "id": str(r.get("pairID") or r.get("pairid") or f"{path.stem}-{n}"),
                     "premise": r["sentence1"], "hypothesis": r["sentence2"], "label": r["gold_label"]})
    return docs
