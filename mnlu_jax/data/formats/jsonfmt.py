"""JSON/JSONL corpora: PubMedQA `ori_pqal.json`, SNLI / MultiNLI / MedNLI JSONL, PICO-data, and tokenized NER
documents in the biaffine-NER / DyGIE++ jsonlines layouts.

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
NER jsonlines: one document per line, {"doc_key", "sentences": [[token, ...], ...]} with its mentions per sentence,
either as Yu et al. (2020) release them for their biaffine NER ("ners": [[[start, end, type], ...], ...], token
indices within the sentence, end inclusive, nesting allowed: the GENIA corpus the paper cites, in
`train_dev.genia.jsonlines` / `test.genia.jsonlines`), or in DyGIE++'s layout ("ner", the same triples with token
indices over the whole document, and optional "relations": [[[start1, end1, start2, end2, type], ...], ...]).
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


def read_ner_jsonlines(path: str | Path) -> list[dict]:
    """Tokenized, sentence-split NER documents (see the module docstring): the text is each sentence's tokens
    joined by single spaces, sentences by single spaces; every mention is checked against its sentence."""
    path = Path(path)
    docs, line_of_key = [], {}
    for n, r in iter_jsonl(path):
        where = f"{path}:{n}"
        key = "ners" if "ners" in r else "ner"
        sentences, mentions = r.get("sentences"), r.get(key)
        if not isinstance(sentences, list) or not all(isinstance(s, list) and all(isinstance(t, str) for t in s)
                                                      for s in sentences):
            raise DataError(f"{where}: expected \"sentences\": a list of token lists")
        if not isinstance(mentions, list) or len(mentions) != len(sentences):
            raise DataError(f"{where}: expected \"ners\" (biaffine NER: sentence token indices) or \"ner\" "
                            f"(DyGIE++: document token indices), one list per sentence ({len(sentences)})")
        doc_id = str(r.get("doc_key", f"{path.stem}-{n}"))
        if doc_id in line_of_key:
            raise DataError(f"{where}: doc_key {doc_id!r} again (first on line {line_of_key[doc_id]})")
        line_of_key[doc_id] = n
        # character offsets of every token, and the document index of each sentence's first token
        starts, ends, first_token, pos = [], [], [], 0
        for sent in sentences:
            first_token.append(len(starts))
            for tok in sent:
                starts.append(pos)
                ends.append(pos + len(tok))
                pos += len(tok) + 1
        text = " ".join(tok for sent in sentences for tok in sent)  # an empty sentence adds no space
        entities, entity_at = [], {}
        for k, sent_mentions in enumerate(mentions):
            lo = first_token[k] if key == "ner" else 0  # the sentence's range in the indices the file uses
            for m in sent_mentions:
                if not (isinstance(m, list) and len(m) == 3 and all(isinstance(i, int) for i in m[:2])
                        and isinstance(m[2], str) and lo <= m[0] <= m[1] < lo + len(sentences[k])):
                    raise DataError(f"{where}: sentence {k}: mention {m!r}; expected [start, end, type] with "
                                    f"{lo} <= start <= end <= {lo + len(sentences[k]) - 1}")
                first, last = first_token[k] + m[0] - lo, first_token[k] + m[1] - lo
                entity_at[(first, last)] = eid = f"T{len(entities) + 1}"
                entities.append({"id": eid, "type": m[2], "offsets": [[starts[first], ends[last]]],
                                 "text": [text[starts[first]:ends[last]]]})
        relations = []
        for k, sent_relations in enumerate(r.get("relations") or []):
            for rel in sent_relations:
                args = [entity_at.get(tuple(rel[i:i + 2])) for i in (0, 2)] if len(rel) == 5 else [None]
                if None in args:
                    raise DataError(f"{where}: sentence {k}: relation {rel!r}; expected [start1, end1, start2, end2, "
                                    f"type] between two mentions of \"ner\"")
                relations.append({"id": f"R{len(relations) + 1}", "type": rel[4], "arg1": args[0], "arg2": args[1]})
        docs.append({"schema": "kb", "id": doc_id, "text": text, "tokens": [t for s in sentences for t in s],
                     "entities": entities, "relations": relations, "events": [], "attributes": []})
    return docs
