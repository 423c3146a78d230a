"""PubTator (BC5CDR, BioRED, tmVar, NCBI-disease, GNormPlus): blocks separated by blank lines.

    <pmid>|t|<title>
    <pmid>|a|<abstract>
    <pmid>\t<start>\t<end>\t<mention>\t<type>[\t<concept id(s)>[\t...]]   (offsets into title + ' ' + abstract)
    <pmid>\t<relation type>\t<concept 1>\t<concept 2>[\t...]             (BC5CDR: CID; BioRED: Association, ...)

A mention's concept ids may be several, joined by '|' (BC5CDR composite mentions), ',' (BioRED) or ';'. Fields
after the fourth of a relation line (BioRED's novelty flag, a system's score) are not used. Relations name
concept ids; each is resolved to the first mention of that concept (`schema.resolve_concept_relations`); one
naming a concept that no mention carries goes to the document's `unresolved_relations`.
"""

from __future__ import annotations

from pathlib import Path

from mnlu_jax.data.schema import DataError, check_span, read_text, resolve_concept_relations


def read_pubtator(path: str | Path) -> list[dict]:
    path = Path(path)
    docs, cur = [], None
    lines = read_text(path).splitlines()

    def finish():
        if cur is None:
            return
        rels = [(f"R{i + 1}", typ, c1, c2) for i, (typ, c1, c2) in enumerate(cur.pop("_rels"))]
        cur["relations"], cur["unresolved_relations"] = resolve_concept_relations(cur["entities"], rels)
        docs.append(cur)

    title = ""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            finish()
            cur = None
            continue
        if "|t|" in line[:40] and line.split("|", 1)[0].isalnum():
            finish()
            pmid, _, title = line.split("|", 2)
            cur = {"schema": "kb", "id": pmid, "text": title, "entities": [], "relations": [], "events": [],
                   "attributes": [], "_rels": []}
            continue
        if "|a|" in line[:40] and cur is not None:
            cur["text"] = title + " " + line.split("|", 2)[2]
            continue
        if cur is None:
            raise DataError(f"{path}:{n}: annotation line before any '<pmid>|t|' title line")
        parts = line.split("\t")
        if parts[0] != cur["id"]:
            raise DataError(f"{path}:{n}: PMID {parts[0]!r} in the block of document {cur['id']!r} "
                            "(a blank line missing between documents?)")
        if len(parts) >= 5 and parts[1].isdigit():
            if not parts[2].isdigit():
                raise DataError(f"{path}:{n}: mention end offset {parts[2]!r} is not a number")
            s, e = int(parts[1]), int(parts[2])
            got = check_span(cur["text"], [[s, e]], parts[3], f"{path}:{n}")
            cur["entities"].append({"id": f"T{len(cur['entities']) + 1}", "type": parts[4], "offsets": [[s, e]],
                                    "text": got, "concept": parts[5] if len(parts) > 5 and parts[5] else None})
        elif len(parts) >= 4 and not parts[1].isdigit():
            cur["_rels"].append((parts[1], parts[2], parts[3]))
        else:
            raise DataError(f"{path}:{n}: expected a mention (pmid, start, end, text, type[, concept]) or a relation "
                            f"(pmid, type, concept 1, concept 2[, ...]), got {line[:60]!r}")
    finish()
    return docs
