"""BioC XML and BioC JSON (BioRED, BC5CDR, NLM-Gene, GNormPlus, DrugProt's BioC release).

A document has passages, each with an `offset` into the document and its `text`; annotations carry an infon
"type", a concept id (infon "identifier", or "MESH" in BC5CDR, "NCBI Gene identifier" in NLM-Gene: any of
`CONCEPT_KEYS`, case-insensitive; else the infon keyed by the annotation's type, as GNormPlus and tmVar write it)
and one or more `location`s (offset, length, in document coordinates). The document text is rebuilt by placing
every passage at its offset (gaps filled with spaces), so annotation offsets index it directly.

Relations (at passage or document level) carry an infon "type" (BC5CDR: "relation") and name their arguments in
one of three ways: `node`s whose refids are annotation ids (mention level); infons "entity1" and "entity2" holding
concept ids (BioRED); or one infon per argument keyed by an annotation type, e.g. Chemical=D008750 and
Disease=D003866 (BC5CDR). Concept-level relations go to the first mention of each concept
(`schema.resolve_concept_relations`).

The BC5CDR and tmVar BioC releases (converted from PubTator) count the XML escapes of a title's characters
(`&apos;`, `&quot;`, `&gt;`, `&amp;`) in the next passage's offset, while their annotation offsets count each
character once. A passage is placed one space after the previous one (where the PubTator release of the same corpus
puts it) when its declared offset is exactly that place counted with the escapes of the text before it, or when its
annotations do not match the text at the declared offset but all match there; it is counted in the document's
`passages_moved`, with a warning naming the document. Any other mismatch is an error naming the file, document and
annotation. With `bad_spans="skip"` such an annotation is left out instead, with a warning naming it, and counted
in the document's `skipped_annotations` (the BC5CDR BioC gold file has one, a part of a composite mention one
character off, which is dropped anyway unless parts are kept: below); a node-level relation that names it goes to
`unresolved_relations`.

BC5CDR's BioC release writes a composite mention ("renal and hepatic failure", infon CompositeRole =
CompositeMention, concept ids joined by "|") and then each of its parts as its own annotation (CompositeRole =
IndividualMention: "renal failure", often discontinuous, overlapping the composite). The PubTator release of the
same corpus and BLURB's IOB files have the composite mention only, and the shared task's scorer ignores the parts, so
`individual_mentions="drop"` (the default) leaves the parts out, counted in the document's
`individual_mentions_dropped` (a node-level relation that names one goes to `unresolved_relations`); "keep"
reads them as entities like any other annotation.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

from mnlu_jax.data.schema import DataError, check_span, read_json_object, resolve_concept_relations

log = logging.getLogger(__name__)

CONCEPT_KEYS = ("identifier", "mesh", "ncbi gene", "ncbi gene identifier", "ncbi_gene", "concept_id")
# relation infons that are neither its type nor an argument (BioRED's novelty, a system's score, curation notes)
_RELATION_META = {"type", "relation", "novel", "score", "annotator", "updated_at", "note", "role1", "role2"}
# what a writer adds per escaped character: every XML escape (&amp; &lt; &gt; &apos; &quot;, the PubTator-to-BioC
# converter of BC5CDR and tmVar), or only those that text nodes need (&amp; &lt; &gt;, e.g. Python's ElementTree)
_ESCAPE_EXTRA = ({"&": 4, "<": 3, ">": 3, "'": 5, '"': 5}, {"&": 4, "<": 3, ">": 3})


def _annotation(aid: str, infons: dict, locations: list[tuple[int, int]], text: str | None) -> dict:
    """One annotation of either serialisation: its concept id (any of `CONCEPT_KEYS`) and BC5CDR's CompositeRole
    (CompositeMention / IndividualMention) are read from the infons whatever their keys' case."""
    low = {k.lower(): v for k, v in infons.items() if k}
    typ = infons.get("type", "Entity")
    # GNormPlus and tmVar key the id by the annotation's type: <infon key="Gene">3569</infon>
    concept = next((low[k] for k in CONCEPT_KEYS if low.get(k)), None) or infons.get(typ) or None
    return {"id": aid, "type": typ, "locations": locations, "text": text, "concept": concept,
            "role": low.get("compositerole")}


def _relation(rid: str, infons: dict, nodes: list, ann_types: set[str], where: str) -> dict:
    """One relation: {"id", "type", "nodes": [annotation ids]} or {"id", "type", "concepts": [concept ids]}."""
    low = {k.lower(): v for k, v in infons.items() if k}
    typ = low.get("type") or low.get("relation") or "Relation"
    if nodes:
        if len(nodes) < 2:
            raise DataError(f"{where}, relation {rid}: expected 2 nodes, got {len(nodes)}")
        return {"id": rid, "type": typ, "nodes": [nodes[0], nodes[1]]}
    if low.get("entity1") and low.get("entity2"):
        return {"id": rid, "type": typ, "concepts": [low["entity1"], low["entity2"]]}
    typed = [v for k, v in infons.items() if k in ann_types and k.lower() not in _RELATION_META and v]
    if len(typed) == 2:
        return {"id": rid, "type": typ, "concepts": typed}
    raise DataError(f"{where}, relation {rid}: expected two nodes, infons entity1/entity2, or two infons keyed by "
                    f"annotation types {sorted(ann_types)}; got infons {infons}")


def _matches(text: str, ann: dict) -> bool:
    try:
        check_span(text, [[o, o + n] for o, n in ann["locations"]], ann["text"], "")
    except DataError:
        return False
    return True


def _assemble(doc_id: str, passages: list, relations: list, where: str, bad_spans: str, individual_mentions: str,
              doc_anns: list = ()) -> dict:
    """passages: [(offset, text, [annotation])]; relations: [(id, infons, [node refids])]; doc_anns: annotations
    placed on the document rather than in a passage (checked against the whole text)."""
    where = f"{where}: document {doc_id}"
    dropped = set()
    if individual_mentions == "drop":  # before placing passages: a dropped part never decides where one goes
        def kept(anns):
            part = [(a.get("role") or "").lower() == "individualmention" for a in anns]
            dropped.update(a["id"] for a, p in zip(anns, part) if p)
            return [a for a, p in zip(anns, part) if not p]
        passages = [(off, ptext, kept(panns)) for off, ptext, panns in passages]
        doc_anns = kept(doc_anns)
    text, anns, moved = "", [], 0
    for off, ptext, panns in sorted(passages, key=lambda p: p[0]):
        if off < len(text):
            raise DataError(f"{where}: passage at offset {off} overlaps the previous one")
        placed = text + " " * (off - len(text)) + ptext
        if text and off > len(text) + 1:
            packed = text + " " + ptext
            # the writer's offset: the text before, with the characters it escaped counted as their escapes
            explained = off in {len(text) + 1 + sum(extra.get(c, 0) for c in text) for extra in _ESCAPE_EXTRA}
            if all(_matches(packed, a) for a in panns) and (
                    explained or (panns and not all(_matches(placed, a) for a in panns))):
                log.warning("%s: passage declared at offset %d placed at %d, one space after the previous one (%s)",
                            where, off, len(text) + 1,
                            "its offset counts the XML escapes of the text before it" if explained
                            else f"where all {len(panns)} of its annotations match")
                placed = packed
                moved += 1
        text = placed
        anns += panns
    anns += doc_anns
    ents, skipped = [], set()
    for a in anns:
        offs = [[o, o + n] for o, n in a["locations"]]
        try:
            got = check_span(text, offs, a["text"], f"{where}, annotation {a['id']}")
        except DataError as e:
            if bad_spans != "skip":
                raise
            log.warning("%s (skipped: bad_spans=skip)", e)
            skipped.add(a["id"])
            continue
        ents.append({"id": a["id"], "type": a["type"], "offsets": offs, "text": got, "concept": a.get("concept")})
    ids, ann_types = {e["id"] for e in ents}, {a["type"] for a in anns}
    rels, by_concept, unresolved = [], [], []
    for rid, infons, nodes in relations:
        r = _relation(rid, infons, nodes, ann_types, where)
        if "nodes" not in r:
            by_concept.append((rid, r["type"], *r["concepts"]))
            continue
        missing = [x for x in r["nodes"] if x not in ids]
        unknown = [x for x in missing if x not in skipped and x not in dropped]
        if unknown:
            raise DataError(f"{where}, relation {rid}: node refid {unknown[0]!r} is not an annotation id")
        if missing:
            unresolved.append({"id": rid, "type": r["type"], "concept1": None, "concept2": None,
                               "nodes": r["nodes"]})
            continue
        rels.append({"id": rid, "type": r["type"], "arg1": r["nodes"][0], "arg2": r["nodes"][1]})
    resolved, by_concept_unresolved = resolve_concept_relations(ents, by_concept)
    return {"schema": "kb", "id": doc_id, "text": text, "entities": ents, "relations": rels + resolved,
            "unresolved_relations": unresolved + by_concept_unresolved, "skipped_annotations": len(skipped),
            "individual_mentions_dropped": len(dropped), "passages_moved": moved, "events": [], "attributes": []}


def _xml_annotation(a) -> dict:
    return _annotation(a.get("id"), {i.get("key"): i.text for i in a.findall("infon")},
                       [(int(l.get("offset")), int(l.get("length"))) for l in a.findall("location")],
                       a.findtext("text"))


def _xml(path: Path, bad_spans: str, individual_mentions: str) -> list[dict]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: invalid XML ({e})") from e
    docs = []
    for d in root.iter("document"):
        doc_id = d.findtext("id", default="")
        passages = [(int(p.findtext("offset", "0")), p.findtext("text", ""),
                     [_xml_annotation(a) for a in p.iter("annotation")]) for p in d.iter("passage")]
        rels = [(r.get("id"), {i.get("key"): i.text for i in r.findall("infon")},
                 [n.get("refid") for n in r.findall("node")]) for r in d.iter("relation")]
        docs.append(_assemble(doc_id, passages, rels, str(path), bad_spans, individual_mentions,
                              [_xml_annotation(a) for a in d.findall("annotation")]))
    return docs


def _json(path: Path, bad_spans: str, individual_mentions: str) -> list[dict]:
    docs = []
    for d in read_json_object(path, "a BioC collection").get("documents", []):
        passages, rels = [], []
        for p in d.get("passages", []):
            anns = [_annotation(a["id"], a.get("infons", {}),
                                [(int(l["offset"]), int(l["length"])) for l in a.get("locations", [])], a.get("text"))
                    for a in p.get("annotations", [])]
            passages.append((int(p.get("offset", 0)), p.get("text", ""), anns))
            rels += p.get("relations", [])
        rels += d.get("relations", [])
        rels = [(r.get("id"), r.get("infons", {}), [n["refid"] for n in r.get("nodes", [])]) for r in rels]
        docs.append(_assemble(d.get("id", ""), passages, rels, str(path), bad_spans, individual_mentions))
    return docs


def read_bioc(path: str | Path, bad_spans: str = "error", individual_mentions: str = "drop") -> list[dict]:
    """Every document of a BioC file, or of every .xml/.json file in a directory (sorted by name)."""
    if bad_spans not in ("error", "skip"):
        raise ValueError(f"bad_spans: expected 'error' or 'skip', got {bad_spans!r}")
    if individual_mentions not in ("drop", "keep"):
        raise ValueError(f"individual_mentions: expected 'drop' or 'keep', got {individual_mentions!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such BioC file or directory")
    # BioRED names its files Train.BioC.XML and Train.BioC.JSON
    files = [path] if path.is_file() else sorted(f for f in path.iterdir()
                                                 if f.is_file() and f.suffix.lower() in (".xml", ".json"))
    if not files:
        raise DataError(f"{path}: no BioC .xml or .json files")
    docs = []
    for f in files:
        docs += (_json if f.suffix.lower() == ".json" else _xml)(f, bad_spans, individual_mentions)
    return docs
