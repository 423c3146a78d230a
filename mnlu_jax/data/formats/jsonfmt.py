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
NER jsonlines, tokenized text (tokens joined by single spaces) in one of three layouts:
- one document per line, {"doc_key", "sentences": [[token, ...], ...]} with its mentions per sentence, either as
  Yu et al. (2020) release them for their biaffine NER ("ners": [[[start, end, type], ...], ...], token indices
  within the sentence, end inclusive, nesting allowed: the GENIA corpus the paper cites, in
  `train_dev.genia.jsonlines` / `test.genia.jsonlines`), or
- in DyGIE++'s layout ("ner", the same triples with token indices over the whole document, and optional
  "relations": [[[start1, end1, start2, end2, type], ...], ...]);
- one sentence per line as OneIE writes it (and the GENIA release of CNN_Nested_NER and others): {"doc_id",
  "sent_id", "tokens", "entity_mentions": [{"id", "start", "end", "entity_type", "text"}]} with `end` exclusive,
  optional "relation_mentions" / "event_mentions" whose arguments name entity ids; a document's lines are
  consecutive and make one document.
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
            where = f"{ground_truth}: PMID {pmid} answer" if gt is not None else f"{path}: PMID {pmid} final_decision"
            raise DataError(f"{where} {ans!r}; expected yes, no or maybe")  # named in the file it came from
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


class _TokenizedDoc:
    """A document assembled sentence by sentence: text is the tokens joined by single spaces (an empty sentence
    adds none); `entity_at` finds an entity by its token span, for relations that name their arguments so."""

    def __init__(self, doc_id: str):
        self.id, self.tokens, self.starts = doc_id, [], []
        self.entities, self.entity_at = [], {}
        self.relations, self.events, self._chars = [], [], 0

    def add_sentence(self, tokens: list[str]) -> int:
        """Append a sentence; return the document index of its first token."""
        first = len(self.tokens)
        for tok in tokens:
            self.starts.append(self._chars)
            self._chars += len(tok) + 1
        self.tokens.extend(tokens)
        return first

    def add_entity(self, first: int, last: int, typ: str) -> str:
        """Token span first..last (inclusive, document indices) as an entity; returns its id."""
        eid = f"T{len(self.entities) + 1}"
        start = self.starts[first]
        end = self.starts[last] + len(self.tokens[last])
        self.entity_at.setdefault((first, last), eid)
        self.entities.append({"id": eid, "type": typ, "offsets": [[start, end]],
                              "text": [" ".join(self.tokens[first:last + 1])]})
        return eid

    def to_kb(self) -> dict:
        return {"schema": "kb", "id": self.id, "text": " ".join(self.tokens), "tokens": self.tokens,
                "entities": self.entities, "relations": self.relations, "events": self.events, "attributes": []}


def read_ner_jsonlines(path: str | Path) -> list[dict]:
    """Tokenized NER documents in any of the three layouts of the module docstring; every mention is checked
    against its sentence, and a file mixing layouts is an error."""
    path = Path(path)
    docs, line_of_key, layout, doc = [], {}, None, None

    def start_doc(doc_id: str, where: str, n: int) -> _TokenizedDoc:
        if doc_id in line_of_key:
            raise DataError(f"{where}: document {doc_id!r} again (first on line {line_of_key[doc_id]}); expected "
                            f"each document's lines together")
        line_of_key[doc_id] = n
        new = _TokenizedDoc(doc_id)
        docs.append(new)
        return new

    for n, r in iter_jsonl(path):
        where = f"{path}:{n}"
        this = "sentence" if "tokens" in r and "sentences" not in r else "document"
        if layout is not None and this != layout:
            raise DataError(f"{where}: a {this} record (\"{'tokens' if this == 'sentence' else 'sentences'}\") in a "
                            f"file of {layout} records; expected one layout per file")
        layout = this
        if this == "sentence":
            key = str(r["doc_id"]) if r.get("doc_id") is not None else f"{path.stem}-{n}"
            if doc is None or doc.id != key:
                doc = start_doc(key, where, n)
            _add_sentence_record(doc, r, where)
        else:
            _add_document_record(start_doc(str(r.get("doc_key", f"{path.stem}-{n}")), where, n), r, where)
    return [d.to_kb() for d in docs]


def _add_document_record(doc: _TokenizedDoc, r: dict, where: str) -> None:
    """Yu et al.'s "ners" (sentence token indices) or DyGIE++'s "ner" (document indices) and "relations"."""
    key = "ners" if "ners" in r else "ner"
    sentences, mentions = r.get("sentences"), r.get(key)
    if not isinstance(sentences, list) or not all(isinstance(s, list) and all(isinstance(t, str) for t in s)
                                                  for s in sentences):
        raise DataError(f"{where}: expected \"sentences\": a list of token lists")
    if not isinstance(mentions, list) or len(mentions) != len(sentences):
        raise DataError(f"{where}: expected \"ners\" (biaffine NER: sentence token indices) or \"ner\" "
                        f"(DyGIE++: document token indices), one list per sentence ({len(sentences)})")
    first_token = [doc.add_sentence(sent) for sent in sentences]
    for k, sent_mentions in enumerate(mentions):
        lo = first_token[k] if key == "ner" else 0  # the sentence's range in the indices the file uses
        for m in sent_mentions:
            if not (isinstance(m, list) and len(m) == 3 and all(isinstance(i, int) for i in m[:2])
                    and isinstance(m[2], str) and lo <= m[0] <= m[1] < lo + len(sentences[k])):
                raise DataError(f"{where}: sentence {k}: mention {m!r}; expected [start, end, type] with "
                                f"{lo} <= start <= end <= {lo + len(sentences[k]) - 1}")
            doc.add_entity(first_token[k] + m[0] - lo, first_token[k] + m[1] - lo, m[2])
    for k, sent_relations in enumerate(r.get("relations") or []):
        for rel in sent_relations:
            args = [doc.entity_at.get(tuple(rel[i:i + 2])) for i in (0, 2)] if len(rel) == 5 else [None]
            if None in args:
                raise DataError(f"{where}: sentence {k}: relation {rel!r}; expected [start1, end1, start2, end2, "
                                f"type] between two mentions of \"ner\"")
            doc.relations.append({"id": f"R{len(doc.relations) + 1}", "type": rel[4], "arg1": args[0],
                                  "arg2": args[1]})


def _add_sentence_record(doc: _TokenizedDoc, r: dict, where: str) -> None:
    """One sentence (OneIE's layout): "tokens", "entity_mentions" [{"start", "end" (exclusive), "entity_type",
    "text"?, "id"?}], optional "relation_mentions" and "event_mentions" whose arguments name entity ids."""
    tokens = r["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(f"{where}: expected \"tokens\": a list of strings")
    first = doc.add_sentence(tokens)

    def span(m: dict, what: str, type_key: str | None) -> tuple[int, int]:
        s, e = (m.get("start"), m.get("end")) if isinstance(m, dict) else (None, None)
        if not (isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= len(tokens)
                and (type_key is None or isinstance(m.get(type_key), str))):
            raise DataError(f"{where}: {what} {m!r}; expected {{\"start\", \"end\""
                            + (f", \"{type_key}\"" if type_key else "") + f"}} with 0 <= start < end <= {len(tokens)} "
                            f"(token indices, end exclusive)")
        if isinstance(m.get("text"), str) and m["text"].split() != " ".join(tokens[s:e]).split():
            raise DataError(f"{where}: {what} {m!r}: tokens {s}-{e} are {' '.join(tokens[s:e])!r}, the mention says "
                            f"{m['text']!r}")
        return first + s, first + e - 1

    file_ids = {}
    for k, m in enumerate(r.get("entity_mentions") or []):
        a, b = span(m, f"entity_mentions[{k}]", "entity_type")
        fid = m.get("id", f"#{k}")
        if fid in file_ids:
            raise DataError(f"{where}: entity_mentions[{k}]: id {fid!r} again")
        file_ids[fid] = doc.add_entity(a, b, m["entity_type"])

    def arguments(m: dict, what: str) -> list[dict]:
        args = m.get("arguments")
        if not isinstance(args, list) or not all(isinstance(x, dict) and x.get("entity_id") in file_ids
                                                 for x in args):
            raise DataError(f"{where}: {what}: expected \"arguments\": [{{\"entity_id\", \"role\"}}, ...] naming "
                            f"ids of this sentence's entity_mentions ({sorted(file_ids)})")
        return [{"role": str(x.get("role", "")), "ref_id": file_ids[x["entity_id"]]} for x in args]

    for k, m in enumerate(r.get("relation_mentions") or []):
        what = f"relation_mentions[{k}]"
        args = arguments(m, what)
        if len(args) != 2 or not isinstance(m.get("relation_type"), str):
            raise DataError(f"{where}: {what}: expected \"relation_type\" and two arguments")
        doc.relations.append({"id": f"R{len(doc.relations) + 1}", "type": m["relation_type"],
                              "arg1": args[0]["ref_id"], "arg2": args[1]["ref_id"]})
    for k, m in enumerate(r.get("event_mentions") or []):
        what = f"event_mentions[{k}]"
        if not isinstance(m.get("event_type"), str):
            raise DataError(f"{where}: {what}: expected \"event_type\"")
        trigger = doc.add_entity(*span(m.get("trigger"), f"{what} trigger", None), m["event_type"])
        doc.events.append({"id": f"E{len(doc.events) + 1}", "type": m["event_type"], "trigger": trigger,
                           "arguments": arguments(m, what)})
