"""BioNLI (Bastan et al., Findings of EMNLP 2022) as its authors publish it: a CSV per split, written by pandas,
one row per (premise, hypothesis) pair:

    supp_set, conclusion, abstract, label_cat, ori_conclusion, pmid, index

`supp_set` is the premise (the abstract's supporting sentences), `conclusion` the hypothesis: the abstract's own
conclusion (`label_cat` "pos") or a perturbation of it, each category naming how it was made (lexical polarity
reversal LPR, swapped entity names SEN or positions SEP, an entity replaced from the text SRE or from elsewhere
SREO, negation added or removed posToNeg/negToPos, a swapped number, and four kinds of generated sentences). The
dataset is binary: the conclusion is consistent with the premise (entailment) or not (contradiction). Only
`supp_set`, `conclusion`, `label_cat` and `pmid` are required; several rows share a pmid (one per perturbation),
so the id is the pmid and the record number.

The authors' conclusions mark the regulator `<re> ... <er>` and the regulated entity `<el> ... <le>` (their
generator's tags). They are removed by default (`strip_entity_tags`), leaving plain sentences for the prompt.
Without its tags a tag-swap perturbation (category SET, "swap entity tags") reads exactly as the unperturbed
conclusion, with the opposite label, so such rows are then left out and counted (`tag_swaps_left_out`); the
authors' own classifier drops them too. With the tags kept they are contradictions like the others.
"""

from __future__ import annotations

import re
from pathlib import Path

from mnlu_jax.data.schema import DataError, read_csv_table

CONSISTENT = "pos"
PERTURBATIONS = ("LPR", "SEN", "SEP", "SRE", "SREO", "posToNeg", "negToPos", "swap_number", "generation",
                 "generation_nd", "generation_nd_SEN", "generation_nd_SRE")
TAG_SWAP = "SET"
LABELS = ["entailment", "contradiction"]  # the label space each pair is asked in (no neutral in BioNLI)

# an opening tag takes the space after it, a closing one the space before it: "the <el> IL6 <le>." -> "the IL6."
_OPENING, _CLOSING = re.compile(r"<(?:re|el)>\s*"), re.compile(r"\s*<(?:er|le)>")


def remove_entity_tags(text: str) -> str:
    return re.sub(r" {2,}", " ", _CLOSING.sub("", _OPENING.sub("", text))).strip()


def read_bionli_csv(path: str | Path, strip_entity_tags: bool = True) -> list[dict]:
    path = Path(path)
    header, records = read_csv_table(path, {"premise": "supp_set", "hypothesis": "conclusion",
                                            "label": "label_cat", "id": "pmid"})
    col = {name: header.index(name) for name in ("supp_set", "conclusion", "label_cat", "pmid")}
    clean = remove_entity_tags if strip_entity_tags else str.strip
    docs = []
    for n, line, row in records:
        category, pmid = row[col["label_cat"]].strip(), row[col["pmid"]].strip()
        if category != CONSISTENT and category != TAG_SWAP and category not in PERTURBATIONS:
            raise DataError(f"{path}:{line}: label_cat {category!r}; expected {CONSISTENT!r} or a perturbation "
                            f"category ({', '.join((*PERTURBATIONS, TAG_SWAP))})")
        if not pmid:
            raise DataError(f"{path}:{line}: record {n} has no pmid")
        doc = {"schema": "te", "id": f"{pmid}-{n}", "premise": clean(row[col["supp_set"]]),
               "hypothesis": clean(row[col["conclusion"]]), "labels": LABELS,
               "label": "entailment" if category == CONSISTENT else "contradiction", "category": category}
        if not doc["premise"] or not doc["hypothesis"]:
            raise DataError(f"{path}:{line}: record {n} has an empty supp_set or conclusion")
        if category == TAG_SWAP and strip_entity_tags:
            doc["left_out"] = "tag_swaps_left_out"
        docs.append(doc)
    return docs
