"""IOB/CoNLL token files and the BLURB PICO TSV.

IOB layout (e.g. MTL-Bioinformatics-2016 `data/*-IOB/{train,devel,test}.tsv`): one token per line,
`token<TAB>tag` (or whitespace; the tag is the last column), a blank line between sentences, optional
`-DOCSTART-` lines. Tags are `B-Type`/`I-Type`/`O` (typed) or `B`/`I`/`O` (untyped; `default_type` names
them). An `I-` that does not continue an entity of its type starts a new one (IOB1 tolerance). The IOBES (BIOES)
and BILOU schemes are read too (MTL-Bioinformatics-2016 ships every corpus also as `*-IOBES/`): `S-`/`U-` is a
one-token entity, `E-`/`L-` ends the entity it continues, so both files of a corpus give the same entities.
Each sentence becomes one kb document whose text is the tokens joined by single spaces.

BLURB PICO: `-DOCSTART-` starts an abstract, lines `token<TAB>tag` with tags I-PAR / I-INT / I-OUT / O,
blank lines between sentences. Each abstract becomes one kb document; consecutive tokens with the same
I- tag form one span.
"""

from __future__ import annotations

from pathlib import Path

from mnlu_jax.data.schema import DataError, read_text

PICO_TYPES = {"PAR": "Participants", "INT": "Interventions", "OUT": "Outcomes"}
# tag letter -> role: IOB2/IOB1 (B, I), IOBES (E end, S single) and BILOU (L last, U unit) in one table
_SCHEME = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}


def _sentences(path: Path):
    """Yield (first line number, [(token, tag, line number)]) per sentence; `None` marks a -DOCSTART-."""
    sent, start = [], None
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if line.startswith("-DOCSTART-"):
            if sent:
                yield start, sent
                sent = []
            yield n, None
            continue
        if not line.strip():
            if sent:
                yield start, sent
            sent, start = [], None
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise DataError(f"{path}:{n}: expected 'token<TAB>tag', got {line!r}")
        if start is None:
            start = n
        sent.append((parts[0], parts[-1].strip(), n))
    if sent:
        yield start, sent


def _spans(tokens, path: Path, default_type: str | None, pico: bool):
    text_parts, offsets, pos = [], [], 0
    for tok, _, _ in tokens:
        offsets.append((pos, pos + len(tok)))
        text_parts.append(tok)
        pos += len(tok) + 1
    text = " ".join(text_parts)
    entities, cur = [], None
    for i, (tok, tag, n) in enumerate(tokens):
        if tag == "O":
            cur = None
            continue
        if pico:
            if not tag.startswith("I-") or tag[2:] not in PICO_TYPES:
                raise DataError(f"{path}:{n}: PICO tag {tag!r}; expected O or I-PAR/I-INT/I-OUT")
            bio, typ = "I", PICO_TYPES[tag[2:]]
        else:
            if tag in _SCHEME:
                bio, typ = _SCHEME[tag], default_type or "Entity"
            elif len(tag) > 2 and tag[1] == "-" and tag[0] in _SCHEME:
                bio, typ = _SCHEME[tag[0]], tag[2:]
            else:
                raise DataError(f"{path}:{n}: tag {tag!r}; expected O, B, I (or IOBES/BILOU's E, S, L, U), "
                                "alone or as <letter>-<type>")
        if bio in ("I", "E") and cur is not None and cur["type"] == typ:
            cur["offsets"][0][1] = offsets[i][1]
        else:
            cur = {"id": f"T{len(entities) + 1}", "type": typ, "offsets": [[offsets[i][0], offsets[i][1]]]}
            entities.append(cur)
        if bio in ("E", "S"):  # the entity ends here: a following I- starts a new one
            cur = None
    for e in entities:
        s, t = e["offsets"][0]
        e["text"] = [text[s:t]]
    return text, entities


def read_iob(path: str | Path, default_type: str | None = None, type_map: dict[str, str] | None = None) -> list[dict]:
    path = Path(path)
    docs = []
    for start, sent in _sentences(path):
        if sent is None:
            continue
        text, ents = _spans(sent, path, default_type, pico=False)
        for e in ents:
            e["type"] = (type_map or {}).get(e["type"], e["type"])
        docs.append({"schema": "kb", "id": f"{path.stem}-{start}", "text": text, "entities": ents,
                     "relations": [], "events": [], "attributes": [], "tokens": [t for t, _, _ in sent]})
    return docs


def read_pico_tsv(path: str | Path) -> list[dict]:
    path = Path(path)
    docs, cur, start = [], [], None

    def flush():
        if cur:
            toks = [t for s in cur for t in s]
            text, ents = _spans(toks, path, None, pico=True)
            docs.append({"schema": "kb", "id": f"{path.stem}-{start}", "text": text, "entities": ents,
                         "relations": [], "events": [], "attributes": [], "tokens": [t for t, _, _ in toks]})

    for n, sent in _sentences(path):
        if sent is None:
            flush()
            cur, start = [], n
            continue
        if start is None:
            start = n
        cur.append(sent)
    flush()
    return docs


def read_ebmnlp(path: str | Path, split: str = "test/gold", annotations: str = "aggregated/starting_spans") -> list[dict]:
    """EBM-NLP in its own release layout (`ebm_nlp_2_00/`):

        documents/<pmid>.tokens                     one token per line
        annotations/<annotations>/{participants,interventions,outcomes}/<split>/<pmid>.AGGREGATED.ann
                                                    one label per token line (0 = outside, non-zero = inside)
    The PMIDs are those with annotation files for `split` (`train` or `test/gold`). Each abstract becomes one kb
    document (tokens joined by spaces); consecutive non-zero tokens of an element form one span.
    """
    root = Path(path)
    kinds = {"participants": "Participants", "interventions": "Interventions", "outcomes": "Outcomes"}
    ann_dirs = {k: root / "annotations" / annotations / k / split for k in kinds}
    for k, d in ann_dirs.items():
        if not d.is_dir():
            raise DataError(f"{root}: expected EBM-NLP annotation directory {d}")
    pmids = sorted({p.name.split(".")[0] for p in ann_dirs["participants"].glob("*.ann")})
    if not pmids:
        raise DataError(f"{ann_dirs['participants']}: no .ann files")
    docs = []
    for pmid in pmids:
        tok_file = root / "documents" / f"{pmid}.tokens"
        if not tok_file.exists():
            raise DataError(f"{tok_file}: missing tokens for annotated PMID {pmid}")
        tokens = read_text(tok_file).split()
        offsets, pos = [], 0
        for t in tokens:
            offsets.append((pos, pos + len(t)))
            pos += len(t) + 1
        text = " ".join(tokens)
        ents = []
        for k, typ in kinds.items():
            ann = ann_dirs[k] / f"{pmid}.AGGREGATED.ann"
            if not ann.exists():
                continue
            labels = read_text(ann).split()
            if len(labels) != len(tokens):
                raise DataError(f"{ann}: {len(labels)} labels for {len(tokens)} tokens in {tok_file.name}")
            start = None
            for i, lab in enumerate(labels + ["0"]):
                if lab != "0" and start is None:
                    start = i
                elif lab == "0" and start is not None:
                    s, e = offsets[start][0], offsets[i - 1][1]
                    ents.append({"id": f"T{len(ents) + 1}", "type": typ, "offsets": [[s, e]], "text": [text[s:e]]})
                    start = None
        ents.sort(key=lambda e: e["offsets"][0][0])
        docs.append({"schema": "kb", "id": pmid, "text": text, "entities": ents, "relations": [], "events": [],
                     "attributes": [], "tokens": tokens})
    return docs
