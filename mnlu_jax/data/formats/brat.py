"""BRAT standoff: `doc.txt` + `doc.ann` (the n2c2 2018 ADE and 2022 SDoH layout), or the BioNLP Shared Task
layout of the same lines split in two files: `doc.txt` + `doc.a1` (given entities) + `doc.a2` (triggers, events,
relations; absent from test releases) (GENIA GE, CG, PC, SeeDev, BB).

.ann lines (tab-separated):
  T<n>  Type start end[;start end...]  text     entity (discontinuous spans joined by ';')
  R<n>  Type Arg1:T<a> Arg2:T<b>                 relation
  E<n>  Type:T<trigger> Role:T<x> Role2:T<y>     event (roles may carry digits, e.g. Theme2)
  E<n>  Type Role:T<x> Role2:T<y>                event without a trigger (SeeDev's n-ary relations): `trigger` None
  A<n>/M<n>  Type E<n>|T<n> [Value]              attribute
  #, N, *  notes, normalisations, equivalences   (kept out of the interchange record)
`path` is a directory (every .ann with its .txt; with no .ann, every .a1 with its .txt and .a2) or one .ann or .a1
file. Offsets are checked against the .txt.
"""

from __future__ import annotations

from pathlib import Path

from mnlu_jax.data.schema import DataError, check_span, read_text


def _annotation_lines(ann: Path):
    """(file, line number, line) over the .ann, or over the .a1 and then the .a2 when there is one."""
    files = [ann] + [a2 for a2 in [ann.with_suffix(".a2")] if ann.suffix == ".a1" and a2.exists()]
    for f in files:
        for n, line in enumerate(read_text(f).splitlines(), 1):
            yield f, n, line


def _read_pair(ann: Path) -> dict:
    txt = ann.with_suffix(".txt")
    if not txt.exists():
        raise DataError(f"{ann}: no matching text file {txt.name}")
    text = read_text(txt)
    doc = {"schema": "kb", "id": ann.stem, "text": text, "entities": [], "relations": [], "events": [], "attributes": []}
    ids: set[str] = set()
    line_of: dict[str, str] = {}  # relation/event id -> file:line, for the unknown-reference error
    for f, n, line in _annotation_lines(ann):
        if not line.strip():
            continue
        where = f"{f}:{n}"
        kind = line[0]
        parts = line.split("\t")
        try:
            if kind == "T":
                tid, mid, span_text = parts[0], parts[1], parts[2] if len(parts) > 2 else None
                typ, locs = mid.split(" ", 1)
                offsets = [[int(a), int(b)] for a, b in (p.split() for p in locs.split(";"))]
                got = check_span(text, offsets, span_text, where)
                doc["entities"].append({"id": tid, "type": typ, "offsets": offsets, "text": got})
                ids.add(tid)
            elif kind == "R":
                rid, mid = parts[0], parts[1]
                typ, a1, a2 = mid.split()[:3]
                doc["relations"].append({"id": rid, "type": typ, "arg1": a1.split(":", 1)[1], "arg2": a2.split(":", 1)[1]})
                line_of[rid] = where
            elif kind == "E":
                eid, mid = parts[0], parts[1].split()
                typ, trig = mid[0].split(":", 1) if ":" in mid[0] else (mid[0], None)
                if trig is None and len(mid) < 2:
                    raise ValueError("an event needs a trigger (Type:T<n>) or arguments")
                args = [{"role": r.split(":", 1)[0].rstrip("0123456789") or r.split(":", 1)[0],
                         "ref_id": r.split(":", 1)[1]} for r in mid[1:]]
                doc["events"].append({"id": eid, "type": typ, "trigger": trig, "arguments": args})
                ids.add(eid)
                line_of[eid] = where
            elif kind in "AM":
                aid, mid = parts[0], parts[1].split()
                doc["attributes"].append({"id": aid, "type": mid[0], "ref_id": mid[1],
                                          "value": mid[2] if len(mid) > 2 else True})
            elif kind in "#N*":
                continue
            else:
                raise DataError(f"{where}: unknown annotation line {line[:40]!r}; expected T, R, E, A, M, N, * or #")
        except (ValueError, IndexError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{where}: malformed {kind} line {line[:60]!r} ({e})") from e
    for r in doc["relations"]:
        for a in (r["arg1"], r["arg2"]):
            if a not in ids:
                raise DataError(f"{line_of[r['id']]}: relation {r['id']} refers to unknown annotation {a}")
    for ev in doc["events"]:
        for ref in ([ev["trigger"]] if ev["trigger"] is not None else []) + [a["ref_id"] for a in ev["arguments"]]:
            if ref not in ids:
                raise DataError(f"{line_of[ev['id']]}: event {ev['id']} refers to unknown annotation {ref}")
    return doc


def read_brat(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_file():
        if path.suffix not in (".ann", ".a1"):
            raise DataError(f"{path}: expected a .ann or .a1 file (or a directory of them)")
        anns = [path]
    else:
        anns = sorted(path.rglob("*.ann")) or sorted(path.rglob("*.a1"))
    if not anns:
        raise DataError(f"{path}: no .ann files (BRAT) or .a1 files (BioNLP Shared Task)")
    return [_read_pair(a) for a in anns]
