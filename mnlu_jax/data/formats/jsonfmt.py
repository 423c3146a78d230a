"""JSON/JSONL corpora: PubMedQA `ori_pqal.json` and SNLI / MultiNLI / MedNLI JSONL.

PubMedQA: {pmid: {"QUESTION", "CONTEXTS": [..], "LABELS": [..], "final_decision": yes|no|maybe, ...}};
an optional `test_ground_truth.json` ({pmid: decision}) restricts to the 500 test PMIDs and supplies labels.
NLI JSONL: one object per line with sentence1, sentence2, gold_label (SNLI's "-", no annotator consensus,
is kept as label "-" and counted as skipped by the task builder).
PICO-data (Nguyen et al. 2017, the `yinfeiy/PICO-data` release): `annotations/<split>/PICO-annos-*.json`, one
object per line, {"Participants": {annotator: [[start, end], ...]}, "docid"}, with character offsets into
`docs/<docid>.txt`. The annotators are the aggregations of the crowd (HMMCrowd, DawidSkene, MajorityVote) in the
`-agg` files, a medical student in `-professional.json`, or the crowd workers themselves; `annotator="auto"` takes
the only one, or HMMCrowd (the paper's aggregation), and otherwise names the ones there are. Spans are stripped of
the whitespace at their ends (about 4 % of them hold a newline or space there).
"""

from __future__ import annotations

from pathlib import Path

from mnlu_jax.data.schema import DataError, iter_jsonl, read_json_object, read_text


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


def read_pico_data(path: str | Path, docs: str | Path | None = None, annotator: str = "auto") -> list[dict]:
    path = Path(path)
    folder = Path(docs) if docs is not None else path.parent.parent.parent / "docs"
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory of abstracts (`docs`; the release's docs/ beside annotations/)")
    out = []
    for n, r in iter_jsonl(path):
        if "docid" not in r or not any(isinstance(v, dict) for v in r.values()):
            raise DataError(f"{path}:{n}: expected {{element: {{annotator: [[start, end], ...]}}, \"docid\": ...}}")
        text = read_text(folder / f"{r['docid']}.txt")
        entities = []
        for element, by_annotator in r.items():
            if element == "docid" or not by_annotator:  # {}: nobody marked a span (the professional file has some)
                continue
            chosen = annotator
            if annotator == "auto":
                chosen = next(iter(by_annotator)) if len(by_annotator) == 1 else "HMMCrowd"
            if chosen not in by_annotator:
                raise DataError(f"{path}:{n}: document {r['docid']}: no {element} annotations by {chosen!r}; "
                                f"annotators here: {sorted(by_annotator)}")
            for start, end in by_annotator[chosen]:
                if not 0 <= start < end <= len(text):
                    raise DataError(f"{path}:{n}: document {r['docid']}: span [{start}, {end}] outside its text "
                                    f"(length {len(text)})")
                span = text[start:end]
                start, end = start + len(span) - len(span.lstrip()), end - (len(span) - len(span.rstrip()))
                if start < end:
                    entities.append({"id": f"T{len(entities) + 1}", "type": element, "offsets": [[start, end]],
                                     "text": [text[start:end]]})
        out.append({"schema": "kb", "id": str(r["docid"]), "text": text, "entities": entities, "relations": [],
                    "events": [], "attributes": []})
    return out
