"""Tab-separated corpora: BLUE relation sets, HoC-style classification, STS pairs, BioASQ, summarisation JSONL.

- blue_re: `index<TAB>sentence<TAB>label`, entities masked as @GENE$ / @DISEASE$ / @DRUG$ / @CHEMICAL$
  (ChemProt, DDI, i2b2-2010 in BLUE form; GAD with 0/1 labels), or `sentence<TAB>label` (BioBERT's GAD/EU-ADR
  train files, no index, no header). A header line starting with `index` is skipped; every row of a file has the
  same number of columns.
- classification_tsv: `id<TAB>text<TAB>labels` (labels joined by `label_sep`, default ';'; columns configurable).
- hoc_tsv: BLUE's and BLURB's Hallmarks of Cancer files: header `labels<TAB>sentence<TAB>index`, one row per
  sentence, index `<PMID>_s<k>`, labels `0_0,1_1,...` (hallmark k present or not, hallmarks in BLUE's alphabetical
  order). Rows are joined into one document per PMID (sentences in file order, labels united): the benchmark
  scores documents.
- sts_tsv: a header naming `sentence1`/`sent1`, `sentence2`/`sent2` and `score` (GLUE STS-B, BLUE BioSSES, BLURB
  BIOSSES; the id is `index`, `pair_id` or an unnamed first column, pandas' index).
- qa_tsv: BLURB BioASQ form `id<TAB>question<TAB>passage<TAB>yes|no`.
- summ_jsonl: {"id", "text", "summary"} per line, or the PubMed long-document release's layout (below).
- summ_csv: a CSV with a header naming the text, summary and id columns (ACI-Bench: dialogue, note, encounter_id).
- summ_pair: line-aligned `<split>.source` / `<split>.target` files, one document per line (the fairseq layout in
  which CDSR's preprocessing script and the Cochrane simplification release write their splits), ids from
  `<split>.doi` or `<split>.id` when present.

BLUE wrote its TSVs with Python's `csv.writer`, which wraps a field holding a tab or a double quote in quotes and
doubles the quotes inside (`"a ""b"" c"`; BLUE's BioSSES dev file has a sentence with a tab in it). GLUE's STS-B
is written without quoting, and its sentences hold quotes anywhere (`"Oh, you're such a good person!` then
`You're such a bad person!"` in two columns). So the dialect is decided per file: a file in which every field that
holds a quote is a well-formed quoted field is csv.writer's, and those fields are unquoted; any other file is split
on tabs as it is.
"""

from __future__ import annotations

import re
from pathlib import Path

from mnlu_jax.data.schema import DataError, iter_jsonl, read_bytes_as_utf8, read_csv_table, read_text

# A csv.writer-quoted field: an opening quote, text in which every quote is doubled, a closing quote at the end of
# the field.
_QUOTED_FIELD = re.compile(r'"((?:[^"]|"")*)"(?=\t|$)')


def split_quoted_tsv_line(line: str) -> list[str] | None:
    """One line's fields with csv.writer's quoting undone; None if the line cannot be csv.writer's (a field holds a
    quote without being a quoted field, like `"Yes" she said`)."""
    if '"' not in line:
        return line.split("\t")
    fields, i = [], 0
    while True:
        quoted = _QUOTED_FIELD.match(line, i) if line.startswith('"', i) else None
        if quoted:
            fields.append(quoted.group(1).replace('""', '"'))
            i = quoted.end()
        else:
            tab = line.find("\t", i)
            end = len(line) if tab < 0 else tab
            if '"' in line[i:end]:
                return None
            fields.append(line[i:end])
            i = end
        if i >= len(line):
            return fields
        i += 1  # past the tab


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    numbered = [(n, line) for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    quoted = [split_quoted_tsv_line(line) for _, line in numbered]
    if any(fields is None for fields in quoted):  # not csv.writer's: quotes are text (GLUE)
        quoted = [line.split("\t") for _, line in numbered]
    return [(n, fields) for (n, _), fields in zip(numbered, quoted)]


def _headed_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header's column names (stripped, lower-case) and the rows after it, each as wide as the header."""
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path}: empty file")
    header = [h.strip().lower() for h in rows[0][1]]
    for n, cols in rows[1:]:
        if len(cols) != len(header):
            raise DataError(f"{path}:{n}: {len(cols)} columns, the header has {len(header)} (a tab inside a sentence "
                            "must be in a quoted field)")
    return header, rows[1:]


def read_blue_re(path: str | Path) -> list[dict]:
    path = Path(path)
    docs, width = [], None
    for n, cols in _rows(path):
        if n == 1 and cols[0].lower() in ("index", "id"):
            continue
        width = width or len(cols)
        if len(cols) != width or width not in (2, 3):
            raise DataError(f"{path}:{n}: expected index<TAB>sentence<TAB>label (or sentence<TAB>label on every row), "
                            f"got {len(cols)} column(s)" + (f" after rows of {width}" if len(cols) != width else ""))
        doc_id = cols[0] if width == 3 else f"{path.stem}-{n}"
        docs.append({"schema": "text", "id": doc_id, "text": cols[-2], "labels": [cols[-1].strip()]})
    return docs


def read_classification_tsv(path: str | Path, id_col: int = 0, text_col: int = 1, label_col: int = 2,
                            label_sep: str = ";", header: bool | None = None) -> list[dict]:
    path = Path(path)
    docs = []
    for n, cols in _rows(path):
        if n == 1 and (header or (header is None and cols[0].lower() in ("index", "id", "pmid", "labels", "label"))):
            continue
        if len(cols) <= max(id_col, text_col, label_col):
            raise DataError(f"{path}:{n}: expected at least {max(id_col, text_col, label_col) + 1} columns")
        labels = [x.strip() for x in cols[label_col].split(label_sep) if x.strip()] if label_sep else [cols[label_col].strip()]
        docs.append({"schema": "text", "id": cols[id_col], "text": cols[text_col], "labels": labels})
    return docs


# BLUE's hallmark order (blue/eval_hoc.py): label k of a `k_v` pair in its HoC files
HOC_BLUE_ORDER = ["Activating invasion and metastasis", "Avoiding immune destruction", "Cellular energetics",
                  "Enabling replicative immortality", "Evading growth suppressors", "Genomic instability and mutation",
                  "Inducing angiogenesis", "Resisting cell death", "Sustaining proliferative signaling",
                  "Tumor promoting inflammation"]


def read_hoc_tsv(path: str | Path) -> list[dict]:
    path = Path(path)
    header, rows = _headed_rows(path)
    if not {"labels", "sentence", "index"} <= set(header):
        raise DataError(f"{path}:1: expected a header naming labels, sentence and index (BLUE/BLURB HoC), got {header}")
    il, isent, iid = header.index("labels"), header.index("sentence"), header.index("index")
    docs: dict[str, dict] = {}
    for n, cols in rows:
        labels = set()
        for pair in filter(None, cols[il].split(",")):
            k, _, v = pair.partition("_")
            if not (k.isdigit() and int(k) < len(HOC_BLUE_ORDER) and v in ("0", "1")):
                raise DataError(f"{path}:{n}: label {pair!r}; expected k_0 or k_1, k in 0..{len(HOC_BLUE_ORDER) - 1}")
            if v == "1":
                labels.add(HOC_BLUE_ORDER[int(k)])
        pmid = cols[iid].rsplit("_s", 1)[0]
        doc = docs.setdefault(pmid, {"schema": "text", "id": pmid, "text": "", "labels": set()})
        doc["text"] = f"{doc['text']} {cols[isent].strip()}".strip()
        doc["labels"] |= labels
    return [dict(d, labels=sorted(d["labels"])) for d in docs.values()]


def read_sts_tsv(path: str | Path) -> list[dict]:
    path = Path(path)
    header, rows = _headed_rows(path)

    def column(*names):
        return next((header.index(x) for x in names if x in header), None)
    i1, i2 = column("sentence1", "sent1"), column("sentence2", "sent2")
    if i1 is None or i2 is None:
        raise DataError(f"{path}:1: header must name sentence1 and sentence2 (or sent1 and sent2), got {header}")
    isc = column("score", "label")
    iid = column("index", "pair_id", "id")
    iid = 0 if iid is None and header[0] == "" else iid
    docs = []
    for n, cols in rows:
        score = None
        if isc is not None and cols[isc].strip():
            try:
                score = float(cols[isc])
            except ValueError as e:
                raise DataError(f"{path}:{n}: score {cols[isc]!r} is not a number") from e
        docs.append({"schema": "pairs", "id": cols[iid] if iid is not None else f"{path.stem}-{n}",
                     "text_1": cols[i1], "text_2": cols[i2], "label": score})
    return docs


def read_qa_tsv(path: str | Path) -> list[dict]:
    path = Path(path)
    docs = []
    for n, cols in _rows(path):
        if n == 1 and cols[0].lower() in ("id", "index"):
            continue
        if len(cols) < 4 or cols[3].strip() not in ("yes", "no"):
            raise DataError(f"{path}:{n}: expected id<TAB>question<TAB>passage<TAB>yes|no")
        docs.append({"schema": "qa", "id": cols[0], "question": cols[1], "context": cols[2], "choices": ["yes", "no"],
                     "answer": [cols[3].strip()]})
    return docs


def _cohan_sentences(sentences: list, path: Path, n: int, field: str) -> str:
    """The PubMed/arXiv long-document release's sentence lists, joined; abstract sentences come as `<S> ... </S>`."""
    if not isinstance(sentences, list) or not all(isinstance(x, str) for x in sentences):
        raise DataError(f"{path}:{n}: {field} is not a list of sentences")
    return " ".join(" ".join(re.sub(r"</?S>", " ", x).split()) for x in sentences if x.strip())


def read_summ_jsonl(path: str | Path) -> list[dict]:
    """{"id", "text", "summary"} per line, or the PubMed long-document release's own layout (Cohan et al. 2018:
    {"article_id", "article_text": [sentences], "abstract_text": ["<S> sentence </S>", ...], ...})."""
    path = Path(path)
    docs = []
    for n, r in iter_jsonl(path):
        if "article_text" in r and "abstract_text" in r:
            text = _cohan_sentences(r["article_text"], path, n, "article_text")
            summary = _cohan_sentences(r["abstract_text"], path, n, "abstract_text")
            doc_id = str(r.get("article_id", n))
        elif "text" in r and "summary" in r:
            text, summary, doc_id = r["text"], r["summary"], str(r.get("id", n))
        else:
            raise DataError(f"{path}:{n}: expected fields 'text' and 'summary', or 'article_text' and "
                            "'abstract_text' (the PubMed long-document release)")
        docs.append({"schema": "text", "id": doc_id, "text": text, "labels": [], "summary": summary})
    return docs


def read_summ_csv(path: str | Path, text_column: str = "dialogue", summary_column: str = "note",
                  id_column: str | None = "encounter_id") -> list[dict]:
    """A CSV with a header, one document per record (ACI-Bench's `train.csv`: dataset, encounter_id, dialogue,
    note); the id is `id_column`, else the record number."""
    path = Path(path)
    header, records = read_csv_table(path, {"text_column": text_column, "summary_column": summary_column,
                                            "id_column": id_column})
    i_text, i_sum = header.index(text_column), header.index(summary_column)
    i_id = header.index(id_column) if id_column is not None else None
    return [{"schema": "text", "id": cols[i_id].strip() if i_id is not None else str(n), "text": cols[i_text].strip(),
             "labels": [], "summary": cols[i_sum].strip()} for n, _, cols in records]


_PAIR_SUFFIXES = (".source", ".target", ".doi", ".id")


def _pair_lines(path: Path) -> list[str]:
    """A line-aligned file's lines, split on "\n" alone (a stray carriage return or form feed inside a document
    must not shift the alignment, as Python's universal newlines would), a trailing "\r" removed from each."""
    raw = read_bytes_as_utf8(path)
    lines = raw.split("\n")
    if lines and lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    return [x[:-1] if x.endswith("\r") else x for x in lines]


def read_summ_pair(path: str | Path) -> list[dict]:
    """Line-aligned `<split>.source` (texts) and `<split>.target` (summaries): `path` names either file or their
    common stem. Ids come from `<split>.doi` or `<split>.id` if one is there, else the line number. Files of
    different lengths, or an empty text or summary, are a DataError naming the file and line: in this layout one
    missing line shifts every pair after it."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in _PAIR_SUFFIXES else path
    source, target = stem.with_name(stem.name + ".source"), stem.with_name(stem.name + ".target")
    for f in (source, target):
        if not f.is_file():
            raise DataError(f"{f}: no such file (summ_pair reads {source.name} with {target.name} beside it)")
    texts, summaries = _pair_lines(source), _pair_lines(target)
    id_file = next((f for f in (stem.with_name(stem.name + ".doi"), stem.with_name(stem.name + ".id"))
                    if f.is_file()), None)
    ids = _pair_lines(id_file) if id_file is not None else [str(n) for n in range(1, len(texts) + 1)]
    for f, lines in ((target, summaries), (id_file, ids)):
        if f is not None and len(lines) != len(texts):
            raise DataError(f"{f}: {len(lines)} lines, but {source} has {len(texts)}; the files must be line-aligned")
    docs = []
    for n, (text, summary, doc_id) in enumerate(zip(texts, summaries, ids), 1):
        for f, value in ((source, text), (target, summary)):
            if not value.strip():
                raise DataError(f"{f}:{n}: empty line (expected one document per line)")
        docs.append({"schema": "text", "id": doc_id.strip() or str(n), "text": text.strip(), "labels": [],
                     "summary": summary.strip()})
    return docs
