"""The BioCreative chemical-protein releases: ChemProt (BioCreative VI, 2017) and DrugProt (BioCreative VII, 2021).

Both ship one directory per split holding three tab-separated files without a header:

    *_abstracts.tsv  (DrugProt spells it `abstracs`)   PMID  title  abstract
    *_entities.tsv                                       PMID  T1  CHEMICAL|GENE-Y|GENE-N|GENE  start  end  text
    *_relations.tsv                                      DrugProt: PMID  INHIBITOR  Arg1:T1  Arg2:T2
                                                         ChemProt: PMID  CPR:4  Y|N  INHIBITOR  Arg1:T1  Arg2:T2

Offsets index the title and the abstract joined by one character (a tab in the releases; the document text here
joins them with a space, as the PubTator and BioC readers do). A ChemProt relation's type is its CPR group
(`CPR:4`), the label BLUE and BLURB score; its fine-grained name and the evaluated flag (`Y`, groups 3, 4, 5, 6
and 9; the releases write `N ` with a trailing space) are kept as `name` and `evaluated`. ChemProt's
`*_gold_standard.tsv` (PMID, CPR group, Arg1, Arg2: the evaluated relations only) has DrugProt's four columns and
can be named instead with `relations=`; `evaluated_only=True` reads the same relations from the full file,
leaving the others out, counted in the document's `relations_not_evaluated` (their pairs can then be sampled as
no-relation pairs, as BLUE labels them `false`). A split without a relations file (DrugProt's test background
set) gives documents with entities only.
"""

from __future__ import annotations

import re
from pathlib import Path

from mnlu_jax.data.schema import DataError, check_span, read_text

_ARG = re.compile(r"Arg([12]):(\S+)$")


def _find(directory: Path, pattern: str, what: str, required: bool) -> Path | None:
    found = sorted(directory.glob(pattern))
    if len(found) > 1:
        raise DataError(f"{directory}: several {what} files ({', '.join(f.name for f in found)}); name one with "
                        f"reader_options")
    if not found and required:
        raise DataError(f"{directory}: no {what} file (expected a name matching {pattern!r})")
    return found[0] if found else None


def _lines(path: Path, widths: tuple[int, ...], what: str):
    """(line number, fields) of every non-blank line, each `widths` wide."""
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) not in widths:
            raise DataError(f"{path}:{n}: expected {what} ({' or '.join(map(str, widths))} tab-separated columns), "
                            f"got {len(cols)}")
        yield n, cols


def read_chemprot_tsv(path: str | Path, abstracts: str | None = None, entities: str | None = None,
                      relations: str | None = None, evaluated_only: bool = False) -> list[dict]:
    """Every document of one split directory, in the abstracts file's order. `abstracts`, `entities` and
    `relations` name the files (relative to the directory) where the directory holds more than one of a kind."""
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"{directory}: expected a ChemProt/DrugProt split directory (abstracts, entities and "
                        "relations .tsv files)")

    def named(name, pattern, what, required):
        return directory / name if name else _find(directory, pattern, what, required)

    abstracts_path = named(abstracts, "*abstrac*.tsv", "abstracts", True)
    entities_path = named(entities, "*entities*.tsv", "entities", True)
    relations_path = named(relations, "*relations*.tsv", "relations", False)

    docs: dict[str, dict] = {}
    for n, (pmid, title, abstract) in _lines(abstracts_path, (3,), "PMID, title, abstract"):
        if pmid in docs:
            raise DataError(f"{abstracts_path}:{n}: PMID {pmid} given twice")
        docs[pmid] = {"schema": "kb", "id": pmid, "text": f"{title} {abstract}", "entities": [], "relations": [],
                      "unresolved_relations": [], "events": [], "attributes": [], "relations_not_evaluated": 0}
    ids: dict[str, set[str]] = {pmid: set() for pmid in docs}

    def doc_of(pmid, where):
        if pmid not in docs:
            raise DataError(f"{where}: PMID {pmid} is not in {abstracts_path.name}")
        return docs[pmid]

    for n, (pmid, eid, typ, start, end, text) in _lines(entities_path, (6,), "PMID, id, type, start, end, text"):
        where = f"{entities_path}:{n}"
        doc = doc_of(pmid, where)
        if not (start.isdigit() and end.isdigit()):
            raise DataError(f"{where}: offsets {start!r}, {end!r} are not numbers")
        if eid in ids[pmid]:
            raise DataError(f"{where}: entity {eid} given twice in document {pmid}")
        ids[pmid].add(eid)
        offsets = [[int(start), int(end)]]
        doc["entities"].append({"id": eid, "type": typ, "offsets": offsets,
                                "text": check_span(doc["text"], offsets, text, where), "concept": None})

    if relations_path is not None:
        for n, cols in _lines(relations_path, (4, 6), "PMID, type, Arg1, Arg2 (DrugProt) or PMID, CPR group, "
                              "evaluated, type, Arg1, Arg2 (ChemProt)"):
            where = f"{relations_path}:{n}"
            doc = doc_of(cols[0], where)
            args = [_ARG.match(c.strip()) for c in cols[-2:]]
            if not all(args) or [a.group(1) for a in args] != ["1", "2"]:
                raise DataError(f"{where}: expected arguments 'Arg1:<entity id>' and 'Arg2:<entity id>', got "
                                f"{cols[-2]!r} and {cols[-1]!r}")
            missing = [a.group(2) for a in args if a.group(2) not in ids[cols[0]]]
            if missing:
                raise DataError(f"{where}: entity {missing[0]} is not in document {cols[0]} of {entities_path.name}")
            rel = {"id": f"R{len(doc['relations']) + 1}", "type": cols[1].strip(), "arg1": args[0].group(2),
                   "arg2": args[1].group(2)}
            if len(cols) == 6:
                flag = cols[2].strip()
                if flag not in ("Y", "N"):
                    raise DataError(f"{where}: evaluated flag {cols[2]!r}, expected Y or N")
                rel.update(name=cols[3].strip(), evaluated=flag == "Y")
            elif evaluated_only:
                raise DataError(f"{where}: evaluated_only needs ChemProt's six-column relations (with the Y/N "
                                "evaluated flag); this row has four")
            if evaluated_only and not rel["evaluated"]:
                doc["relations_not_evaluated"] += 1
                continue
            doc["relations"].append(rel)
    return list(docs.values())
