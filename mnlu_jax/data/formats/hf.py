"""Corpora published as Hugging Face datasets: on the Hub, or a local copy of one.

Some corpora of the mix are released only on the Hub (TrialStop as `opentargets/clinical_trial_reason_to_stop`),
and many others have Hub copies (MultiNLI, STS-B, BigBio's conversions). `hf_dataset` reads one split into one of
the flat interchange schemas, by column:

    path     hub:<owner>/<name>   loaded with `datasets.load_dataset(name, config, split=split)` (online, or from
                                  the local cache with HF_DATASETS_OFFLINE=1)
             a folder             written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (its `split`)
             a data file          .parquet, .arrow, .json/.jsonl or .csv (the file is the split)
    schema   text (DC; SUM with a summary column), te (NLI), pairs (STS), or kb: BigBio's knowledge-base schema
             (`<name>_bigbio_kb` configs: passages, entities, events, relations, coreferences with offsets), which
             BigBio's loaders give for nearly every corpus of the mix, the DUA ones included. Those loaders are
             scripts, which datasets 4 and later no longer run: load them with datasets<4 (trust_remote_code=True),
             `save_to_disk`, and point `path` at the folder
    columns  {field: column}: the column each field is read from; by default the first of COLUMNS[schema][field]
             that the dataset has (not for kb, whose field names are fixed)

Class labels stored as integers (a ClassLabel feature, or a sequence of them) are read as their names; -1 (no gold
label, as in MultiNLI's and SNLI's Hub copies) reads as "-", which the NLI builder counts as unlabelled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnlu_jax.data.schema import DataError, check_span

HUB_PREFIX = "hub:"
COLUMNS = {
    "text": {"id": ["id", "idx", "nct_id"], "text": ["text", "sentence", "document", "article", "transcription"],
             "labels": ["labels", "label_descriptions", "label"], "summary": ["summary", "abstract", "target"]},
    "te": {"id": ["id", "idx", "pairID"], "premise": ["premise", "sentence1"],
           "hypothesis": ["hypothesis", "sentence2"], "label": ["label", "gold_label"]},
    "pairs": {"id": ["id", "idx", "pair_id"], "text_1": ["sentence1", "text_1", "sentence_1"],
              "text_2": ["sentence2", "text_2", "sentence_2"], "label": ["label", "score", "similarity_score"]},
}
REQUIRED = {"text": ("text",), "te": ("premise", "hypothesis", "label"), "pairs": ("text_1", "text_2", "label")}
KB_COLUMNS = ("passages", "entities")  # and, when present: events, relations, coreferences
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def _load(path: str | Path, split: str, config: str | None) -> Any:
    import datasets  # imported here: a second or two, paid only by mixes that read Hub datasets

    if str(path).startswith(HUB_PREFIX):
        name = str(path)[len(HUB_PREFIX):]
        try:
            return datasets.load_dataset(name, config, split=split)
        except Exception as e:  # offline, unknown name, gated: datasets raises several kinds
            raise DataError(f"{path}: could not load split {split!r} from the Hugging Face Hub "
                            f"({type(e).__name__}: {e})") from e
    path = Path(path)
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise DataError(f"{path}: not a dataset written by save_to_disk (no dataset_info.json or "
                            "dataset_dict.json)") from e
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
        return ds
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: expected hub:<name>, a save_to_disk folder or a {'/'.join(FILE_BUILDERS)} file")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # malformed JSON/CSV/Parquet surfaces as several exception types
        raise DataError(f"{path}: could not read it as {builder} ({type(e).__name__}: {e})") from e


def _label_names(feature: Any) -> list[str] | None:
    """The names behind integer labels: a ClassLabel, or a sequence (list) of them."""
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) / List(ClassLabel)
    return list(feature.names) if hasattr(feature, "names") else None


def _label(value: Any, names: list[str] | None, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise DataError(f"{where}: label {value!r}; expected a string or a class index")
    if isinstance(value, int) and names is not None:
        if value == -1:
            return "-"
        if not 0 <= value < len(names):
            raise DataError(f"{where}: class index {value} outside the {len(names)} names {names}")
        return names[value]
    return str(value)


def _bigbio_kb(row: dict, where: str) -> dict:
    """A row of BigBio's kb schema -> a kb document: the passages laid at their offsets (gaps as spaces), every
    entity and trigger checked against that text, an event's trigger as an entity of the event's type, and each
    coreference chain as `coreference` relations from every mention to the one before it, its mentions sharing a
    concept where they have none (so no unrelated pair is drawn inside a chain)."""
    pieces = [(s, e, t) for p in row["passages"] or [] for t, (s, e) in zip(p["text"], p["offsets"])]
    if not pieces:
        raise DataError(f"{where}: no passages")
    chars = [" "] * max(e for _, e, _ in pieces)
    for s, e, t in pieces:
        if e - s != len(t):
            raise DataError(f"{where}: passage offsets {s}-{e} for a text of {len(t)} characters")
        chars[s:e] = t
    text = "".join(chars)
    if any(text[s:e] != t for s, e, t in pieces):
        raise DataError(f"{where}: passages overlap with different texts")
    ents, events = [], []
    for e in row["entities"] or []:
        offsets = [list(o) for o in e["offsets"]]
        norm = ";".join(f"{n['db_name']}:{n['db_id']}" for n in e.get("normalized") or [])
        ents.append({"id": e["id"], "type": e["type"], "offsets": offsets, "concept": norm or None,
                     "text": check_span(text, offsets, e["text"], f"{where}: entity {e['id']}")})
    for ev in row.get("events") or []:
        trigger = None
        if ev["trigger"]["offsets"]:  # SeeDev's n-ary relations come as events without a trigger
            trigger, offsets = f"{ev['id']}-trigger", [list(o) for o in ev["trigger"]["offsets"]]
            ents.append({"id": trigger, "type": ev["type"], "offsets": offsets, "concept": None,
                         "text": check_span(text, offsets, ev["trigger"]["text"], f"{where}: event {ev['id']}")})
        events.append({"id": ev["id"], "type": ev["type"], "trigger": trigger,
                       "arguments": [{"role": a["role"], "ref_id": a["ref_id"]} for a in ev["arguments"]]})
    known = {e["id"] for e in ents} | {ev["id"] for ev in events}
    rels = [{"id": r["id"], "type": r["type"], "arg1": r["arg1_id"], "arg2": r["arg2_id"]}
            for r in row.get("relations") or []]
    by_id = {e["id"]: e for e in ents}
    for chain in row.get("coreferences") or []:
        members = sorted(chain["entity_ids"], key=lambda i: by_id[i]["offsets"][0][0] if i in by_id else -1)
        for i in members:
            if i in by_id and by_id[i]["concept"] is None:
                by_id[i]["concept"] = f"coreference:{chain['id']}"
        rels += [{"id": f"{chain['id']}-{k}", "type": "coreference", "arg1": b, "arg2": a}
                 for k, (a, b) in enumerate(zip(members, members[1:]), 1)]
    for r in rels:
        if r["arg1"] not in known or r["arg2"] not in known:
            raise DataError(f"{where}: relation {r['id']} joins {r['arg1']} and {r['arg2']}, not both entities or "
                            "events of the document")
    return {"schema": "kb", "id": str(row.get("document_id") or row.get("id")), "text": text, "entities": ents,
            "relations": rels, "events": events, "attributes": []}


def read_hf_dataset(path: str | Path, split: str = "train", config: str | None = None, schema: str = "text",
                    columns: dict[str, str] | None = None) -> list[dict]:
    if schema not in (*COLUMNS, "kb"):
        raise DataError(f"{path}: schema {schema!r}; expected one of {sorted((*COLUMNS, 'kb'))}")
    unknown = sorted(set(columns or {}) - set(COLUMNS.get(schema, {})))
    if unknown:
        raise DataError(f"{path}: columns {unknown} are not fields of the {schema!r} schema "
                        f"{sorted(COLUMNS.get(schema, {}))}")
    ds = _load(path, split, config)
    have = list(ds.column_names)
    if schema == "kb":
        if not set(KB_COLUMNS) <= set(have):
            raise DataError(f"{path}: no columns {[c for c in KB_COLUMNS if c not in have]} of BigBio's kb schema "
                            f"(a `<name>_bigbio_kb` config); its columns: {have}")
        return [_bigbio_kb(row, f"{path} ({split}) row {n}") for n, row in enumerate(ds)]
    chosen = {}
    for field, candidates in COLUMNS[schema].items():
        if columns and field in columns:
            if columns[field] not in have:
                raise DataError(f"{path}: no column {columns[field]!r} (for {field}); its columns: {have}")
            chosen[field] = columns[field]
        else:
            chosen[field] = next((c for c in candidates if c in have), None)
    missing = [f for f in REQUIRED[schema] if chosen[f] is None]
    if schema == "text" and chosen["labels"] is None and chosen["summary"] is None:
        missing.append("labels or summary")
    if missing:
        raise DataError(f"{path}: no column for {missing} (looked for {[COLUMNS[schema].get(f) for f in missing]}); "
                        f"its columns: {have}; name them with columns: {{field: column}}")
    label_field = {"text": "labels", "te": "label", "pairs": None}[schema]
    names = _label_names(ds.features[chosen[label_field]]) if label_field and chosen[label_field] else None
    docs = []
    for n, row in enumerate(ds):
        where = f"{path} ({split}) row {n}"
        doc_id = str(row[chosen["id"]]) if chosen["id"] else f"{split}-{n}"
        if schema == "text":
            raw = row[chosen["labels"]] if chosen["labels"] else []
            raw = [] if raw is None else raw if isinstance(raw, list) else [raw]
            doc = {"schema": "text", "id": doc_id, "text": row[chosen["text"]] or "",
                   "labels": [_label(v, names, where) for v in raw]}
            if chosen["summary"]:
                doc["summary"] = row[chosen["summary"]]
        elif schema == "te":
            doc = {"schema": "te", "id": doc_id, "premise": row[chosen["premise"]],
                   "hypothesis": row[chosen["hypothesis"]], "label": _label(row[chosen["label"]], names, where)}
        else:
            try:
                score = float(row[chosen["label"]])
            except (TypeError, ValueError) as e:
                raise DataError(f"{where}: score {row[chosen['label']]!r}; expected a number") from e
            doc = {"schema": "pairs", "id": doc_id, "text_1": row[chosen["text_1"]], "text_2": row[chosen["text_2"]],
                   "label": score}
        docs.append(doc)
    return docs
