"""Corpora published as Hugging Face datasets: on the Hub, or a local copy of one.

Some corpora of the mix are released only on the Hub (TrialStop as `opentargets/clinical_trial_reason_to_stop`),
and many others have Hub copies (MultiNLI, STS-B, BigBio's conversions). `hf_dataset` reads one split into one of
the flat interchange schemas, by column:

    path     hub:<owner>/<name>   loaded with `datasets.load_dataset(name, config, split=split)` (online, or from
                                  the local cache with HF_DATASETS_OFFLINE=1)
             a folder             written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (its `split`)
             a data file          .parquet, .arrow, .json/.jsonl or .csv (the file is the split)
    schema   text (DC; SUM with a summary column), te (NLI), pairs (STS)
    columns  {field: column}: the column each field is read from; by default the first of COLUMNS[schema][field]
             that the dataset has

Class labels stored as integers (a ClassLabel feature, or a sequence of them) are read as their names; -1 (no gold
label, as in MultiNLI's and SNLI's Hub copies) reads as "-", which the NLI builder counts as unlabelled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnlu_jax.data.schema import DataError

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


def read_hf_dataset(path: str | Path, split: str = "train", config: str | None = None, schema: str = "text",
                    columns: dict[str, str] | None = None) -> list[dict]:
    if schema not in COLUMNS:
        raise DataError(f"{path}: schema {schema!r}; expected one of {sorted(COLUMNS)}")
    unknown = sorted(set(columns or {}) - set(COLUMNS[schema]))
    if unknown:
        raise DataError(f"{path}: columns {unknown} are not fields of the {schema!r} schema {sorted(COLUMNS[schema])}")
    ds = _load(path, split, config)
    have = list(ds.column_names)
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
