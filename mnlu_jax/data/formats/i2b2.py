"""i2b2 2010 concept/relation files and i2b2 2012 temporal XML.

2010 (directory with `txt/`, `concept/`, `rel/` or all files side by side):
    <doc>.txt  one sentence per line, whitespace-tokenised
    <doc>.con  c="mention" L:T L:T||t="problem|test|treatment"    (line 1-based, token 0-based, inclusive)
    <doc>.rel  c="a" L:T L:T||r="TrIP"||c="b" L:T L:T
2012 (<doc>.xml): <TEXT><![CDATA[...]]></TEXT> and <TAGS> with EVENT/TIMEX3 (id, start, end, text, type)
and TLINK (fromID, toID, type). The released files use 1-based start offsets in some versions and 0-based in
others; the reader detects which one makes every tag's text match and refuses the file if neither does.
2014 de-identification (<doc>.xml): `<deIdi2b2><TEXT><![CDATA[...]]></TEXT><TAGS>` with one element per PHI,
`<NAME id="P1" start="16" end="20" text="..." TYPE="PATIENT" comment=""/>`: the entity type is the TYPE (PATIENT,
DOCTOR, HOSPITAL, DATE, ...: `level="type"`) or the element's category (NAME, LOCATION, DATE, ...: "category").
The offsets index the CDATA text as written (a file with CRLF line ends is also tried with LF ones).
2009 medication (a folder of extension-less records `<id>` and their entries `<id>.m`, `<id>_gold.entries` or
`<id>.entries`, beside them or in the folder `entries`): one medication entry per line, `||`-separated fields
`m="mention" L:T L:T||do="..." L:T L:T||mo="nm"||f=...||du=...||r=...||e="..."||t="..."||c="..."||ln="list"`,
positions as in 2010 (line 1-based, token 0-based, inclusive), "nm" = not mentioned, discontinuous parts joined
by "," in the positions and "..." in the text, mention texts lower-cased. Medication, dosage, mode, frequency,
duration and reason spans become entities (one per span and type, however many entries name it), each entry's
fields relations from its medication. Only records with an entries file are read: most of the release's records
were never annotated.
2011 coreference (a release tree, files matched by record id at any depth): `docs/<id>.txt`, `concepts/<id>.txt.con`
in the 2010 line format (types person, problem, pronoun, test, treatment) and `chains/<id>.txt.chains`, a chain of
coreferent concepts per line, `c="..." L:T L:T||c="..." L:T L:T||...||t="coref person"`.
2006 de-identification (one XML file): `<ROOT><RECORD ID="..."><TEXT>` with the PHI inline, `<PHI
TYPE="PATIENT">...</PHI>`; the text is the record's with the tags taken out, the PHI spans where they stood.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from mnlu_jax.data.schema import (DataError, check_span, input_files, read_bytes_as_utf8, read_text,
                                  read_xml_root)

log = logging.getLogger(__name__)

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
    # whitespace as it falls, or a word the text breaks over a line end and the annotation writes whole
    if " ".join(got.lower().split()) != " ".join(mention.lower().split()) and \
            " ".join(got.replace("\n", "").lower().split()) != " ".join(mention.lower().split()):
        raise DataError(f"{where}: tokens {l1}:{t1}-{l2}:{t2} are {got!r} in the text, annotation says {mention!r}")
    return s, e


def _concept_lines(con: Path):
    """(where, mention, (l1, t1, l2, t2), type) for each line of a 2010-format concepts file (2010, 2011)."""
    for n, line in enumerate(read_text(con).splitlines(), 1):
        if not line.strip():
            continue
        m = _CON.match(line.strip())
        if not m:
            raise DataError(f'{con}:{n}: expected c="..." L:T L:T||t="type", got {line[:60]!r}')
        yield f"{con}:{n}", m.group(1), tuple(map(int, m.group(2, 3, 4, 5))), m.group(6)


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
        text = read_text(txt)
        offs = _token_offsets(text)
        ents, key_to_id, rels = [], {}, []
        con = _find(base, "concept", txt.stem, ".con")
        if con is None:
            raise DataError(f"{txt}: no matching {txt.stem}.con")
        for where, mention, position, typ in _concept_lines(con):
            s, e = _span(offs, *position, mention, where, text)
            eid = f"T{len(ents) + 1}"
            ents.append({"id": eid, "type": typ, "offsets": [[s, e]], "text": [text[s:e]]})
            key_to_id[position] = eid
        rel = _find(base, "rel", txt.stem, ".rel")
        if rel is not None:
            for n, line in enumerate(read_text(rel).splitlines(), 1):
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


_CHAIN_MENTION = re.compile(r'^c="(.*)" (\d+):(\d+) (\d+):(\d+)$')


def _coref_files(base: Path) -> list[tuple[str, Path, Path, Path]]:
    """(record id, text, concepts, chains) for every concepts file under `base`, at any depth: the releases hold
    `docs/<id>.txt`, `concepts/<id>.txt.con` and `chains/<id>.txt.chains` in one tree per source (Beth, Partners),
    and the test set's chains in a separate ground-truth archive, so files are matched by record id, not folder."""
    found: dict[str, dict[str, Path]] = {}
    for f in sorted(base.rglob("*")):
        for kind, suffixes in (("con", (".txt.con", ".con")), ("chains", (".txt.chains", ".chains")),
                               ("txt", (".txt",))):
            suffix = next((x for x in suffixes if f.name.endswith(x)), None)
            if suffix and f.is_file():
                record = f.name[: -len(suffix)]
                first = found.setdefault(record, {}).setdefault(kind, f)
                if first != f and first.read_bytes() != f.read_bytes():  # a copy unpacked twice is one file
                    raise DataError(f"{f}: record {record} again, and not as in {first}")
                break
    out = []
    for record, files in sorted(found.items()):
        if "con" not in files:
            continue  # a text without concepts (a README, or a record this task did not annotate) is not a record
        for kind, what in (("txt", "text (docs/<id>.txt)"), ("chains", "chains file (chains/<id>.txt.chains; the "
                                                                           "test set's are in its ground truth)")):
            if kind not in files:
                raise DataError(f"{files['con']}: no {what} for record {record} under {base}")
        out.append((record, files["txt"], files["con"], files["chains"]))
    if not out:
        raise DataError(f"{base}: no concepts files (concepts/<id>.txt.con) of the i2b2 2011 coreference release")
    return out


def read_i2b2_2011_coref(path: str | Path, bad_spans: str = "error") -> list[dict]:
    """The i2b2/VA 2011 coreference release: concepts (person, problem, pronoun, test, treatment; the 2010 line
    format) as entities, and each chain (`c="..." L:T L:T||c="..." L:T L:T||...||t="coref problem"`) as relations
    of its type from every mention to the one before it in the text, the mentions sharing the chain as their
    `concept` (so no unrelated pair is drawn inside a chain). The `pairs/` files are the chains' pairs and are not
    read. A concept whose tokens do not read as its text is a DataError naming the file and line, or with
    `bad_spans="skip"` is left out (counted in `skipped_annotations`) together with its place in any chain."""
    if bad_spans not in ("error", "skip"):
        raise ValueError(f"bad_spans: expected 'error' or 'skip', got {bad_spans!r}")
    base = Path(path)
    if not base.is_dir():
        raise DataError(f"{base}: expected the folder of the i2b2 2011 coreference release (docs/, concepts/, chains/)")
    docs = []
    for record, txt, con, chains in _coref_files(base):
        text = read_text(txt)
        offs = _token_offsets(text)
        ents, by_position, skipped_positions = [], {}, set()
        for where, mention, position, typ in _concept_lines(con):
            try:
                s, e = _span(offs, *position, mention, where, text)
            except DataError as err:
                if bad_spans != "skip":
                    raise
                log.warning("%s (skipped: bad_spans=skip)", err)
                skipped_positions.add(position)
                continue
            if position not in by_position:  # a concept listed twice is one mention
                by_position[position] = f"T{len(ents) + 1}"
                ents.append({"id": by_position[position], "type": typ, "offsets": [[s, e]],
                             "text": [text[s:e]], "concept": None})
        by_id, rels = {e["id"]: e for e in ents}, []
        for n, line in enumerate(read_text(chains).splitlines(), 1):
            if not line.strip():
                continue
            *mentions, kind = line.strip().split("||")
            typ = re.fullmatch(r't="([^"]+)"', kind)
            parsed = [_CHAIN_MENTION.match(x) for x in mentions]
            if not typ or not mentions or not all(parsed):
                raise DataError(f'{chains}:{n}: expected c="..." L:T L:T joined by "||", then ||t="coref <type>"')
            members = []
            for x in parsed:
                position = tuple(map(int, x.group(2, 3, 4, 5)))
                if position in by_position:
                    members.append(by_position[position])
                elif position not in skipped_positions:
                    raise DataError(f"{chains}:{n}: mention {x.group(1)!r} {x.group(2)}:{x.group(3)} is not a concept "
                                    f"of {con.name}")
            members = sorted(set(members), key=lambda i: by_id[i]["offsets"][0][0])
            for i in members:
                by_id[i]["concept"] = f"chain{n}"
            for antecedent, mention in zip(members, members[1:]):
                rels.append({"id": f"R{len(rels) + 1}", "type": typ.group(1), "arg1": mention, "arg2": antecedent})
        docs.append({"schema": "kb", "id": record, "text": text, "entities": ents, "relations": rels, "events": [],
                     "attributes": [], "skipped_annotations": len(skipped_positions)})
    return docs


def _cdata_text_and_tags(raw: str, f: Path, tags_required: bool) -> tuple[str, list[ET.Element]]:
    """The i2b2 XML layout (2012 temporal, 2014 de-identification): the CDATA text exactly as the file holds it (the
    offsets index it; an XML parser would normalise its line ends) and the elements under <TAGS> (none without, unless
    `tags_required`: 2014's unlabelled test notes have no <TAGS>, and must not read as notes without PHI)."""
    m = re.search(r"<TEXT><!\[CDATA\[(.*?)\]\]></TEXT>", raw, re.S)
    tags_xml = re.search(r"<TAGS>(.*?)</TAGS>", raw, re.S)
    if not m or (tags_required and not tags_xml):
        raise DataError(f"{f}: expected <TEXT><![CDATA[...]]></TEXT>" + (" and <TAGS>...</TAGS>" if tags_required
                                                                          else ""))
    try:
        return m.group(1), list(ET.fromstring(f"<TAGS>{tags_xml.group(1) if tags_xml else ''}</TAGS>"))
    except ET.ParseError as e:
        raise DataError(f"{f}: invalid <TAGS> XML ({e})") from e


def read_i2b2_2012(path: str | Path) -> list[dict]:
    docs = []
    for f in input_files(Path(path), "*.xml", "i2b2 2012 .xml files"):
        text, tags = _cdata_text_and_tags(read_text(f), f, tags_required=False)
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


def read_i2b2_2014_deid(path: str | Path, level: str = "type") -> list[dict]:
    if level not in ("type", "category"):
        raise ValueError(f"level: expected 'type' or 'category', got {level!r}")
    docs = []
    for f in input_files(Path(path), "*.xml", "i2b2 2014 de-identification .xml files"):
        raw = read_bytes_as_utf8(f)  # no newline translation: the offsets count what the file holds
        cdata, tags = _cdata_text_and_tags(raw, f, tags_required=True)
        texts = [cdata] + ([cdata.replace("\r\n", "\n")] if "\r\n" in cdata else [])
        for k, text in enumerate(texts):
            try:
                ents = []
                for t in tags:
                    where = f"{f}, tag {t.get('id')}"
                    if t.get("start") is None or t.get("end") is None:
                        raise DataError(f"{where}: <{t.tag}> without start and end")
                    s, e = int(t.get("start")), int(t.get("end"))
                    got = check_span(text, [[s, e]], t.get("text"), where)
                    typ = t.get("TYPE") if level == "type" else t.tag
                    if not typ:
                        raise DataError(f"{where}: <{t.tag}> without a TYPE")
                    ents.append({"id": t.get("id"), "type": typ, "offsets": [[s, e]], "text": got})
                break
            except DataError:
                if k == len(texts) - 1:
                    raise
        docs.append({"schema": "kb", "id": f.stem, "text": text, "entities": ents, "relations": [], "events": [],
                     "attributes": []})
    return docs


def read_i2b2_2006_deid(path: str | Path) -> list[dict]:
    docs = []
    for f in input_files(Path(path), "*.xml", "i2b2 2006 de-identification .xml files"):
        for k, rec in enumerate(read_xml_root(f).iter("RECORD"), 1):
            body = rec.find("TEXT")
            if rec.get("ID") is None or body is None:
                raise DataError(f"{f}: RECORD {rec.get('ID', f'#{k}')}: expected an ID and a <TEXT>")
            text, ents = body.text or "", []
            for phi in body:
                if phi.tag != "PHI" or not phi.get("TYPE"):
                    raise DataError(f"{f}: RECORD {rec.get('ID')}: <{phi.tag}> in the text; expected <PHI TYPE=...>")
                start = len(text)
                text += phi.text or ""
                if len(text) > start:
                    ents.append({"id": f"T{len(ents) + 1}", "type": phi.get("TYPE"), "offsets": [[start, len(text)]],
                                 "text": [text[start:]]})
                text += phi.tail or ""
            docs.append({"schema": "kb", "id": rec.get("ID"), "text": text, "entities": ents, "relations": [],
                         "events": [], "attributes": []})
    return docs


_MED_FIELDS = {"m": "Medication", "do": "Dosage", "mo": "Mode", "f": "Frequency", "du": "Duration", "r": "Reason"}
_MED_FIELD = re.compile(r'^(\w+)="(.*?)"(?:\s+(.*))?$')
_MED_POSITION = re.compile(r"^(\d+):(\d+)$")


def _medication_positions(positions: str, where: str) -> list[tuple[int, int, int, int]]:
    """"L:T L:T,L:T L:T" -> [(l1, t1, l2, t2), ...]; pairs written with a space instead of "," are read too (a
    known slip in the released ground truth)."""
    marks = positions.replace(",", " ").split()
    parsed = [_MED_POSITION.match(x) for x in marks]
    if not marks or len(marks) % 2 or not all(parsed):
        raise DataError(f"{where}: positions {positions!r}: expected L:T L:T pairs joined by ','")
    nums = [(int(m.group(1)), int(m.group(2))) for m in parsed]
    return [(*nums[i], *nums[i + 1]) for i in range(0, len(nums), 2)]


def _edge_trimmed(text: str, s: int, e: int, mention: str) -> tuple[int, int]:
    """The span without the punctuation a whitespace token carries at its ends and the annotation leaves out
    ("anticoagulation." annotated as "anticoagulation")."""
    m = mention.strip()
    while e > s and not text[e - 1].isalnum() and not (m and m[-1] == text[e - 1]):
        e -= 1
    while s < e and not text[s].isalnum() and not (m and m[0] == text[s]):
        s += 1
    return s, e


def _loose(x: str) -> str:
    """Lower-cased, whitespace collapsed, punctuation at the ends dropped: how an entry's text matches its tokens."""
    return re.sub(r"^\W+|\W+$", "", " ".join(x.lower().split()))


def _medication_spans(text, offs, ranges, mention, where) -> list[list[int]]:
    """L:T-L:T ranges as character ranges, one per text line each covers (a range may run over a line end), checked
    against the annotation's text (its "..."-joined parts, case, and the punctuation a token carries at its ends
    aside)."""
    pieces = []
    for l1, t1, l2, t2 in ranges:
        try:
            for line in range(l1, l2 + 1):
                toks = offs[line - 1]
                first, last = (toks[t1] if line == l1 else toks[0]), (toks[t2] if line == l2 else toks[-1])
                pieces.append([first[0], last[1]])
        except IndexError as err:
            raise DataError(f"{where}: position {l1}:{t1}-{l2}:{t2} is outside the text") from err
    got = " ".join(text[s:e] for s, e in pieces)
    if _loose(got) != _loose(mention.replace("...", " ")):
        raise DataError(f"{where}: the tokens read {got!r} in the text, the annotation says {mention!r}")
    parts = mention.split("...")
    pieces[0][0] = _edge_trimmed(text, pieces[0][0], pieces[0][1], parts[0])[0]
    pieces[-1][1] = _edge_trimmed(text, pieces[-1][0], pieces[-1][1], parts[-1])[1]
    return pieces


def read_i2b2_2009_medication(path: str | Path, entries: str | Path | None = None,
                              bad_spans: str = "error") -> list[dict]:
    """The i2b2 2009 medication release (see the module docstring). A position whose tokens do not read as the
    annotation's text is a DataError naming the file and line, or with `bad_spans="skip"` that field is left out
    (counted in `skipped_annotations`)."""
    base = Path(path)
    if not base.is_dir():
        raise DataError(f"{base}: expected the folder of i2b2 2009 medication records")
    notes = Path(entries) if entries is not None else base
    entry_files = {}
    for f in sorted(notes.iterdir()) if notes.is_dir() else []:
        for suffix in ("_gold.entries", ".entries", ".m"):
            if f.name.endswith(suffix) and f.is_file():
                entry_files.setdefault(f.name[: -len(suffix)], f)
                break
    if not entry_files:
        raise DataError(f"{notes}: no entries files (<id>.m, <id>_gold.entries or <id>.entries)")
    docs = []
    for rec_id, ann in sorted(entry_files.items()):
        record = next((r for r in (base / rec_id, base / f"{rec_id}.txt") if r.is_file()), None)
        if record is None:
            raise DataError(f"{ann}: no record {rec_id} (or {rec_id}.txt) in {base}")
        text = read_text(record)
        offs = _token_offsets(text)
        ents, by_span, rels, skipped = [], {}, [], 0
        for n, line in enumerate(read_text(ann).splitlines(), 1):
            if not line.strip():
                continue
            fields = {}
            for piece in line.split("||"):
                m = _MED_FIELD.match(piece.lstrip("|").strip())
                if not m:
                    raise DataError(f'{ann}:{n}: expected fields key="text" [L:T L:T] joined by "||", got '
                                    f"{piece[:60]!r}")
                fields[m.group(1)] = (m.group(2), m.group(3))
            if "m" not in fields:
                raise DataError(f"{ann}:{n}: entry without a medication (m=...)")
            entry_ids = {}
            for key, typ in _MED_FIELDS.items():
                mention, positions = fields.get(key, ("nm", None))
                if positions is None:
                    if mention != "nm":
                        raise DataError(f"{ann}:{n}: {key}={mention!r} has no position")
                    continue
                ranges = _medication_positions(positions, f"{ann}:{n}")
                try:
                    spans = _medication_spans(text, offs, ranges, mention, f"{ann}:{n}: {key}")
                except DataError as e:
                    if bad_spans != "skip":
                        raise
                    log.warning("%s (skipped: bad_spans=skip)", e)
                    skipped += 1
                    continue
                span_key = (typ, tuple(map(tuple, spans)))
                if span_key not in by_span:
                    by_span[span_key] = f"T{len(ents) + 1}"
                    ents.append({"id": by_span[span_key], "type": typ, "offsets": spans,
                                 "text": [text[s:e] for s, e in spans]})
                entry_ids[key] = by_span[span_key]
            if "m" in entry_ids:
                for key, eid in entry_ids.items():
                    if key != "m":
                        rels.append({"id": f"R{len(rels) + 1}", "type": f"has_{_MED_FIELDS[key].lower()}",
                                     "arg1": entry_ids["m"], "arg2": eid})
        seen, unique = set(), []
        for r in rels:  # entries repeat a medication's fields (one entry per mention of the medication)
            if (r["type"], r["arg1"], r["arg2"]) not in seen:
                seen.add((r["type"], r["arg1"], r["arg2"]))
                unique.append({**r, "id": f"R{len(unique) + 1}"})
        docs.append({"schema": "kb", "id": rec_id, "text": text, "entities": ents, "relations": unique,
                     "events": [], "attributes": [], "skipped_annotations": skipped})
    return docs
