"""The two record types that flow through the data stages.

1. Interchange documents (what readers return), BigBio-like plain dicts, one of five schemas:
   - kb:    {"schema": "kb", "id", "text", "entities": [{"id", "type", "offsets": [[s, e], ...], "text": [..],
                                                  "concept": normalised id(s) or None}],
             "relations": [{"id", "type", "arg1", "arg2"}],  (args: entity ids)
             "unresolved_relations": [{"id", "type", "concept1", "concept2"}],  (optional: resolve_concept_relations)
             "events": [{"id", "type", "trigger": entity-id, "arguments": [{"role", "ref_id"}]}],
             "attributes": [{"id", "type", "ref_id", "value"}]}
   - qa:    {"schema": "qa", "id", "question", "context", "choices": [..], "answer": [..]}
   - te:    {"schema": "te", "id", "premise", "hypothesis", "label", optional "labels": the corpus's label space}
   - text:  {"schema": "text", "id", "text", "labels": [..]}
   - pairs: {"schema": "pairs", "id", "text_1", "text_2", "label"}  (label: a float score)
   Offsets are character offsets into `text`; every reader checks each span against the text. A record a reader
   read but no instance can use carries `left_out`: the name of the build note that counts it.

2. Instance (what task builders produce; training, decoding and scoring all consume it), JSONL-serialised:
   {id, dataset, task, type, options, messages: [{role, content}], gold}
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable, Iterator

TASKS = ("NER", "ETE", "EAE", "EAC", "DC", "RE", "QA", "NLI", "STS", "SUM")
# Output type: token classification (spans), sequence classification (options), summarisation (free text).
TASK_TYPE = {"NER": "token", "ETE": "token", "EAE": "token", "EAC": "sequence", "DC": "sequence", "RE": "sequence",
             "QA": "sequence", "NLI": "sequence", "STS": "sequence", "SUM": "generation"}


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and what was expected."""


@dataclasses.dataclass
class Instance:
    id: str
    dataset: str
    task: str
    type: str
    options: list[str]
    messages: list[dict[str, str]]
    gold: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict, where: str = "record") -> "Instance":
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        check_messages(d["messages"], where)
        if not isinstance(d["options"], list) or not all(isinstance(o, str) for o in d["options"]):
            raise DataError(f"{where}: options: expected a list of strings, got {d['options']!r:.80}")
        if not isinstance(d["gold"], dict):
            raise DataError(f"{where}: gold: expected an object, got {d['gold']!r:.80}")
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "assistant" else ""


ROLES = ("system", "user", "assistant")


def check_messages(messages: Any, where: str) -> None:
    """A chat as training and decoding read it: a non-empty list of {"role": system|user|assistant, "content":
    str}; anything else (a string, a "bot" role, a missing or non-text content) names the message."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages: expected a non-empty list of {{role, content}} objects, got "
                        f"{messages!r:.80}")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{k}]: expected {{\"role\": one of {list(ROLES)}, \"content\": "
                            f"text}}, got {m!r:.120}")


def _punctuation_blanked(got: str, expected: str) -> bool:
    """NCBI-disease's PubTator file writes a mention's quote marks as spaces in its text column (`seizures " plus "`
    given as `seizures   plus  `): same length, and the only differences are punctuation given as a space."""
    return len(got) == len(expected) and all(g == e or (e == " " and not g.isalnum() and not g.isspace())
                                             for g, e in zip(got, expected))


def check_span(text: str, offsets: list[list[int]], expected: str | list[str] | None, where: str) -> list[str]:
    """Return the span texts at `offsets`; raise DataError naming `where` if they differ from `expected`."""
    got = []
    for s, e in offsets:
        if not (0 <= s <= e <= len(text)):
            raise DataError(f"{where}: offsets {s}-{e} outside the text (length {len(text)})")
        got.append(text[s:e])
    if expected is not None:
        exp = [expected] if isinstance(expected, str) else list(expected)
        # standoff text columns are one line: a newline inside a span is written as a space (SeeDev, BRAT)
        if (" ".join(got).split() != " ".join(exp).split() and "".join(got).split() != " ".join(exp).split()
                and not _punctuation_blanked(" ".join(got), " ".join(exp))):
            raise DataError(f"{where}: span {offsets} is {' '.join(got)!r} in the text, annotation says {' '.join(exp)!r}")
    return got


# BC5CDR joins a composite mention's concept ids with "|", BioRED with ",", PubTator3 and GNormPlus with ";"; but a
# tmVar variant id holds "|" itself ("c|SUB|A|1517|G", which BioRED's relations name whole)
_CONCEPT_LIST_SEP = re.compile(r"[,;]")


def concept_ids(concept: str | None) -> list[str]:
    """The ids one mention's concept field can be named by: the whole field, each of its ","/";"-joined ids, and
    each part of those joined by "|" (empty for None or ''); in that order, without repeats."""
    whole = (concept or "").strip()
    pieces = [p.strip() for p in _CONCEPT_LIST_SEP.split(whole)]
    parts = [q.strip() for p in pieces for q in p.split("|")]
    return [c for c in dict.fromkeys([whole] + pieces + parts) if c]


def resolve_concept_relations(entities: list[dict], relations: list[tuple[str, str, str, str]]
                              ) -> tuple[list[dict], list[dict]]:
    """Relations annotated between concept ids (BC5CDR's CID, BioRED) -> relations between the first mentions that
    carry those concepts, as `(id, type, concept 1, concept 2)` tuples come in. A relation naming a concept that
    no mention of the document carries cannot be put to text; it is returned in the second list (the task
    builders count it), not dropped: the real BC5CDR release has a few (a relation names a salt's MeSH id while
    the mentions carry the parent compound's)."""
    first: dict[str, str] = {}
    for e in entities:
        for c in concept_ids(e.get("concept")):
            first.setdefault(c, e["id"])
    resolved, unresolved = [], []
    for rid, typ, c1, c2 in relations:
        if c1 in first and c2 in first:
            resolved.append({"id": rid, "type": typ, "arg1": first[c1], "arg2": first[c2]})
        else:
            unresolved.append({"id": rid, "type": typ, "concept1": c1, "concept2": c2})
    return resolved, unresolved


def not_utf8(path: Path, e: UnicodeDecodeError, line: int | None = None) -> DataError:
    """A DataError naming the file, line and column of the first byte that is not UTF-8 (`e.object` is the bytes
    decoded: the whole file, or with `line` given, that line)."""
    data, at = e.object, e.start
    if line is None:
        line = data.count(b"\n", 0, at) + 1
    column = at - (data.rfind(b"\n", 0, at) + 1) + 1
    return DataError(f"{path}:{line}: byte 0x{data[at]:02x} at column {column} is not UTF-8; expected UTF-8 text "
                     "(convert the file, e.g. iconv -f latin1 -t utf-8)")


def read_bytes_as_utf8(path: Path) -> str:
    """A UTF-8 file's contents exactly as written (no newline translation: for offsets that count every byte's
    character); a DataError names the file, and the line of the first byte that is not UTF-8."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from e


def read_text(path: Path, fallback: str | None = None) -> str:
    """A UTF-8 text file's contents (universal newlines), or, if it is not UTF-8, decoded as `fallback` (for the
    releases written in Latin-1, such as EU-ADR's); an unreadable or undecodable file is a DataError naming it (and
    the line of the first undecodable byte)."""
    try:
        text = read_bytes_as_utf8(path)
    except DataError as e:
        if fallback is None or not isinstance(e.__cause__, UnicodeDecodeError):
            raise
        text = e.__cause__.object.decode(fallback)  # the bytes already read
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as Path.read_text gives


def input_files(path: Path, pattern: str, what: str) -> list[Path]:
    """`path` itself if it is a file, else the files in it matching `pattern` (sorted); a missing path or an empty
    match is a DataError naming `what` was expected."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    files = [path] if path.is_file() else sorted(f for f in path.glob(pattern) if f.is_file())
    if not files:
        raise DataError(f"{path}: no {what} ({pattern})")
    return files


def read_xml_root(path: Path) -> ET.Element:
    """The root element of a UTF-8 XML file; unreadable or invalid XML is a DataError naming the file."""
    try:
        return ET.fromstring(read_text(path))
    except ET.ParseError as e:
        raise DataError(f"{path}: invalid XML ({e})") from e


def read_csv_table(path: Path, columns: dict[str, str | None], delimiter: str = ",", fallback: str | None = None
                   ) -> tuple[list[str], list[tuple[int, int, list[str]]]]:
    """A CSV file with a header: (the header's names, [(record number, the line it ends on, fields)]), blank
    records skipped. `columns` maps option names to the column names they ask for (None: not asked); a missing one
    is an error naming the option and the header. Quoted fields may span lines and exceed csv's 128 KiB default;
    a spreadsheet's byte-order mark is dropped; a record with more or fewer fields than the header names its line.
    `fallback` is the encoding of a file that is not UTF-8 (`read_text`)."""
    reader = csv.reader(io.StringIO(read_text(path, fallback), newline=""), delimiter=delimiter)
    rows, ends = [], []
    limit = csv.field_size_limit(2**31 - 1)  # a clinical note or dialogue may be longer than csv's default
    try:
        for row in reader:
            rows.append(row)
            ends.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: cannot read as CSV ({e})") from e
    finally:
        csv.field_size_limit(limit)
    if not rows:
        raise DataError(f"{path}: empty file")
    header = [h.strip().lstrip("\ufeff") for h in rows[0]]
    for option, name in columns.items():
        if name is not None and name not in header:
            raise DataError(f"{path}:1: no column {name!r} ({option}); the header has {header}")
    records = []
    for n, (cols, line) in enumerate(zip(rows[1:], ends[1:]), 1):
        if not any(c.strip() for c in cols):
            continue
        if len(cols) != len(header):
            raise DataError(f"{path}:{line}: record {n} (ending on this line) has {len(cols)} fields, the header "
                            f"{len(header)}")
        records.append((n, line, cols))
    return header, records


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file whose top level is an object (`what` names it in the error); any failure names the file."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: cannot read as JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {what}, got a JSON {type(data).__name__}")
    return data


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Write atomically (temp file + rename). Records are Instances or dicts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "w") as f:
        for r in records:
            f.write((r.to_json() if isinstance(r, Instance) else json.dumps(r, ensure_ascii=False)) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


_SHARD = re.compile(r"train-(\d{5})-of-(\d{5})\.jsonl")


def shard_name(k: int, n: int) -> str:
    """The name of build-data's k-th of n instance shards."""
    return f"train-{k:05d}-of-{n:05d}.jsonl"


def shard_files(folder: str | Path) -> list[Path]:
    """build-data's instance shards in `folder`, checked to be one whole set: a shard left by another build (another
    count), a missing one, or another train-*.jsonl file is an error naming them, not data read twice or lost."""
    folder = Path(folder)
    files = sorted(folder.glob("train-*.jsonl"))
    found = {f: _SHARD.fullmatch(f.name) for f in files}
    odd = [f.name for f, m in found.items() if m is None]
    counts = sorted({int(m.group(2)) for m in found.values() if m})
    if odd or len(counts) > 1:
        raise DataError(f"{folder}: not one set of build-data shards ({shard_name(0, 1)}, ...): "
                        + (f"other files {odd}" if odd else f"shards of builds into {counts} files") +
                        "; rebuild into an empty folder or move them away")
    n = counts[0] if counts else 0
    missing = sorted(set(range(n)) - {int(m.group(1)) for m in found.values()})
    if missing or any(int(m.group(1)) >= n for m in found.values()):
        raise DataError(f"{folder}: shards {[shard_name(k, n) for k in missing]} are missing (or beyond {n})")
    return files


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; invalid JSON or a non-object names the file and line."""
    path = Path(path)
    try:
        f = open(path, "rb")  # bytes, so that a line that is not UTF-8 is named by its number
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    with f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, e, line=n) from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from e
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object")
            yield n, obj


def read_instances(path: str | Path) -> Iterator[Instance]:
    for n, d in iter_jsonl(path):
        yield Instance.from_dict(d, f"{path}:{n}")
