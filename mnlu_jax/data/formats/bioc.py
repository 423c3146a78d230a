"""BioC XML and BioC JSON (BioRED, NLM-Gene, GNormPlus, DrugProt's BioC release).

A document has passages, each with an `offset` into the document and its `text`; annotations carry an
`infon` "type" and one or more `location`s (offset, length, in document coordinates); relations (at passage
or document level) carry an infon "type" and `node`s (refid, role). The document text is rebuilt by placing
every passage at its offset (gaps filled with spaces), so annotation offsets index it directly.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from mnlu_jax.data.schema import DataError, check_span


def _assemble(doc_id, passages, annotations, relations, where):
    text = ""
    for off, ptext in sorted(passages):
        if off < len(text):
            raise DataError(f"{where}: document {doc_id}: passage at offset {off} overlaps the previous one")
        text += " " * (off - len(text)) + ptext
    ents = []
    for a in annotations:
        offs = [[o, o + n] for o, n in a["locations"]]
        got = check_span(text, offs, a["text"], f"{where}: document {doc_id}, annotation {a['id']}")
        ents.append({"id": a["id"], "type": a["type"], "offsets": offs, "text": got, "concept": a.get("concept")})
    ids = {e["id"] for e in ents}
    rels = []
    for r in relations:
        nodes = r["nodes"]
        if len(nodes) < 2:
            raise DataError(f"{where}: document {doc_id}, relation {r['id']}: expected 2 nodes, got {len(nodes)}")
        a1, a2 = nodes[0][0], nodes[1][0]
        rel = {"id": r["id"], "type": r["type"], "arg1": a1, "arg2": a2}
        # BioRED relations name concept ids (Entity1/Entity2 infons) rather than annotation ids
        if a1 not in ids or a2 not in ids:
            rel["by_concept"] = True
        rels.append(rel)
    return {"schema": "kb", "id": doc_id, "text": text, "entities": ents, "relations": rels, "events": [], "attributes": []}


def _xml(path: Path) -> list[dict]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: invalid XML ({e})") from e
    docs = []
    for d in root.iter("document"):
        doc_id = d.findtext("id", default="")
        passages, anns, rels = [], [], []
        for p in d.iter("passage"):
            passages.append((int(p.findtext("offset", "0")), p.findtext("text", "")))
        for a in d.iter("annotation"):
            inf = {i.get("key"): i.text for i in a.findall("infon")}
            locs = [(int(l.get("offset")), int(l.get("length"))) for l in a.findall("location")]
            anns.append({"id": a.get("id"), "type": inf.get("type", "Entity"), "locations": locs,
                         "text": a.findtext("text"), "concept": inf.get("identifier") or inf.get("Identifier")})
        for r in d.iter("relation"):
            inf = {i.get("key"): i.text for i in r.findall("infon")}
            nodes = [(n.get("refid"), n.get("role")) for n in r.findall("node")]
            if not nodes and "Entity1" in inf:
                nodes = [(inf["Entity1"], "Arg1"), (inf["Entity2"], "Arg2")]
            rels.append({"id": r.get("id"), "type": inf.get("type", "Relation"), "nodes": nodes})
        docs.append(_assemble(doc_id, passages, anns, rels, str(path)))
    return docs


def _json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from e
    docs = []
    for d in data.get("documents", []):
        passages, anns, rels = [], [], []
        for p in d.get("passages", []):
            passages.append((int(p.get("offset", 0)), p.get("text", "")))
            for a in p.get("annotations", []):
                inf = a.get("infons", {})
                anns.append({"id": a["id"], "type": inf.get("type", "Entity"), "text": a.get("text"),
                             "locations": [(int(l["offset"]), int(l["length"])) for l in a.get("locations", [])],
                             "concept": inf.get("identifier")})
            rels += p.get("relations", [])
        rels += d.get("relations", [])
        norm = []
        for r in rels:
            inf = r.get("infons", {})
            nodes = [(n["refid"], n.get("role")) for n in r.get("nodes", [])]
            if not nodes and "entity1" in {k.lower() for k in inf}:
                low = {k.lower(): v for k, v in inf.items()}
                nodes = [(low["entity1"], "Arg1"), (low["entity2"], "Arg2")]
            norm.append({"id": r.get("id"), "type": inf.get("type", "Relation"), "nodes": nodes})
        docs.append(_assemble(d.get("id", ""), passages, anns, norm, str(path)))
    return docs


def read_bioc(path: str | Path) -> list[dict]:
    path = Path(path)
    files = [path] if path.is_file() else sorted(list(path.glob("*.xml")) + list(path.glob("*.json")))
    if not files:
        raise DataError(f"{path}: no BioC .xml or .json files")
    docs = []
    for f in files:
        docs += _json(f) if f.suffix == ".json" else _xml(f)
    return docs
