"""Document classification corpora in their own releases: MTSamples' CSV and the i2b2/n2c2 XML files.

- classification_csv: a CSV with a header (Kaggle's `mtsamples.csv`: an unnamed index column, description,
  medical_specialty, sample_name, transcription, keywords; fields quoted, with commas and line breaks inside).
  `text_column` and `label_column` name the columns (MTSamples': transcription, medical_specialty), `label_sep`
  splits a multi-label column; the id is `id_column`, else the unnamed first column (pandas' index), else the row
  number. MTSamples writes its labels with a leading space (" Urology"), so labels are stripped; a row with an
  empty text (MTSamples has some) is kept and counted by the task builder (`texts_empty`), not turned into an
  instance.
- i2b2_2006_smoking: one XML file, `<ROOT><RECORD ID="..."><SMOKING STATUS="..."/><TEXT>...</TEXT></RECORD>`;
  the label is the status (CURRENT SMOKER, PAST SMOKER, NON-SMOKER, SMOKER, UNKNOWN).
- i2b2_2008_obesity: a directory with the record files (`*patient_records*.xml`: `<root><docs><doc id="..."><text>`)
  and the judgment files (`*standoff*.xml`: `<diseaseset><diseases source="intuitive|textual"><disease
  name="Asthma"><doc id="..." judgment="Y|N|Q|U"/>`). The labels of a record are the diseases judged present
  (`Y`) by `source` (intuitive by default, the challenge's main task). Judgment files are read in name order and a
  later judgment of the same record, disease and source replaces an earlier one (the training release corrects
  itself in `..._addendum*.xml`). A record with no judgment by `source` is an error: a judgment file is missing.
- nli4ct (SemEval-2024 Task 2): a statements file (`train.json`: {uuid: {Type: Single|Comparison, Section_id,
  Primary_id, Secondary_id, Statement, Label: Entailment|Contradiction}}) and the trial reports it names, one
  `<NCT id>.json` each in `trials` (the release's `CT json/` beside it: {"Clinical Trial ID", "Intervention",
  "Eligibility", "Results", "Adverse Events": [lines]}). The text is the named section of the primary trial (and of
  the secondary one for a comparison), then the statement; the label is whether the reports entail or contradict it.
- n2c2_2018_cohort: a directory of one XML file per patient, `<PatientMatching><TEXT>...</TEXT><TAGS><ABDOMINAL
  met="met"/>...</TAGS>`; the labels are the selection criteria met.
"""

from __future__ import annotations

from pathlib import Path

from mnlu_jax.data.schema import DataError, input_files, read_csv_table, read_json_object, read_xml_root


def _doc(doc_id: str, text: str, labels: list[str]) -> dict:
    return {"schema": "text", "id": doc_id, "text": text, "labels": labels}


def read_classification_csv(path: str | Path, text_column: str = "transcription",
                            label_column: str = "medical_specialty", id_column: str | None = None,
                            label_sep: str | None = None) -> list[dict]:
    path = Path(path)
    header, records = read_csv_table(path, {"text_column": text_column, "label_column": label_column,
                                            "id_column": id_column})
    i_text, i_label = header.index(text_column), header.index(label_column)
    i_id = header.index(id_column) if id_column is not None else 0 if header[0] == "" else None
    docs = []
    for n, line, cols in records:
        raw = cols[i_label]
        labels = [x.strip() for x in (raw.split(label_sep) if label_sep else [raw]) if x.strip()]
        if not labels:
            raise DataError(f"{path}:{line}: record {n}: empty {label_column!r}")
        docs.append(_doc(cols[i_id].strip() if i_id is not None else str(n), cols[i_text].strip(), labels))
    return docs


def read_i2b2_2006_smoking(path: str | Path) -> list[dict]:
    path = Path(path)
    docs = []
    for f in input_files(path, "*.xml", "i2b2 2006 smoking XML file"):
        for k, rec in enumerate(read_xml_root(f).iter("RECORD"), 1):
            smoking, text = rec.find("SMOKING"), rec.find("TEXT")
            if rec.get("ID") is None or smoking is None or smoking.get("STATUS") is None or text is None:
                raise DataError(f"{f}: RECORD {rec.get('ID', f'#{k}')}: expected an ID, <SMOKING STATUS=...> and "
                                "<TEXT>")
            docs.append(_doc(rec.get("ID"), (text.text or "").strip(), [smoking.get("STATUS").strip()]))
    if not docs:
        raise DataError(f"{path}: no <RECORD> elements")
    return docs


def read_i2b2_2008_obesity(path: str | Path, source: str = "intuitive") -> list[dict]:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: expected a directory holding *patient_records*.xml and *standoff*.xml files")
    texts: dict[str, str] = {}
    for f in input_files(path, "*patient_records*.xml", "record files"):
        for doc in read_xml_root(f).iter("doc"):
            doc_id = doc.get("id")
            if doc_id is None or doc.find("text") is None:
                raise DataError(f"{f}: a <doc> without an id or <text>")
            if doc_id in texts:
                raise DataError(f"{f}: record {doc_id} is also in another record file")
            texts[doc_id] = (doc.findtext("text") or "").strip()
    judged: dict[str, dict[str, str]] = {}
    sources = set()
    for f in input_files(path, "*standoff*.xml", "judgment files"):
        for diseases in read_xml_root(f).iter("diseases"):
            sources.add(diseases.get("source"))
            if diseases.get("source") != source:
                continue
            for disease in diseases.iter("disease"):
                for doc in disease.iter("doc"):
                    doc_id, judgment = doc.get("id"), doc.get("judgment")
                    if judgment not in ("Y", "N", "Q", "U"):
                        raise DataError(f"{f}: disease {disease.get('name')!r}, record {doc_id}: judgment "
                                        f"{judgment!r}; expected Y, N, Q or U")
                    if doc_id not in texts:
                        raise DataError(f"{f}: record {doc_id} is judged but is in no record file")
                    judged.setdefault(doc_id, {})[disease.get("name")] = judgment
    unjudged = [d for d in texts if d not in judged]
    if unjudged:
        raise DataError(f"{path}: {len(unjudged)} of {len(texts)} records have no {source!r} judgment (e.g. "
                        f"{unjudged[:3]}; sources found: {sorted(s for s in sources if s)}); is a judgment file "
                        "(an addendum) missing?")
    return [_doc(d, texts[d], sorted(name for name, j in judged[d].items() if j == "Y")) for d in texts]


def read_n2c2_2018_cohort(path: str | Path) -> list[dict]:
    path = Path(path)
    docs = []
    for f in input_files(path, "*.xml", "n2c2 2018 cohort XML files"):
        root = read_xml_root(f)
        text, tags = root.find("TEXT"), root.find("TAGS")
        if text is None or tags is None:
            raise DataError(f"{f}: expected <TEXT> and <TAGS> under <{root.tag}>")
        labels = []
        for tag in tags:
            met = tag.get("met")
            if met not in ("met", "not met"):
                raise DataError(f"{f}: <{tag.tag} met={met!r}>; expected met or not met")
            if met == "met":
                labels.append(tag.tag)
        docs.append(_doc(f.stem, (text.text or "").strip(), labels))
    return docs


def read_nli4ct(path: str | Path, trials: str | Path | None = None) -> list[dict]:
    path = Path(path)
    statements = read_json_object(path, "an object of statements keyed by uuid")
    folder = Path(trials) if trials is not None else path.parent / "CT json"
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory of trial reports (`trials`; the release's 'CT json/')")
    reports: dict[str, dict] = {}

    def section(uuid: str, nct: str, name: str) -> str:
        if nct not in reports:
            report_file = folder / f"{nct}.json"
            if not report_file.is_file():
                raise DataError(f"{path}: statement {uuid}: no trial report {report_file}")
            reports[nct] = read_json_object(report_file, "a trial report object")
        lines = reports[nct].get(name)
        if not isinstance(lines, list):
            raise DataError(f"{folder / (nct + '.json')}: no section {name!r} (statement {uuid}); it has "
                            f"{sorted(reports[nct])}")
        return "\n".join(line.strip() for line in lines if line.strip())

    docs = []
    for uuid, st in statements.items():
        missing = [k for k in ("Type", "Section_id", "Primary_id", "Statement", "Label") if k not in st]
        if missing or st["Type"] not in ("Single", "Comparison") or (st["Type"] == "Comparison" and
                                                                     "Secondary_id" not in st):
            raise DataError(f"{path}: statement {uuid}: expected Type Single or Comparison (with Secondary_id), "
                            f"Section_id, Primary_id, Statement and Label; missing {missing or ['Secondary_id']}"
                            + (" (the unlabelled test file?)" if missing == ["Label"] else ""))
        if st["Label"] not in ("Entailment", "Contradiction"):
            raise DataError(f"{path}: statement {uuid}: Label {st['Label']!r}; expected Entailment or Contradiction")
        name = st["Section_id"]
        text = f"Primary trial, {name}:\n{section(uuid, st['Primary_id'], name)}"
        if st["Type"] == "Comparison":
            text += f"\n\nSecondary trial, {name}:\n{section(uuid, st['Secondary_id'], name)}"
        docs.append(_doc(uuid, f"{text}\n\nStatement: {st['Statement'].strip()}", [st["Label"]]))
    return docs
