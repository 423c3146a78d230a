"""PubMed PICO Element Detection (Jin and Szolovits, BioNLP 2018) as released in `jind11/PubMed-PICO-Detection`:
`structured_abstracts_PICO.txt`, `structured_abstracts_sentences_PICO.txt` and `splitted/PICO_{train,dev,test}.txt`.

    ###<PMID>
    <section heading>|<label>|<text>

A `###` line starts an abstract; each line after it is one section of the abstract with the label its heading was
given (in the sentence files and the splits, one sentence of a section, numbers written as `@`). The PICO labels
are P (participants or problem), I (intervention) and O (outcome); the other labels mark the abstract's other
parts. A line of two fields is read as `<label>|<text>`; the text itself may hold `|`.

The paper lists the corpus under NER: an abstract becomes one kb document (its lines joined by spaces) whose
entities are the lines labelled with a key of `label_types` ({"P": "Participants", "I": "Interventions", "O":
"Outcomes"} by default), one span per line, so the task is to extract the sentences that state each element.
"""

from __future__ import annotations

from pathlib import Path

from mnlu_jax.data.schema import DataError, read_text

PICO_TYPES = {"P": "Participants", "I": "Interventions", "O": "Outcomes"}


def _is_label(field: str) -> bool:
    return 0 < len(field) <= 3 and field.isalpha()


def read_pubmed_pico(path: str | Path, label_types: dict[str, str] | None = None) -> list[dict]:
    path, types = Path(path), dict(label_types or PICO_TYPES)
    docs, seen, labels_seen = [], {}, {}
    doc = None
    for n, raw in enumerate(read_text(path).split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("###"):
            pmid = line[3:].strip()
            if not pmid:
                raise DataError(f"{path}:{n}: '###' without a PMID")
            if pmid in seen:
                raise DataError(f"{path}:{n}: abstract {pmid} again (first at line {seen[pmid]})")
            seen[pmid] = n
            doc = {"schema": "kb", "id": pmid, "text": "", "entities": [], "relations": [], "events": [],
                   "attributes": []}
            docs.append(doc)
            continue
        if doc is None:
            raise DataError(f"{path}:{n}: a line before the first '###<PMID>' line")
        fields = [f.strip() for f in line.split("|", 2)]
        if len(fields) == 3 and _is_label(fields[1]):
            label, text = fields[1:]
        elif len(fields) >= 2 and _is_label(fields[0]):
            label, text = fields[0], line.split("|", 1)[1].strip()
        else:
            raise DataError(f"{path}:{n}: expected '<section heading>|<label>|<text>' (or '<label>|<text>'), got "
                            f"{line[:80]!r}")
        if not text:
            raise DataError(f"{path}:{n}: no text after the label in {line[:80]!r}")
        start = len(doc["text"]) + (1 if doc["text"] else 0)
        doc["text"] = f"{doc['text']} {text}" if doc["text"] else text
        labels_seen[label] = labels_seen.get(label, 0) + 1
        if label in types:
            doc["entities"].append({"id": f"T{len(doc['entities']) + 1}", "type": types[label],
                                    "offsets": [[start, start + len(text)]], "text": [text]})
    if not docs:
        raise DataError(f"{path}: no '###<PMID>' line; expected PubMed PICO's layout")
    if not any(doc["entities"] for doc in docs):  # labels written otherwise than expected: say so, not 0 spans
        raise DataError(f"{path}: no line has a label among {sorted(types)} (`label_types`); its labels: "
                        f"{labels_seen}")
    return docs
