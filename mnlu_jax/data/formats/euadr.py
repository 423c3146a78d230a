"""EU-ADR as the IBI group distributes it: `EUADR_drug_disease.csv`, `EUADR_drug_target.csv` and
`EUADR_target_disease.csv`, tab-separated with a header and quoted fields, one row per annotated pair:

    ASSOCIATION_TYPE  PMID  NUM_SENTENCE  ENTITY1_TEXT  ENTITY1_INI  ENTITY1_END  ENTITY1_TYPE
                      ENTITY2_TEXT  ENTITY2_INI  ENTITY2_END  ENTITY2_TYPE  SENTENCE

Offsets index the sentence. The association is PA (positive), NA (negative: the text states there is none), SA
(speculative) or FA (false: the pair co-occurs and the text states nothing about it). A document is one sentence
(PMID and sentence number; a sentence that appears in several files or rows is one document), its entities the
rows' mentions (one per span and type), its relations the PA, NA and SA pairs from entity 1 to entity 2. FA pairs
are the document's `negative_pairs`, which the task builder asks with the no-relation answer (all of them, besides
the unrelated pairs it samples), and are counted in `false_associations`. The Erasmus MC release has the
annotations only and points at PubMed for the texts. The IBI group's files are Latin-1, not UTF-8: a file that is
not UTF-8 is read as Latin-1.
"""

from __future__ import annotations

from pathlib import Path

from mnlu_jax.data.schema import DataError, check_span, input_files, read_csv_table

COLUMNS = ["ASSOCIATION_TYPE", "PMID", "NUM_SENTENCE", "ENTITY1_TEXT", "ENTITY1_INI", "ENTITY1_END", "ENTITY1_TYPE",
           "ENTITY2_TEXT", "ENTITY2_INI", "ENTITY2_END", "ENTITY2_TYPE", "SENTENCE"]
ASSOCIATIONS = ("PA", "NA", "SA", "FA")


def read_euadr_csv(path: str | Path) -> list[dict]:
    docs: dict[str, dict] = {}
    for f in input_files(Path(path), "EUADR_*.csv", "EUADR_*.csv files"):
        header, records = read_csv_table(f, {}, delimiter="\t", fallback="latin-1")
        if header != COLUMNS:
            raise DataError(f"{f}:1: expected the header {COLUMNS}, got {header}")
        for _, line, row in records:
            where = f"{f}:{line}"
            r = dict(zip(COLUMNS, row))
            if r["ASSOCIATION_TYPE"] not in ASSOCIATIONS:
                raise DataError(f"{where}: association {r['ASSOCIATION_TYPE']!r}; expected one of {ASSOCIATIONS}")
            doc_id = f"{r['PMID']}-s{r['NUM_SENTENCE']}"
            doc = docs.setdefault(doc_id, {"schema": "kb", "id": doc_id, "text": r["SENTENCE"], "entities": [],
                                           "relations": [], "negative_pairs": [], "events": [], "attributes": [],
                                           "false_associations": 0, "_spans": {}})
            if doc["text"] != r["SENTENCE"]:
                raise DataError(f"{where}: sentence {r['NUM_SENTENCE']} of PMID {r['PMID']} differs from its text in "
                                "an earlier row")
            args = []
            for k in ("1", "2"):
                try:
                    span = [int(r[f"ENTITY{k}_INI"]), int(r[f"ENTITY{k}_END"])]
                except ValueError:
                    raise DataError(f"{where}: entity {k} offsets {r[f'ENTITY{k}_INI']!r}, {r[f'ENTITY{k}_END']!r} "
                                    "are not numbers") from None
                key = (*span, r[f"ENTITY{k}_TYPE"])
                if key not in doc["_spans"]:
                    got = check_span(doc["text"], [span], r[f"ENTITY{k}_TEXT"], f"{where}, entity {k}")
                    doc["_spans"][key] = f"T{len(doc['entities']) + 1}"
                    doc["entities"].append({"id": doc["_spans"][key], "type": key[2], "offsets": [span], "text": got})
                args.append(doc["_spans"][key])
            if r["ASSOCIATION_TYPE"] == "FA":
                doc["false_associations"] += 1
                doc["negative_pairs"].append({"id": f"F{doc['false_associations']}", "arg1": args[0],
                                              "arg2": args[1]})
            else:
                doc["relations"].append({"id": f"R{len(doc['relations']) + 1}", "type": r["ASSOCIATION_TYPE"],
                                         "arg1": args[0], "arg2": args[1]})
    for doc in docs.values():
        del doc["_spans"]
    return list(docs.values())
