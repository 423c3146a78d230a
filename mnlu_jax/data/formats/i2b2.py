"""i2b2 2010 concept/relation files and i2b2 2012 temporal XML.

2010 (directory with `txt/`, `concept/`, `rel/` or all files side by side):
    <doc>.txt  one sentence per line, whitespace-tokenised
    <doc>.con  c="mention" L:T L:T||t="problem|test|treatment"    (line 1-based, token 0-based, inclusive)
    <doc>.rel  c="a" L:T L:T||r="TrIP"||c="b" L:T L:T
2012 (<doc>.xml): <TEXT><![CDATA[...]]></TEXT> and <TAGS> with EVENT/TIMEX3 (id, start, end, text, type)
and TLINK (fromID, toID, type). The released files use 1-based start offsets in some versions and 0-based in
others; the reader detects which one makes every tag's text match and refuses the file if neither does.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from mnlu_jax.data.schema import DataError

_CON = re.compile(r'^c="(.*)" (\d+):(\d+) (\d+):(\d+)\|\|t="([^"]+)"$')
_REL = re.compile(r'^c="(.*)" (\d+):(\d+) (\d+):(\d+)\|\|r="([^"]+)"\|\|c="(.*)" (\d+):(\d+) (\d+):(\d+)$')


def _token_offsets(text: str):
    offs = []
    pos = 0
    for line in text.split("\n"):
        toks = []
        for m in re.finditer(r"\S+", line):
            toks.append((pos + m.start(), pos + m.end()))
        offs.append(toks)
        pos += len(line) + 1
    return offs


def _span(offs, l1, t1, l2, t2, mention, where, text):
    try:
        s, e = offs[l1 - 1][t1][0], offs[l2 - 1][t2][1]
    except IndexError as err:
        raise DataError(f"{where}: position {l1}:{t1}-{l2}:{t2} is outside the text") from err
    got = text[s:e]
    if " ".join(got.lower().split()) != " ".join(mention.lower().split()):
        raise DataError(f"{where}: tokens {l1}:{t1}-{l2}:{t2} are {got!r} in the text, annotation says {mention!r}")
    return s, e


def _find(base: Path, sub: str, stem: str, ext: str) -> Path | None:
    for p in (base / sub / f"{stem}{ext}", base / f"{stem}{ext}"):
        if p.exists():
            return p
    return None


def read_i2b2_2010(path: str | Path) -> list[dict]:
    base = Path(path)
    txts = sorted((base / "txt").glob("*.txt")) if (base / "txt").is_dir() else sorted(base.glob("*.txt"))
    if not txts:
        raise DataError(f"{base}: no .txt files (expected txt/ with concept/ and rel/)")
    docs = []
    for txt in txts:
        text = txt.read_text(encoding="utf-8")
        offs = _token_offsets(text)
        ents, key_to_id, rels = [], {}, []
        con = _find(base, "concept", txt.stem, ".con")
        if con is None:
            raise DataError(f"{txt}: no matching {txt.stem}.con")
        for n, line in enumerate(con.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            m = _CON.match(line.strip())
            if not m:
                raise DataError(f'{con}:{n}: expected c="..." L:T L:T||t="type", got {line[:60]!r}')
            mention, l1, t1, l2, t2, typ = m.group(1), *map(int, m.group(2, 3, 4, 5)), m.group(6)
            s, e = _span(offs, l1, t1, l2, t2, mention, f"{con}:{n}", text)
            eid = f"T{len(ents) + 1}"
            ents.append({"id": eid, "type": typ, "offsets": [[s, e]], "text": [text[s:e]]})
            key_to_id[(l1, t1, l2, t2)] = eid
        rel = _find(base, "rel", txt.stem, ".rel")
        if rel is not None:
            for n, line in enumerate(rel.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                m = _REL.match(line.strip())
                if not m:
                    raise DataError(f'{rel}:{n}: expected c="..." L:T L:T||r="type"||c="..." L:T L:T')
                k1 = tuple(map(int, m.group(2, 3, 4, 5)))
                k2 = tuple(map(int, m.group(8, 9, 10, 11)))
                if k1 not in key_to_id or k2 not in key_to_id:
                    raise DataError(f"{rel}:{n}: relation argument is not a concept in {con.name}")
                rels.append({"id": f"R{len(rels) + 1}", "type": m.group(6), "arg1": key_to_id[k1], "arg2": key_to_id[k2]})
        docs.append({"schema": "kb", "id": txt.stem, "text": text, "entities": ents, "relations": rels,
                     "events": [], "attributes": []})
    return docs


def read_i2b2_2012(path: str | Path) -> list[dict]:
    base = Path(path)
    files = [base] if base.is_file() else sorted(base.glob("*.xml"))
    if not files:
        raise DataError(f"{base}: no .xml files")
    docs = []
    for f in files:
        raw = f.read_text(encoding="utf-8")
        m = re.search(r"<TEXT><!\[CDATA\[(.*?)\]\]></TEXT>", raw, re.S)
        if not m:
            raise DataError(f"{f}: no <TEXT><![CDATA[...]]></TEXT> block")
        text = m.group(1)
        tags_xml = re.search(r"<TAGS>(.*?)</TAGS>", raw, re.S)
        try:
            tags = ET.fromstring(f"<TAGS>{tags_xml.group(1) if tags_xml else ''}</TAGS>")
        except ET.ParseError as e:
            raise DataError(f"{f}: invalid <TAGS> XML ({e})") from e
        spans = [t for t in tags if t.tag in ("EVENT", "TIMEX3")]
        shift = None
        for cand in (0, 1):
            if all(" ".join(text[int(t.get("start")) - cand:int(t.get("end")) - cand].split())
                   == " ".join((t.get("text") or "").split()) for t in spans):
                shift = cand
                break
        if shift is None:
            bad = next(t for t in spans if text[int(t.get("start")):int(t.get("end"))] != t.get("text"))
            raise DataError(f"{f}: tag {bad.get('id')} offsets {bad.get('start')}-{bad.get('end')} do not match its "
                            f"text {bad.get('text')!r} with 0- or 1-based offsets")
        ents = []
        for t in spans:
            s, e = int(t.get("start")) - shift, int(t.get("end")) - shift
            typ = t.get("type") if t.tag == "EVENT" else "TIMEX3"
            ents.append({"id": t.get("id"), "type": t.tag if t.tag == "EVENT" else "TIMEX3", "subtype": typ,
                         "offsets": [[s, e]], "text": [text[s:e]]})
        ids = {e["id"] for e in ents}
        rels = []
        for t in tags:
            if t.tag == "TLINK":
                a, b = t.get("fromID"), t.get("toID")
                if a in ids and b in ids:
                    rels.append({"id": t.get("id"), "type": (t.get("type") or "").upper(), "arg1": a, "arg2": b})
                elif not (a or "").startswith("S") and not (b or "").startswith("S"):
                    raise DataError(f"{f}: TLINK {t.get('id')} refers to unknown {a if a not in ids else b}")
        docs.append({"schema": "kb", "id": f.stem, "text": text, "entities": ents, "relations": rels,
                     "events": [], "attributes": []})
    return docs
