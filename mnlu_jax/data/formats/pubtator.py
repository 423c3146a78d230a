"""PubTator (tmVar, BC5CDR): blocks separated by blank lines.

    <pmid>|t|<title>
    <pmid>|a|<abstract>
    <pmid>\t<start>\t<end>\t<mention>\t<type>\t<concept id>     (offsets into title + ' ' + abstract)
    <pmid>\t<relation type>\t<concept 1>\t<concept 2>            (e.g. CID chemical-induced disease)
Relations name concept ids; each is resolved to the first mention of that concept.
"""

from __future__ import annotations

from pathlib import Path

from mnlu_jax.data.schema import DataError, check_span


def read_pubtator(path: str | Path) -> list[dict]:
    path = Path(path)
    docs, cur = [], None
    lines = path.read_text(encoding="utf-8").splitlines()

    def finish():
        if cur is None:
            return
        by_concept = {}
        for e in cur["entities"]:
            for c in (e.get("concept") or "").split("|"):
                by_concept.setdefault(c, e["id"])
        rels = []
        for i, (typ, c1, c2, n) in enumerate(cur.pop("_rels")):
            if c1 not in by_concept or c2 not in by_concept:
                raise DataError(f"{path}:{n}: relation {typ} names concept {c1 if c1 not in by_concept else c2} "
                                "that no mention in the document carries")
            rels.append({"id": f"R{i + 1}", "type": typ, "arg1": by_concept[c1], "arg2": by_concept[c2]})
        cur["relations"] = rels
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
        if len(parts) >= 5 and parts[1].isdigit():
            s, e = int(parts[1]), int(parts[2])
            got = check_span(cur["text"], [[s, e]], parts[3], f"{path}:{n}")
            cur["entities"].append({"id": f"T{len(cur['entities']) + 1}", "type": parts[4], "offsets": [[s, e]],
                                    "text": got, "concept": parts[5] if len(parts) > 5 else None})
        elif len(parts) == 4:
            cur["_rels"].append((parts[1], parts[2], parts[3], n))
        else:
            raise DataError(f"{path}:{n}: expected a mention (6 tab-separated fields) or a relation (4), got {line[:60]!r}")
    finish()
    return docs
