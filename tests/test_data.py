"""Unified format (golden Table 1 renderings), readers on the shipped samples, bad input, masks and packing."""

import json
from pathlib import Path

import numpy as np
import pytest

from mnlu_jax.data import tasks as T
from mnlu_jax.data.build import run_build
from mnlu_jax.data.chat import ZEPHYR_TEMPLATE, render
from mnlu_jax.data.formats import READERS
from mnlu_jax.data.loader import make_dataset
from mnlu_jax.data.schema import DataError, read_instances
from mnlu_jax.data.tiny_tokenizer import instance_texts, train_tiny_tokenizer
from mnlu_jax.data.tokenize import tokenize_all, tokenize_instance

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"


def _user(inst):
    return next(m["content"] for m in inst.messages if m["role"] == "user")


# ------------------------------------------------------------------ golden renderings (Table 1)
def test_golden_ner():
    doc = {"id": "d1", "text": "Azotemia and infection after cisplatin.",
           "entities": [{"id": "T1", "type": "Disease", "offsets": [[0, 8]], "text": ["Azotemia"]},
                        {"id": "T2", "type": "Disease", "offsets": [[13, 22]], "text": ["infection"]}]}
    inst = T.ner_instance(doc, "demo", ["Disease", "Chemical"], seed=0)
    order = inst.options
    assert sorted(order) == ["Chemical", "Disease"]
    assert _user(inst) == ("Extract all relevant medical named entities from the medical text below. Focus on identifying "
                           f"following entities: {order[0]}, {order[1]}.\nMedical text: Azotemia and infection after cisplatin.")
    lines = dict(l.split(": ", 1) for l in inst.answer.split("\n"))
    assert lines == {"Disease": "Azotemia ... infection", "Chemical": "None"}
    assert inst.answer.split("\n")[0].startswith(order[0])  # lines follow the shuffled label order
    assert inst.messages[0]["role"] == "system" and inst.type == "events"


def test_golden_re_masked():
    doc = {"id": "7", "text": "@CHEMICAL$ inhibits @GENE$ .", "labels": ["CPR:4"]}
    inst = T.re_masked_instances([doc], "chemprot", "chemprot", seed=1)[0]
    head = ("What is the relation between the Chemical entity '@CHEMICAL$' and the Gene entity '@GENE$' from the "
            "medical text below?\nMedical text: @CHEMICAL$ inhibits @GENE$ .\nOptions:\n")
    assert _user(inst).startswith(head)
    opts = _user(inst)[len(head):].split("\n")
    assert opts == inst.options and len(opts) == 6 and opts[0].startswith("(A) ")
    assert inst.answer in opts and inst.answer.endswith("'@CHEMICAL$' downregulates or inhibits '@GENE$'.")
    assert inst.gold["labels"] == [inst.answer] and inst.gold["relation"] == "CPR:4"
    k = inst.options.index(inst.answer)
    assert inst.gold["option_labels"][k] == "CPR:4"
    assert inst.gold["option_keys"][k] == "'X' downregulates or inhibits 'Y'."


def test_golden_nli_sts_qa_dc():
    nli, skipped = T.nli_instances([{"id": "p", "premise": "He has a fever.", "hypothesis": "He is afebrile",
                                     "label": "contradiction"}], "mednli")
    assert skipped == 0
    assert _user(nli[0]).startswith("What is the relation between the premise and hypothesis? Premise: He has a fever. "
                                    "Hypothesis: He is afebrile.\nOptions:\n")
    assert nli[0].answer.endswith(") Contradicts")
    sts = T.sts_instances([{"id": "s", "text_1": "A b.", "text_2": "C d", "label": 0.2}], "biosses", "biosses")[0]
    assert _user(sts).startswith("How similar are the two sentences below? Sentence 1: A b. Sentence 2: C d.\nOptions:\n")
    assert sts.answer.endswith(") The two sentences are on different topics (score 0).") and len(sts.options) == 5
    qa = T.qa_instances([{"id": "q", "question": "Is LPS a microbial product?", "context": "LPS is ...",
                          "choices": ["yes", "no", "maybe"], "answer": ["yes"]}], "pubmedqa")[0]
    assert _user(qa).startswith("Is LPS a microbial product?\nMedical text: LPS is ...\nOptions:\n")
    dc = T.dc_instances([{"id": "h", "text": "x", "labels": ["Cellular energetics", "Inducing angiogenesis"]}], "hoc",
                        T.L.HOC_HALLMARKS, "cancer hallmark")[0]
    assert _user(dc).startswith("Which options best describe cancer hallmark from the medical text below?\nMedical text: x")
    assert len(dc.answer.split("\n")) == 2 and dc.type == "MultiQA" and len(dc.options) == 10


def test_golden_event_tasks():
    docs = READERS["brat"](SAMPLES / "brat" / "sdoh")
    inst = T.event_instances(docs, "sdoh", label_map={"Alcohol": "Alcohol use", "Tobacco": "Tobacco use"})
    eae = next(i for i in inst if i.task == "EAE" and "Amount" in i.id)
    assert _user(eae).startswith("What is the Amount attribute of the ")
    assert " - Amount: " in eae.answer
    eac = next(i for i in inst if i.task == "EAC")
    assert " - Status: (" in eac.answer and "Options:\n(A) " in _user(eac)


def test_flag_attributes_are_asked_yes_or_no(tmp_path):
    # BioNLP-ST's modifications: `M1 Negation E2` has no value; asked only of flagged events, every question would
    # have the one option "True"
    (tmp_path / "d.txt").write_text("IL6 expression rose but TNF expression did not rise and MYC binding fell .")
    (tmp_path / "d.a1").write_text("T1\tProtein 0 3\tIL6\nT2\tProtein 24 27\tTNF\nT3\tProtein 56 59\tMYC\n")
    (tmp_path / "d.a2").write_text("T4\tGene_expression 4 14\texpression\nT5\tGene_expression 28 38\texpression\n"
                                   "T6\tBinding 60 67\tbinding\nE1\tGene_expression:T4 Theme:T1\n"
                                   "E2\tGene_expression:T5 Theme:T2\nE3\tBinding:T6 Theme:T3\nM1\tNegation E2\n")
    eac = [i for i in T.event_instances(READERS["brat"](tmp_path), "ge") if i.task == "EAC"]
    assert len(eac) == 2 and sorted(i.answer.split(": ")[1][4:] for i in eac) == ["No", "Yes"]
    negated = next(i for i in eac if i.answer.endswith("Yes"))
    assert negated.id == "ge-d-E2-Negation" and "'expression'" in _user(negated)
    assert sorted(o[4:] for o in negated.options) == ["No", "Yes"]


def test_shuffle_is_seeded_and_per_instance():
    doc = {"id": "7", "text": "@DRUG$ and @DRUG$ .", "labels": ["DDI-int"]}
    a = T.re_masked_instances([doc], "ddi", "ddi", seed=3)[0]
    b = T.re_masked_instances([doc], "ddi", "ddi", seed=3)[0]
    assert a.options == b.options
    orders = {tuple(T.re_masked_instances([dict(doc, id=str(k))], "ddi", "ddi", seed=3)[0].options) for k in range(20)}
    assert len(orders) > 5  # options really are shuffled per instance


def test_label_expansion_and_medtuned_style():
    doc = {"id": "g", "text": "GeneRIF text", "entities": [{"id": "T1", "type": "GENERIF", "offsets": [[0, 7]], "text": ["GeneRIF"]}]}
    inst = T.ner_instance(doc, "x", ["GENERIF"])
    assert "Gene reference into a function (function of a gene)" in _user(inst)
    docs = READERS["iob"](SAMPLES / "iob" / "disease" / "test.tsv", default_type="Disease")
    d = next(d for d in docs if d["entities"])
    mt = T.ner_instances([d], "ncbi", ["Disease"], style="medtuned")[0]
    assert mt.messages[0]["content"].startswith("### Instruction:\n") and "### Input:\n" in mt.messages[0]["content"]
    first = d["entities"][0]["text"][0].split()[0]
    assert f"{first} : B" in mt.answer and " : O" in mt.answer


def test_ner_shots_differ():
    docs = READERS["iob"](SAMPLES / "iob" / "disease" / "train.tsv", default_type="Disease")
    shots = T.ner_shots(docs, "ncbi", ["Disease"], seed=0, label_map=None)
    assert len(shots) == 2 and shots[0][1] != shots[1][1]
    inst = T.ner_instance(docs[0], "ncbi", ["Disease"], shots=shots)
    assert T.NER_FORMAT_EXPLANATION in _user(inst) and "Example 2:" in _user(inst)


# ------------------------------------------------------------------ readers and bad input
def test_every_reader_on_samples():
    cases = {"iob": SAMPLES / "iob/jnlpba/train.tsv", "pico_tsv": SAMPLES / "pico/test.tsv", "brat": SAMPLES / "brat/ade",
             "bioc": SAMPLES / "bioc", "pubtator": SAMPLES / "pubtator/bc5cdr_sample.txt",
             "i2b2_2010": SAMPLES / "i2b2_2010", "i2b2_2012": SAMPLES / "i2b2_2012",
             "pubmedqa": SAMPLES / "pubmedqa/ori_pqal.json", "nli_jsonl": SAMPLES / "nli/mednli_test.jsonl",
             "bionli_csv": SAMPLES / "nli/bionli_sample.csv", "pubmed_pico": SAMPLES / "pubmed_pico/PICO_train.txt",
             "blue_re": SAMPLES / "blue_re/gad_test.tsv", "classification_tsv": SAMPLES / "hoc/test.tsv",
             "hoc_tsv": SAMPLES / "hoc/test_blue_form.tsv",
             "sts_tsv": SAMPLES / "sts/biosses_test.tsv", "qa_tsv": SAMPLES / "bioasq/test.tsv",
             "summ_jsonl": SAMPLES / "summ/pubmedsum_sample.jsonl", "ebmnlp": SAMPLES / "ebmnlp",
             "chemprot_tsv": SAMPLES / "chemprot", "classification_csv": SAMPLES / "dc/mtsamples_sample.csv",
             "i2b2_2006_smoking": SAMPLES / "dc/i2b2_2006_smoking_sample.xml",
             "i2b2_2008_obesity": SAMPLES / "dc/i2b2_2008_obesity", "n2c2_2018_cohort": SAMPLES / "dc/n2c2_2018_cohort",
             "nli4ct": SAMPLES / "dc/nli4ct/train.json", "euadr_csv": SAMPLES / "euadr",
             "pico_data": SAMPLES / "pico_data/annotations/train/PICO-annos-crowdsourcing-agg.json",
             "i2b2_2014_deid": SAMPLES / "i2b2_2014_deid", "i2b2_2006_deid": SAMPLES / "i2b2_2006_deid",
             "summ_csv": SAMPLES / "summ/aci_bench_sample.csv", "summ_pair": SAMPLES / "summ/cdsr/train.source",
             "i2b2_2009_medication": SAMPLES / "i2b2_2009_medication",
             "ner_jsonlines": SAMPLES / "ner_jsonlines/train.genia.jsonlines",
             "i2b2_2011_coref": SAMPLES / "i2b2_2011_coref", "hf_dataset": SAMPLES / "dc/trialstop_sample.jsonl"}
    assert set(cases) == set(READERS)
    for name, path in cases.items():
        docs = READERS[name](path)
        assert docs, name
        for d in docs:
            for e in d.get("entities", []):
                assert " ".join(d["text"][s:t] for s, t in e["offsets"]) == " ".join(e["text"]), (name, e)
    pq = READERS["pubmedqa"](SAMPLES / "pubmedqa/ori_pqal.json", ground_truth=SAMPLES / "pubmedqa/test_ground_truth.json")
    assert len(pq) == len(json.loads((SAMPLES / "pubmedqa/test_ground_truth.json").read_text()))
    ebm = READERS["ebmnlp"](SAMPLES / "ebmnlp")
    assert {e["type"] for e in ebm[0]["entities"]} == {"Participants", "Interventions", "Outcomes"}
    i12 = READERS["i2b2_2012"](SAMPLES / "i2b2_2012")  # 1-based offsets detected
    assert i12[0]["entities"][0]["text"][0] in i12[0]["text"]
    drugprot = READERS["chemprot_tsv"](SAMPLES / "drugprot")  # DrugProt's four-column relations
    assert {e["type"] for d in drugprot for e in d["entities"]} == {"CHEMICAL", "GENE"}
    assert all(len(d["relations"]) == 1 for d in drugprot)


def test_clinical_document_classification_in_the_releases_formats(tmp_path):
    import shutil
    import xml.etree.ElementTree as ET

    # MTSamples (Kaggle CSV): quoted transcriptions with commas and line breaks, labels with a leading space
    mts = READERS["classification_csv"](SAMPLES / "dc/mtsamples_sample.csv")
    assert len(mts) == 12 and mts[0]["id"] == "0" and mts[0]["labels"] == ["Cardiology"]
    assert "\nPLAN:,  Start" in mts[0]["text"] and [d["id"] for d in mts if not d["text"]] == ["7"]
    from mnlu_jax.data.build import DatasetSpec, dataset_instances

    spec = DatasetSpec(name="mts", reader="classification_csv", path=str(SAMPLES / "dc/mtsamples_sample.csv"),
                       task="DC", subject="the medical specialty", multi_label=False)
    inst, notes = dataset_instances(spec, 0, "mnlu", SAMPLES)
    assert len(inst) == 11 and notes["texts_empty"] == 1  # the row without a transcription is counted, not asked
    bad = tmp_path / "m.csv"
    bad.write_text(',description,specialty,transcription\n0,a,Cardiology,"x,\ny"\n1,b,Neurology\n')
    with pytest.raises(DataError, match=r"m\.csv:1: no column 'medical_specialty' \(label_column\)"):
        READERS["classification_csv"](bad)
    with pytest.raises(DataError, match=r"m\.csv:4: record 2 \(ending on this line\) has 3 fields, the header 4"):
        READERS["classification_csv"](bad, label_column="specialty")
    long_note = tmp_path / "long.csv"  # longer than csv's default field limit (128 KiB), which is restored after
    long_note.write_text('id,note,dx\n1,"' + "x" * 200_000 + '",A;B\n')
    docs = READERS["classification_csv"](long_note, text_column="note", label_column="dx", id_column="id",
                                         label_sep=";")
    assert len(docs[0]["text"]) == 200_000 and docs[0]["labels"] == ["A", "B"] and docs[0]["id"] == "1"
    import csv

    assert csv.field_size_limit() == 131072
    # i2b2 2006 smoking: one file of RECORDs
    smoking = READERS["i2b2_2006_smoking"](SAMPLES / "dc/i2b2_2006_smoking_sample.xml")
    assert len(smoking) == 8 and smoking[0]["labels"] == ["CURRENT SMOKER"] and "one pack" in smoking[0]["text"]
    (tmp_path / "s.xml").write_text('<ROOT><RECORD ID="9"><TEXT>x</TEXT></RECORD></ROOT>')
    with pytest.raises(DataError, match=r"s\.xml: RECORD 9: expected an ID, <SMOKING STATUS=\.\.\.> and <TEXT>"):
        READERS["i2b2_2006_smoking"](tmp_path / "s.xml")
    # i2b2 2008 obesity: records and judgments apart; a later (addendum) judgment replaces an earlier one
    folder = SAMPLES / "dc/i2b2_2008_obesity"
    obesity = {d["id"]: d for d in READERS["i2b2_2008_obesity"](folder)}
    addendum = ET.parse(folder / "obesity_standoff_annotations_sample_addendum.xml").getroot()
    asthma6 = addendum.find(".//doc").get("judgment")
    assert ("Asthma" in obesity["6"]["labels"]) == (asthma6 == "Y") and ("asthma" in obesity["6"]["text"]) == (
        asthma6 == "Y")
    for d in obesity.values():  # every label is judged present and named in the record
        assert all(w in d["text"].lower() for w in [{"CAD": "coronary", "OSA": "apnea"}.get(x, x.lower())
                                                    for x in d["labels"]])
    partial = tmp_path / "obesity"
    shutil.copytree(folder, partial)
    assert READERS["i2b2_2008_obesity"](partial, source="intuitive")
    with pytest.raises(DataError, match=r"6 of 6 records have no 'textual' judgment .*sources found: \['intuitive'\]"):
        READERS["i2b2_2008_obesity"](partial, source="textual")
    (partial / "obesity_standoff_annotations_sample.xml").unlink()
    (partial / "obesity_standoff_annotations_sample_addendum.xml").unlink()
    with pytest.raises(DataError, match=r"obesity: no judgment files"):
        READERS["i2b2_2008_obesity"](partial)
    # n2c2 2018 cohort: one XML per patient; the labels are the criteria met
    cohort = READERS["n2c2_2018_cohort"](SAMPLES / "dc/n2c2_2018_cohort")
    assert len(cohort) == 5 and all(set(d["labels"]) <= {"ABDOMINAL", "ENGLISH", "HBA1C", "DRUG-ABUSE"} for d in cohort)
    assert any(not d["labels"] for d in cohort) and cohort[0]["text"].startswith("Record date:")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "1.xml").write_text('<PatientMatching><TEXT>x</TEXT><TAGS><ABDOMINAL met="maybe"/></TAGS>'
                                          "</PatientMatching>")
    with pytest.raises(DataError, match=r"1\.xml: <ABDOMINAL met='maybe'>; expected met or not met"):
        READERS["n2c2_2018_cohort"](tmp_path / "c")
    # SemEval-2024 Task 2 (NLI4CT): statements and the trial reports in "CT json/" beside them
    nli = {d["id"]: d for d in READERS["nli4ct"](SAMPLES / "dc/nli4ct/train.json")}
    assert len(nli) == 6 and nli["s4"]["labels"] == ["Entailment"] and nli["s2"]["labels"] == ["Contradiction"]
    assert nli["s4"]["text"].startswith("Primary trial, Results:\nOutcome Measurement:\nResponse rate")
    assert "\n\nSecondary trial, Results:\n" in nli["s4"]["text"] and "Secondary trial" not in nli["s1"]["text"]
    assert nli["s4"]["text"].endswith("\n\nStatement: The secondary trial enrolled more participants than the primary "
                                      "trial.")
    release = tmp_path / "nli4ct"
    shutil.copytree(SAMPLES / "dc/nli4ct", release)
    statements = json.loads((release / "train.json").read_text())
    unlabelled = {k: {f: v for f, v in st.items() if f != "Label"} for k, st in statements.items()}
    (release / "test.json").write_text(json.dumps(unlabelled))
    with pytest.raises(DataError, match=r"test\.json: statement s1: .*missing \['Label'\] \(the unlabelled test"):
        READERS["nli4ct"](release / "test.json")
    report = release / "CT json" / f"{statements['s1']['Primary_id']}.json"
    report.write_text(json.dumps({k: v for k, v in json.loads(report.read_text()).items() if k != "Intervention"}))
    with pytest.raises(DataError, match=r"\.json: no section 'Intervention' \(statement s1\)"):
        READERS["nli4ct"](release / "train.json")
    report.unlink()
    with pytest.raises(DataError, match=r"train\.json: statement s1: no trial report .*CT json"):
        READERS["nli4ct"](release / "train.json")


def test_offset_mismatch_names_file_and_line(tmp_path):
    (tmp_path / "a.txt").write_text("Aspirin caused rash.")
    (tmp_path / "a.ann").write_text("T1\tDrug 0 7\tAspirin\nT2\tADE 15 19\trash\nT3\tADE 8 14\tcaused it\n")
    with pytest.raises(DataError, match=r"a\.ann:3: span .*'caused'.*'caused it'"):
        READERS["brat"](tmp_path)


def test_bad_inputs(tmp_path):
    bad = tmp_path / "x.tsv"
    bad.write_text("Aspirin\tB-Chemical\ncauses\tX-Weird\n")
    with pytest.raises(DataError, match=r"x\.tsv:2: tag 'X-Weird'"):
        READERS["iob"](bad)
    trunc = tmp_path / "t.tsv"
    trunc.write_text("Aspirin\n")
    with pytest.raises(DataError, match=r"t\.tsv:1: expected 'token<TAB>tag'"):
        READERS["iob"](trunc)
    with pytest.raises(DataError, match="unknown relation label 'CPR:7'"):
        T.re_masked_instances([{"id": "1", "text": "@CHEMICAL$ x @GENE$", "labels": ["CPR:7"]}], "chemprot", "chemprot")
    with pytest.raises(DataError, match="unknown label"):
        T.dc_instances([{"id": "1", "text": "x", "labels": ["Nope"]}], "hoc", T.L.HOC_HALLMARKS, "cancer hallmark")
    pt = tmp_path / "p.txt"
    pt.write_text("1|t|Aspirin works.\n1|a|Yes.\n1\t0\t7\tAspirn\tChemical\tC1\n")
    with pytest.raises(DataError, match=r"p\.txt:3: span"):
        READERS["pubtator"](pt)
    js = tmp_path / "n.jsonl"
    js.write_text('{"sentence1": "a", "sentence2": "b", "gold_label": "entailment"}\n{"sentence1": "a"\n')
    with pytest.raises(DataError, match=r"n\.jsonl:2: invalid JSON"):
        READERS["nli_jsonl"](js)


def _ents(docs):
    return [[(e["type"], e["offsets"], e["text"]) for e in d["entities"]] for d in docs]


def test_iobes_and_bilou_give_the_iob_entities(tmp_path):
    # MTL-Bioinformatics-2016 ships every corpus as *-IOB and *-IOBES; both must read to the same entities
    toks = ["Low", "dose", "aspirin", "and", "vitamin", "K", "lowered", "pain", "."]
    iob = ["O", "O", "B-Chem", "O", "B-Chem", "I-Chem", "O", "B-Dis", "O"]
    iobes = ["O", "O", "S-Chem", "O", "B-Chem", "E-Chem", "O", "S-Dis", "O"]
    bilou = ["O", "O", "U-Chem", "O", "B-Chem", "L-Chem", "O", "U-Dis", "O"]
    docs = {}
    for name, tags in {"iob": iob, "iobes": iobes, "bilou": bilou}.items():
        (tmp_path / f"{name}.tsv").write_text("\n".join(f"{t}\t{g}" for t, g in zip(toks, tags)) + "\n")
        docs[name] = READERS["iob"](tmp_path / f"{name}.tsv")
    assert _ents(docs["iob"]) == _ents(docs["iobes"]) == _ents(docs["bilou"])
    assert [e[2] for e in _ents(docs["iob"])[0]] == [["aspirin"], ["vitamin K"], ["pain"]]
    # an entity ended by E- is not continued by a following I- of the same type
    (tmp_path / "e.tsv").write_text("vitamin\tB-Chem\nK\tE-Chem\nzinc\tI-Chem\n")
    assert [e["text"] for e in READERS["iob"](tmp_path / "e.tsv")[0]["entities"]] == [["vitamin K"], ["zinc"]]
    (tmp_path / "u.tsv").write_text("aspirin\tS\n")  # untyped, like B/I with default_type
    assert READERS["iob"](tmp_path / "u.tsv", default_type="Chemical")[0]["entities"][0]["type"] == "Chemical"
    (tmp_path / "pos.tsv").write_text("Aspirin\tNN\n")  # a POS-tagged file is not NER
    with pytest.raises(DataError, match=r"pos\.tsv:1: tag 'NN'; expected O, B, I \(or IOBES"):
        READERS["iob"](tmp_path / "pos.tsv")


def test_blue_tsvs_written_by_csv_writer_are_unquoted(tmp_path):
    # BLUE wrote its TSVs with csv.writer: a sentence holding a tab or a quote is wrapped in quotes, inner quotes
    # doubled (its BioSSES dev file has such a row); a tab-split reader took the wrong columns or kept the quotes
    import csv
    s1, s2 = 'Loss of "X" drove growth.', "Cells grew\tfast after loss of X."
    with open(tmp_path / "sts.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["", "genre", "sentence1", "sentence2", "score"])  # pandas' unnamed index column first
        w.writerow([0, "GENRE", s1, s2, "1.4"])
        w.writerow([1, "GENRE", "A b.", "C d.", "3.0"])
    docs = READERS["sts_tsv"](tmp_path / "sts.tsv")
    assert [(d["id"], d["text_1"], d["text_2"], d["label"]) for d in docs] == [("0", s1, s2, 1.4),
                                                                              ("1", "A b.", "C d.", 3.0)]
    with open(tmp_path / "re.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "sentence", "label"])
        w.writerow(["d1.T1.T2", 'The "@CHEMICAL$" blocks @GENE$.', "CPR:4"])
    assert [(d["id"], d["text"], d["labels"]) for d in READERS["blue_re"](tmp_path / "re.tsv")] == [
        ("d1.T1.T2", 'The "@CHEMICAL$" blocks @GENE$.', ["CPR:4"])]
    # GLUE's STS-B is not quoted: a file with a quote outside a quoted field keeps every quote as text, even where
    # two columns would read as one quoted field
    (tmp_path / "glue.tsv").write_text('index\tsentence1\tsentence2\tscore\n0\t"Oh, so good!\tSo bad!"\t1.0\n'
                                       '1\t"A b."\tHe said "no" twice.\t2.0\n')
    assert [(d["text_1"], d["text_2"]) for d in READERS["sts_tsv"](tmp_path / "glue.tsv")] == [
        ('"Oh, so good!', 'So bad!"'), ('"A b."', 'He said "no" twice.')]
    # a stray tab is an error naming the line, not a shifted column
    (tmp_path / "bad.tsv").write_text("\tsentence1\tsentence2\tscore\n0\tA b.\tC\td.\t1.0\n")
    with pytest.raises(DataError, match=r"bad\.tsv:2: 5 columns, the header has 4"):
        READERS["sts_tsv"](tmp_path / "bad.tsv")
    # BioBERT's GAD train files: sentence<TAB>label, no index, no header
    (tmp_path / "gad.tsv").write_text("@GENE$ variants raise @DISEASE$ risk .\t1\n@GENE$ and @DISEASE$ .\t0\n")
    assert [(d["id"], d["labels"]) for d in READERS["blue_re"](tmp_path / "gad.tsv")] == [("gad-1", ["1"]),
                                                                                         ("gad-2", ["0"])]
    (tmp_path / "mixed.tsv").write_text("1\t@GENE$ x @DISEASE$ .\t1\n@GENE$ y @DISEASE$ .\t0\n")
    with pytest.raises(DataError, match=r"mixed\.tsv:2: .* got 2 column\(s\) after rows of 3"):
        READERS["blue_re"](tmp_path / "mixed.tsv")


def test_bionlp_shared_task_a1_a2_layout(tmp_path):
    # GENIA GE / SeeDev / BB ship .txt + .a1 (entities) + .a2 (triggers, events); the reader used to want .ann only.
    # A span across a line break is written with a space in the one-line text column.
    text = "Aspirin blocked\nCOX two in the gut.\n"
    (tmp_path / "d1.txt").write_text(text)
    (tmp_path / "d1.a1").write_text("T1\tChemical 0 7\tAspirin\nT2\tProtein 16 19;20 23\tCOX two\n"
                                    "T3\tTissue 31 34\tgut\n")
    (tmp_path / "d1.a2").write_text("T4\tNegative_regulation 8 15\tblocked\n"
                                    "E1\tNegative_regulation:T4 Theme:T2 Cause:T1\n"
                                    # SeeDev: no trigger
                                    "E2\tIs_Localized_In Functional_Molecule:T2 Target_Tissue:T3\n"
                                    "E3\tRegulates Agent:T1 Target:T2 Site:T3\n")
    (tmp_path / "d2.txt").write_text("Zinc.\n")
    (tmp_path / "d2.a1").write_text("T1\tChemical 0 4\tZinc\n")  # a test-set document: no .a2
    docs = READERS["brat"](tmp_path)
    assert [d["id"] for d in docs] == ["d1", "d2"] and docs[0]["entities"][1]["text"] == ["COX", "two"]
    assert [(e["id"], e["trigger"]) for e in docs[0]["events"]] == [("E1", "T4"), ("E2", None), ("E3", None)]
    ev = T.event_instances(docs, "ge")
    assert {i.task for i in ev} == {"ETE", "EAE"} and not any("E2" in i.id or "E3" in i.id for i in ev)
    inst, counts = T.re_kb_instances(docs, "seedev", negative_ratio=0)
    assert [i.gold["relation"] for i in inst] == ["Is_Localized_In"] and counts["events_not_binary"] == 1
    (tmp_path / "d1.a2").write_text("E1\tNegative_regulation:T9 Theme:T2\n")
    with pytest.raises(DataError, match=r"d1\.a2:1: event E1 refers to unknown annotation T9"):
        READERS["brat"](tmp_path / "d1.a1")
    (tmp_path / "d1.a2").write_text("T4\tNegative_regulation 8 14\tblocked\n")
    with pytest.raises(DataError, match=r"d1\.a2:1: span"):
        READERS["brat"](tmp_path)


def test_pubtator_mention_text_with_quotes_written_as_spaces(tmp_path):
    # NCBI-disease's train file gives one mention's quote marks as spaces in the text column; any other difference
    # (a letter, a shifted offset) is still an error
    (tmp_path / "n.txt").write_text('7|t|Febrile seizures " plus " in kids.\n7|a|None.\n'
                                    '7\t0\t25\tFebrile seizures   plus  \tSpecificDisease\tD1\n')
    assert READERS["pubtator"](tmp_path / "n.txt")[0]["entities"][0]["text"] == ['Febrile seizures " plus "']
    (tmp_path / "m.txt").write_text('7|t|Febrile seizures " plus " in kids.\n7|a|None.\n'
                                    '7\t1\t26\tebrile seizures   plus  i\tSpecificDisease\tD1\n')
    with pytest.raises(DataError, match=r"m\.txt:3: span"):
        READERS["pubtator"](tmp_path / "m.txt")


def _bioc_doc(doc_id, passages, relations, ann_infons="identifier"):
    """A BioC XML document: passages [(offset, text, [(id, type, concept, offset, length, text)])]."""
    out = f"<document><id>{doc_id}</id>"
    for off, text, anns in passages:
        out += f"<passage><offset>{off}</offset><text>{text}</text>"
        for aid, typ, concept, o, n, t in anns:
            out += (f'<annotation id="{aid}"><infon key="type">{typ}</infon><infon key="{ann_infons}">{concept}</infon>'
                    f'<location offset="{o}" length="{n}"/><text>{t}</text></annotation>')
        out += "</passage>"
    return out + relations + "</document>"


def _bioc_file(path, *docs):
    path.write_text('<?xml version="1.0"?><collection><source>test</source>' + "".join(docs) + "</collection>")
    return path


def test_bioc_concept_relations_in_the_biored_and_bc5cdr_layouts(tmp_path):
    title, abstract = "Zinc and rash.", "Zinc lotion eased the rash in two boys."
    off = len(title) + 1
    anns = [[("0", "Chemical", "C9", 0, 4, "Zinc"), ("1", "Disease", "D7", 9, 4, "rash")],
            [("2", "Chemical", "C9", off, 4, "Zinc"), ("3", "Disease", "D7,D8", off + 22, 4, "rash")]]
    # BioRED: entity1/entity2 infons naming concept ids, a novelty flag, comma-joined identifiers
    biored = _bioc_doc("1", [(0, title, anns[0]), (off, abstract, anns[1])],
                       '<relation id="R0"><infon key="entity1">C9</infon><infon key="entity2">D8</infon>'
                       '<infon key="novel">No</infon><infon key="type">Negative_Correlation</infon></relation>'
                       '<relation id="R1"><infon key="entity1">C9</infon><infon key="entity2">D404</infon>'
                       '<infon key="type">Association</infon></relation>')
    docs = READERS["bioc"](_bioc_file(tmp_path / "biored.xml", biored))
    assert docs[0]["relations"] == [{"id": "R0", "type": "Negative_Correlation", "arg1": "0", "arg2": "3"}]
    # D404: no mention carries it; kept aside and counted by the task builder, not dropped
    assert docs[0]["unresolved_relations"] == [{"id": "R1", "type": "Association", "concept1": "C9",
                                                "concept2": "D404"}]
    inst, counts = T.re_kb_instances(docs, "biored", ["Negative_Correlation", "Association"], negative_ratio=0.0)
    assert len(inst) == 1 and counts == {"relations_unresolved": 1, "relations_not_on_entities": 0,
                                         "pairs_ambiguous": 0, "events_not_binary": 0}
    # a relation on something that is not an entity mention (a BRAT event) is counted, not turned into a pair
    on_event = [{**docs[0], "relations": docs[0]["relations"] + [{"id": "R5", "type": "Association",
                                                                  "arg1": "E1", "arg2": "0"}]}]
    inst, counts = T.re_kb_instances(on_event, "biored", ["Negative_Correlation", "Association"], negative_ratio=0.0)
    assert len(inst) == 1 and counts["relations_not_on_entities"] == 1
    # the same document as BioC JSON
    js = {"documents": [{"id": "1", "passages": [
        {"offset": o, "text": t, "annotations": [
            {"id": a, "infons": {"type": ty, "identifier": c}, "text": x, "locations": [{"offset": lo, "length": n}]}
            for a, ty, c, lo, n, x in an]} for (o, t), an in zip([(0, title), (off, abstract)], anns)],
        "relations": [{"id": "R0", "infons": {"entity1": "C9", "entity2": "D8", "type": "Negative_Correlation"}}]}]}
    (tmp_path / "biored.json").write_text(json.dumps(js))
    assert READERS["bioc"](tmp_path / "biored.json")[0]["relations"] == docs[0]["relations"]
    # BioRED's release names its files Train.BioC.XML / Train.BioC.JSON: a directory of them reads too
    release = tmp_path / "BioRED"
    release.mkdir()
    (release / "Dev.BioC.JSON").write_text(json.dumps(js))
    (release / "Dev.BioC.XML").write_text((tmp_path / "biored.xml").read_text())
    assert [d["relations"] for d in READERS["bioc"](release)] == [docs[0]["relations"]] * 2
    with pytest.raises(DataError, match=r"Train\.BioC\.JSON: no such BioC file or directory"):
        READERS["bioc"](release / "Train.BioC.JSON")
    # BC5CDR: concept ids under MESH, the type under "relation", one infon per argument keyed by an entity type
    bc5 = _bioc_doc("2", [(0, title, anns[0]), (off, abstract, anns[1])],
                    '<relation id="R0"><infon key="relation">CID</infon><infon key="Chemical">C9</infon>'
                    '<infon key="Disease">D7</infon></relation>', ann_infons="MESH")
    d = READERS["bioc"](_bioc_file(tmp_path / "bc5.xml", bc5))[0]
    assert d["relations"] == [{"id": "R0", "type": "CID", "arg1": "0", "arg2": "1"}]
    assert d["entities"][3]["concept"] == "D7,D8"
    bad = _bioc_doc("3", [(0, title, anns[0])], '<relation id="R9"><infon key="type">CID</infon>'
                    '<infon key="Gene">G1</infon></relation>')
    with pytest.raises(DataError, match=r"bad\.xml: document 3, relation R9: expected two nodes, infons entity1"):
        READERS["bioc"](_bioc_file(tmp_path / "bad.xml", bad))
    node = _bioc_doc("4", [(0, title, anns[0])], '<relation id="R1"><infon key="type">x</infon>'
                     '<node refid="0" role="A"/><node refid="7" role="B"/></relation>')
    with pytest.raises(DataError, match=r"document 4, relation R1: node refid '7' is not an annotation id"):
        READERS["bioc"](_bioc_file(tmp_path / "node.xml", node))


def test_bioc_passage_offsets_counting_escapes_are_repaired_with_a_warning(tmp_path, caplog):
    # BC5CDR's BioC release counts "&apos;" as 6 characters in the next passage's offset, its annotations as 1
    title = "Crohn's disease after zinc."
    abstract = "A boy took zinc and got Crohn's disease."
    real = len(title) + 1
    crohn = "Crohn&apos;s disease"
    anns = [("0", "Disease", "D1", 0, 15, crohn), ("1", "Chemical", "C1", real + 11, 4, "zinc"),
            ("2", "Disease", "D1", real + 24, 15, crohn)]
    doc = _bioc_doc("5", [(0, title.replace("'", "&apos;"), anns[:1]),
                          (real + 5, abstract.replace("'", "&apos;"), anns[1:])], "")
    with caplog.at_level("WARNING"):
        d = READERS["bioc"](_bioc_file(tmp_path / "cdr.xml", doc))[0]
    assert d["text"] == title + " " + abstract
    assert [e["text"] for e in d["entities"]] == [["Crohn's disease"], ["zinc"], ["Crohn's disease"]]
    assert "document 5: passage declared at offset 33 placed at 28" in caplog.text
    assert "its offset counts the XML escapes" in caplog.text and d["passages_moved"] == 1
    # annotations that match neither placement stay an error naming the annotation
    zinc_off_by_one = [("1", "Chemical", "C1", real + 12, 4, "zinc")]
    off_by_one = _bioc_doc("6", [(0, title, anns[:1]), (real, abstract, zinc_off_by_one)],
                           '<relation id="R0"><infon key="type">x</infon><node refid="0" role="A"/>'
                           '<node refid="1" role="B"/></relation>')
    with pytest.raises(DataError, match=r"document 6, annotation 1: span \[\[40, 44\]\] is 'inc ' in the text"):
        READERS["bioc"](_bioc_file(tmp_path / "bad.xml", off_by_one))
    # bad_spans=skip leaves it out, counted, and moves the relation that names it aside
    with caplog.at_level("WARNING"):
        d = READERS["bioc"](tmp_path / "bad.xml", bad_spans="skip")[0]
    assert d["skipped_annotations"] == 1 and [e["id"] for e in d["entities"]] == ["0"]
    assert d["relations"] == [] and d["unresolved_relations"][0]["id"] == "R0"
    assert "annotation 1" in caplog.text and "skipped: bad_spans=skip" in caplog.text
    # tmVar's BioC release: the offset counts "&gt;" and two "&quot;" (3 + 2 x 5 characters more than the text), and
    # the abstract has no annotation to place it by; a writer that escapes only & < > (ElementTree) counts "&gt;"
    tm_title, tm_abstract = 'The "A>G" change.', "No other change was seen."
    esc = tm_title.replace('"', "&quot;").replace(">", "&gt;")
    for offset, text_xml in ((len(tm_title) + 1 + 13, esc), (len(tm_title) + 1 + 3, tm_title.replace(">", "&gt;"))):
        doc = _bioc_doc("7", [(0, text_xml, [("0", "DNAMutation", "c|SUB|A|1|G", 5, 3, "A&gt;G")]),
                              (offset, tm_abstract, [])], "", ann_infons="DNAMutation")
        d = READERS["bioc"](_bioc_file(tmp_path / "tmvar.xml", doc))[0]
        assert d["text"] == tm_title + " " + tm_abstract and d["passages_moved"] == 1
        # tmVar and GNormPlus key the concept id by the annotation's type
        assert d["entities"][0]["concept"] == "c|SUB|A|1|G"
    # a gap that the escapes do not explain, with nothing to place the passage by, is kept as the file says
    doc = _bioc_doc("8", [(0, esc, []), (len(tm_title) + 1 + 7, tm_abstract, [])], "")
    d = READERS["bioc"](_bioc_file(tmp_path / "gap.xml", doc))[0]
    assert d["text"] == tm_title + " " * 8 + tm_abstract and d["passages_moved"] == 0


def test_bioc_bc5cdr_individual_mentions_of_composites_are_dropped_and_counted(tmp_path):
    # BC5CDR BioC: a composite mention, then each part as an IndividualMention (one discontinuous, one one
    # character off as in the gold file); its PubTator release and mention scorer have only the composite
    from mnlu_jax.data.build import DatasetSpec, dataset_instances

    text = "Renal and hepatic failure after cisplatin."
    assert text[0:25] == "Renal and hepatic failure" and text[32:41] == "cisplatin"
    ann = ('<annotation id="{}"><infon key="type">{}</infon>{}<infon key="MESH">{}</infon>{}<text>{}</text>'
           '</annotation>')
    role = '<infon key="CompositeRole">{}</infon>'.format
    anns = (ann.format("0", "Disease", role("CompositeMention"), "D1|D2", '<location offset="0" length="25"/>',
                       "Renal and hepatic failure")
            + ann.format("1", "Disease", role("IndividualMention"), "D1",
                         '<location offset="0" length="5"/><location offset="18" length="7"/>', "Renal failure")
            + ann.format("2", "Disease", role("IndividualMention"), "D2", '<location offset="11" length="15"/>',
                         "hepatic failure")
            + ann.format("3", "Chemical", "", "C1", '<location offset="32" length="9"/>', "cisplatin"))
    rels = ('<relation id="R0"><infon key="relation">CID</infon><infon key="Chemical">C1</infon>'
            '<infon key="Disease">D2</infon></relation>'
            '<relation id="R1"><infon key="type">x</infon><node refid="3" role="A"/><node refid="2" role="B"/>'
            '</relation>')
    doc = f"<document><id>9</id><passage><offset>0</offset><text>{text}</text>{anns}</passage>{rels}</document>"
    path = _bioc_file(tmp_path / "cdr.xml", doc)
    d = READERS["bioc"](path)[0]
    assert [e["id"] for e in d["entities"]] == ["0", "3"] and d["individual_mentions_dropped"] == 2
    # the concept relation goes to the composite mention (D1|D2); the node relation on a dropped part is set aside
    assert [(r["type"], r["arg1"], r["arg2"]) for r in d["relations"]] == [("CID", "3", "0")]
    assert [r["id"] for r in d["unresolved_relations"]] == ["R1"]
    spec = DatasetSpec(name="cdr", reader="bioc", path=str(path), task="NER")
    inst, notes = dataset_instances(spec, 0, "mnlu", tmp_path)
    assert notes["individual_mentions_dropped"] == 2
    assert inst[0].gold["entities"] == {"Disease": ["Renal and hepatic failure"], "Chemical": ["cisplatin"]}
    # "keep" reads the parts as entities: the off-by-one part is then an error naming it
    with pytest.raises(DataError, match=r"cdr\.xml: document 9, annotation 2: span \[\[11, 26\]\]"):
        READERS["bioc"](path, individual_mentions="keep")
    kept = READERS["bioc"](path, individual_mentions="keep", bad_spans="skip")[0]
    assert [e["text"] for e in kept["entities"]] == [["Renal and hepatic failure"], ["Renal", "failure"],
                                                      ["cisplatin"]]
    with pytest.raises(ValueError, match="individual_mentions: expected 'drop' or 'keep'"):
        READERS["bioc"](path, individual_mentions="no")
    # BioC JSON carries the same infon
    loc = lambda o, n: {"offset": o, "length": n}  # noqa: E731
    js = {"documents": [{"id": "9", "passages": [{"offset": 0, "text": text, "annotations": [
        {"id": "0", "infons": {"type": "Disease", "MESH": "D1|D2"}, "locations": [loc(0, 25)],
         "text": "Renal and hepatic failure"},
        {"id": "1", "infons": {"type": "Disease", "CompositeRole": "IndividualMention", "MESH": "D1"},
         "locations": [loc(0, 5), loc(18, 7)], "text": "Renal failure"}]}]}]}
    (tmp_path / "cdr.json").write_text(json.dumps(js))
    d = READERS["bioc"](tmp_path / "cdr.json")[0]
    assert [e["id"] for e in d["entities"]] == ["0"] and d["individual_mentions_dropped"] == 1


def test_chemprot_and_drugprot_release_layout(tmp_path):
    from mnlu_jax.data.build import DatasetSpec, dataset_instances

    title, abstract = "Aspirin and COX1.", "Aspirin inhibits COX1; ethanol and PTGS2 were also measured."
    text = f"{title}\t{abstract}"  # the releases' offsets count the tab
    spans = [("Aspirin", 0), ("COX1", 0), ("Aspirin", 18), ("COX1", 18), ("ethanol", 18), ("PTGS2", 18)]
    offs = [(text.index(m, k), text.index(m, k) + len(m)) for m, k in spans]
    types = ["CHEMICAL", "GENE-Y", "CHEMICAL", "GENE-Y", "CHEMICAL", "GENE-N"]
    split = tmp_path / "chemprot_training"
    split.mkdir()
    (split / "chemprot_training_abstracts.tsv").write_text(f"11\t{title}\t{abstract}\n")
    (split / "chemprot_training_entities.tsv").write_text("".join(
        f"11\tT{i}\t{t}\t{s}\t{e}\t{m}\n" for i, ((m, _), t, (s, e)) in enumerate(zip(spans, types, offs), 1)))
    (split / "chemprot_training_relations.tsv").write_text(
        "11\tCPR:4\tY \tINHIBITOR\tArg1:T3\tArg2:T4\n11\tCPR:1\tN \tPART-OF\tArg1:T5\tArg2:T6\n")
    (split / "chemprot_training_gold_standard.tsv").write_text("11\tCPR:4\tArg1:T3\tArg2:T4\n")
    d = READERS["chemprot_tsv"](split)[0]
    assert d["text"] == f"{title} {abstract}" and [e["text"] for e in d["entities"]][3] == ["COX1"]
    assert [(r["type"], r["name"], r["evaluated"], r["arg1"], r["arg2"]) for r in d["relations"]] == [
        ("CPR:4", "INHIBITOR", True, "T3", "T4"), ("CPR:1", "PART-OF", False, "T5", "T6")]
    gold = READERS["chemprot_tsv"](split, relations="chemprot_training_gold_standard.tsv")[0]
    assert [(r["type"], r["arg1"]) for r in gold["relations"]] == [("CPR:4", "T3")]
    # evaluated_only: the other groups are left out and counted, and their pairs may be drawn as no-relation
    spec = DatasetSpec(name="chemprot", reader="chemprot_tsv", path=str(split), task="RE",
                       reader_options={"evaluated_only": True}, negative_ratio=5)
    inst, notes = dataset_instances(spec, 0, "mnlu", tmp_path)
    assert notes["relations_not_evaluated"] == 1
    gold_inst = next(i for i in inst if i.gold["relation"] == "CPR:4")
    assert gold_inst.answer.endswith("'Aspirin' downregulates or inhibits 'COX1'.")
    # negatives only between the types the relations join, chemical first: never chemical-chemical or gene-gene
    # and never the two names of a related pair (Aspirin and COX1 in the title), and each pair of names once
    def negatives(inst):
        return sorted(_user(i).split(" from the medical text")[0].split("between the ")[1] for i in inst
                      if i.gold["relation"] == "none")

    # only chemical -> GENE-Y is joined once the CPR:1 relation is left out
    assert negatives(inst) == ["Chemical entity 'ethanol' and the Gene (normalizable) entity 'COX1'"]
    spec.reader_options = {}
    inst, notes = dataset_instances(spec, 0, "mnlu", tmp_path)
    assert negatives(inst) == ["Chemical entity 'Aspirin' and the Gene (not normalizable) entity 'PTGS2'",
                               "Chemical entity 'ethanol' and the Gene (normalizable) entity 'COX1'"]
    # bad rows name the file and line
    rel = split / "chemprot_training_relations.tsv"
    rel.write_text("11\tCPR:4\tY\tINHIBITOR\tArg1:T3\tArg2:T9\n")
    with pytest.raises(DataError, match=r"chemprot_training_relations\.tsv:1: entity T9 is not in document 11"):
        READERS["chemprot_tsv"](split)
    rel.write_text("11\tCPR:4\tY\tINHIBITOR\tArg2:T3\tArg1:T4\n")
    with pytest.raises(DataError, match=r"relations\.tsv:1: expected arguments 'Arg1:<entity id>'"):
        READERS["chemprot_tsv"](split)
    rel.write_text("11\tCPR:4\tArg1:T3\tArg2:T4\n")
    with pytest.raises(DataError, match=r"relations\.tsv:1: evaluated_only needs ChemProt's six-column"):
        READERS["chemprot_tsv"](split, evaluated_only=True)
    (split / "chemprot_training_entities.tsv").write_text("11\tT1\tCHEMICAL\t0\t7\tAspirn\n")
    with pytest.raises(DataError, match=r"entities\.tsv:1: span \[\[0, 7\]\] is 'Aspirin'"):
        READERS["chemprot_tsv"](split)
    (split / "chemprot_training_entities.tsv").write_text("12\tT1\tCHEMICAL\t0\t7\tAspirin\n")
    with pytest.raises(DataError, match=r"entities\.tsv:1: PMID 12 is not in chemprot_training_abstracts\.tsv"):
        READERS["chemprot_tsv"](split)
    (split / "extra_relations.tsv").write_text("")
    with pytest.raises(DataError, match=r"several relations files \(chemprot_training_relations\.tsv, extra"):
        READERS["chemprot_tsv"](split)
    with pytest.raises(DataError, match=r"expected a ChemProt/DrugProt split directory"):
        READERS["chemprot_tsv"](split / "chemprot_training_abstracts.tsv")


def test_summarization_release_layouts(tmp_path):
    aci = READERS["summ_csv"](SAMPLES / "summ/aci_bench_sample.csv")  # ACI-Bench: dialogue -> note
    assert [d["id"] for d in aci] == ["D2N900", "D2N901", "D2N902"]
    assert aci[0]["text"].startswith("[doctor] hi , how") and "\n[patient]" in aci[0]["text"]
    assert aci[0]["summary"].startswith("CHIEF COMPLAINT\n\n")
    with pytest.raises(DataError, match=r"aci_bench_sample\.csv:1: no column 'transcript' \(text_column\)"):
        READERS["summ_csv"](SAMPLES / "summ/aci_bench_sample.csv", text_column="transcript")
    pubmed = READERS["summ_jsonl"](SAMPLES / "summ/pubmed_long_sample.txt")  # the long-document release's layout
    assert pubmed[0]["id"] == "PMC9000" and "<S>" not in pubmed[0]["summary"]
    assert pubmed[0]["summary"].endswith(". adverse events were rare .") and pubmed[0]["text"].endswith("improved .")
    (tmp_path / "x.jsonl").write_text('{"article_text": "one string", "abstract_text": []}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:1: article_text is not a list of sentences"):
        READERS["summ_jsonl"](tmp_path / "x.jsonl")
    (tmp_path / "y.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"y\.jsonl:1: expected fields 'text' and 'summary', or 'article_text'"):
        READERS["summ_jsonl"](tmp_path / "y.jsonl")


def test_summarization_line_aligned_pairs(tmp_path):
    cdsr = READERS["summ_pair"](SAMPLES / "summ/cdsr/train.source")  # CDSR's .source / .target / .doi
    assert [d["id"] for d in cdsr] == ["10.1002/14651858.CD900000", "10.1002/14651858.CD900001.pub2",
                                       "10.1002/14651858.CD900002"]
    assert cdsr[1]["text"].startswith("Background: Asthma") and cdsr[1]["summary"].startswith("We found 7 studies.")
    for name in ("train", "train.target", "train.doi"):  # the stem or any of the files names the split
        assert READERS["summ_pair"](SAMPLES / "summ/cdsr" / name) == cdsr
    # split on "\n" only: a form feed or a lone carriage return inside a document keeps its line; CRLF ends a line
    (tmp_path / "a.source").write_bytes(b"one\x0cpage\r\ntwo\rlines\r\n")
    (tmp_path / "a.target").write_text("s1\ns2\n")
    docs = READERS["summ_pair"](tmp_path / "a.source")
    assert [(d["id"], d["text"], d["summary"]) for d in docs] == [("1", "one\x0cpage", "s1"), ("2", "two\rlines", "s2")]
    (tmp_path / "a.target").write_text("s1\n")
    with pytest.raises(DataError, match=r"a\.target: 1 lines, but .*a\.source has 2; the files must be line-aligned"):
        READERS["summ_pair"](tmp_path / "a")
    (tmp_path / "a.target").write_text("s1\n\n")
    with pytest.raises(DataError, match=r"a\.target:2: empty line"):
        READERS["summ_pair"](tmp_path / "a")
    with pytest.raises(DataError, match=r"b\.source: no such file \(summ_pair reads b\.source with b\.target"):
        READERS["summ_pair"](tmp_path / "b.target")


def test_nested_ner_jsonlines(tmp_path):
    # Yu et al.'s GENIA release: sentence token indices, end inclusive, a protein nested in a DNA/RNA mention
    docs = READERS["ner_jsonlines"](SAMPLES / "ner_jsonlines/train.genia.jsonlines")
    assert [d["id"] for d in docs] == ["ge/train/0001", "ge/train/0002", "ge/train/0003", "ge/train/0004"]
    d = docs[0]
    assert d["text"].startswith("BRCA1 promoter activity was measured in macrophages . Levels of BRCA1 mRNA rose")
    assert [(e["type"], e["text"][0]) for e in d["entities"]] == [
        ("DNA", "BRCA1 promoter"), ("protein", "BRCA1"), ("cell_type", "macrophages"), ("RNA", "BRCA1 mRNA"),
        ("protein", "BRCA1"), ("cell_line", "U937 cells")]
    assert d["entities"][3]["offsets"] == [[d["text"].index("BRCA1 mRNA"), d["text"].index("BRCA1 mRNA") + 10]]
    inst = T.ner_instances(docs, "genia", ["DNA", "RNA", "protein", "cell_line", "cell_type"])[0]
    assert inst.gold["entities"]["Protein"] == ["BRCA1", "BRCA1"]  # both nested mentions are asked for
    # DyGIE++'s layout: document token indices, relations between two mentions by their spans
    (tmp_path / "d.jsonl").write_text(json.dumps({
        "doc_key": "x", "sentences": [["a", "b", "."], [], ["c", "d", "e", "."]],
        "ner": [[[0, 0, "Task"]], [], [[3, 4, "Method"], [5, 5, "Task"]]],
        "relations": [[], [], [[3, 4, 5, 5, "USED-FOR"]]]})
        + "\n")
    (x,) = READERS["ner_jsonlines"](tmp_path / "d.jsonl")
    assert [(e["id"], e["type"], e["text"][0]) for e in x["entities"]] == [("T1", "Task", "a"), ("T2", "Method", "c d"),
                                                                          ("T3", "Task", "e")]
    assert x["relations"] == [{"id": "R1", "type": "USED-FOR", "arg1": "T2", "arg2": "T3"}]
    bad = {"sentence": ('{"sentences": [["a", "b"]], "ners": [[[1, 2, "X"]]]}',
                        r"e\.jsonl:2: sentence 0: mention \[1, 2, 'X'\]; expected \[start, end, type\] with 0 <= start "
                        r"<= end <= 1"),
           "document": ('{"sentences": [["a"], ["b"]], "ner": [[], [[0, 0, "X"]]]}',
                        r"sentence 1: mention \[0, 0, 'X'\]; expected .* with 1 <= start <= end <= 1"),
           "key": ('{"sentences": [["a"]], "entities": []}', r"expected \"ners\" \(biaffine NER: sentence token "
                                                             r"indices\) or \"ner\" .*one list per sentence \(1\)"),
           "tokens": ('{"sentences": "a b", "ners": []}', r"expected \"sentences\": a list of token lists"),
           "again": ('{"doc_key": "k", "sentences": [], "ners": []}',
                     r"e\.jsonl:2: document 'k' again \(first on line 1\)"),
           "relation": ('{"sentences": [["a", "b"]], "ner": [[[0, 0, "X"]]], "relations": [[[0, 0, 1, 1, "R"]]]}',
                        r"relation \[0, 0, 1, 1, 'R'\]; expected \[start1, end1, start2, end2, type\] between two")}
    for name, (line, message) in bad.items():
        (tmp_path / "e.jsonl").write_text('{"doc_key": "k", "sentences": [["a"]], "ners": [[]]}\n' + line + "\n")
        with pytest.raises(DataError, match=message):
            READERS["ner_jsonlines"](tmp_path / "e.jsonl")


def test_bionli_csv_in_the_authors_layout(tmp_path):
    import collections
    import csv
    import re

    from mnlu_jax.data.build import DatasetSpec, dataset_instances

    docs = READERS["bionli_csv"](SAMPLES / "nli/bionli_sample.csv")
    rows = list(csv.DictReader((SAMPLES / "nli/bionli_sample.csv").open(encoding="utf-8")))
    assert len(docs) == len(rows) and docs[0]["id"] == "91000-1"
    assert docs[0]["labels"] == ["entailment", "contradiction"]
    by_category = collections.Counter(d["category"] for d in docs)
    assert by_category["pos"] == 4 and by_category["SET"] >= 1 and len(by_category) >= 5
    for d, r in zip(docs, rows):  # tags gone, spacing and punctuation as the sentence had them
        assert "<" not in d["hypothesis"] and "  " not in d["hypothesis"] and d["premise"] == r["supp_set"]
        assert d["label"] == ("entailment" if r["label_cat"] == "pos" else "contradiction")
        assert d["hypothesis"].endswith(" mg/kg.") and d["hypothesis"] == re.sub(r"<\w+> | <\w+>", "", r["conclusion"])
    pos = {d["premise"]: d["hypothesis"] for d in docs if d["category"] == "pos"}
    tag_swaps = [d for d in docs if d["category"] == "SET"]
    assert all(d["left_out"] == "tag_swaps_left_out" and d["hypothesis"] == pos[d["premise"]] for d in tag_swaps)
    kept = READERS["bionli_csv"](SAMPLES / "nli/bionli_sample.csv", strip_entity_tags=False)
    assert not any("left_out" in d for d in kept) and kept[0]["hypothesis"].startswith("<re> ")
    spec = DatasetSpec(name="bionli", reader="bionli_csv", path=str(SAMPLES / "nli/bionli_sample.csv"), task="NLI")
    inst, notes = dataset_instances(spec, 0, "mnlu", SAMPLES)
    assert len(inst) == len(docs) - len(tag_swaps) and notes["tag_swaps_left_out"] == len(tag_swaps)
    assert notes["documents"] == len(inst) and notes["skipped_unlabeled"] == 0
    for i in inst:  # asked as a two-way choice, the gold one of the two
        assert sorted(o.split(" ", 1)[1] for o in i.options) == ["Contradicts", "Entails"] and i.answer in i.options
    assert sum(i.answer.endswith("Entails") for i in inst) == 4
    from mnlu_jax.data.build import LEFT_OUT, stats_markdown

    assert "tag_swaps_left_out" in LEFT_OUT and "tag swaps left out" in stats_markdown(
        {"datasets": {"bionli": {"task": "NLI", "instances": len(inst), "labels": {}, **notes}}, "tasks": {}})
    bad = tmp_path / "b.csv"
    for text, message in [
        ("supp_set,conclusion,label_cat,pmid\nA premise.,A conclusion.,pos,1\nA premise.,Other.,neutral,1\n",
         r"b\.csv:3: label_cat 'neutral'; expected 'pos' or a perturbation category"),
        ("premise,conclusion,label_cat,pmid\nA premise.,A conclusion.,pos,1\n",
         r"b\.csv:1: no column 'supp_set' \(premise\)"),
        ("supp_set,conclusion,label_cat,pmid\nA premise.,<re> <er>,pos,1\n",
         r"b\.csv:2: record 1 has an empty supp_set or conclusion")]:
        bad.write_text(text)
        with pytest.raises(DataError, match=message):
            READERS["bionli_csv"](bad)
    with pytest.raises(DataError, match=r"label 'neutral' in the label space \['entailment', 'contradiction'\]"):
        T.nli_instances([{"id": "x", "premise": "a", "hypothesis": "b", "label": "neutral",
                          "labels": ["entailment", "contradiction"]}], "bionli")


def test_pubmed_pico_sentence_labels(tmp_path):
    from mnlu_jax.data.build import DatasetSpec, dataset_instances

    path = SAMPLES / "pubmed_pico/PICO_train.txt"
    docs = READERS["pubmed_pico"](path)
    assert [d["id"] for d in docs] == ["24000000", "24000017", "24000034", "24000051"]
    lines = [ln.split("|", 2) for ln in path.read_text().splitlines() if "|" in ln]
    assert sum(len(d["text"].split()) for d in docs) == sum(len(t.split()) for _, _, t in lines)
    first = docs[0]
    assert [e["type"] for e in first["entities"]] == ["Participants", "Interventions", "Outcomes"]
    assert first["text"].startswith("To assess whether ")
    assert first["entities"][0]["text"][0].startswith("Adults aged @")
    assert [e["type"] for e in docs[1]["entities"]] == ["Participants", "Outcomes"]  # no I line in that abstract
    spec = DatasetSpec(name="pubmed_pico", reader="pubmed_pico", path=str(path), task="NER",
                       types=["Participants", "Interventions", "Outcomes"])
    inst, _ = dataset_instances(spec, 0, "mnlu", SAMPLES)
    assert len(inst) == 4 and all(i.task == "NER" for i in inst)  # one question per abstract, all three types
    gold = inst[1].gold["entities"]
    assert gold["Interventions"] == [] and gold["Participants"] == docs[1]["entities"][0]["text"]
    bad = tmp_path / "p.txt"
    for text, message in [
        ("###1\nP|Adults with @ | or more visits.\na line without its label\n",
         r"p\.txt:3: expected '<section heading>\|<label>\|<text>'"),
        ("P|text\n", r"p\.txt:1: a line before the first '###<PMID>' line"),
        ("###1\nA|x\n###1\nP|y\n", r"p\.txt:3: abstract 1 again \(first at line 1\)"),
        ("###1\nHEAD|p|lower-case labels\n",
         r"no line has a label among \['I', 'O', 'P'\] \(`label_types`\); its labels: \{'p': 1\}")]:
        bad.write_text(text)
        with pytest.raises(DataError, match=message):
            READERS["pubmed_pico"](bad)
    bad.write_text("###1\nP|Adults with @ | or more visits.\n")  # two fields, a '|' inside the text
    assert READERS["pubmed_pico"](bad)[0]["entities"][0]["text"] == ["Adults with @ | or more visits."]
    bad.write_text("###1\nHEAD|p|lower-case labels\n")
    assert READERS["pubmed_pico"](bad, label_types={"p": "Participants"})[0]["entities"][0]["type"] == "Participants"


def test_ner_jsonlines_sentence_records(tmp_path):
    # OneIE's layout (a public GENIA release, CNN_Nested_NER's preprocess/outputs/genia): one sentence per line,
    # end exclusive; consecutive lines of one doc_id make one document
    rows = [{"doc_id": "d1", "sent_id": "d1-0", "tokens": ["IL-2", "gene", "binds", "."],
             "entity_mentions": [{"start": 0, "end": 2, "entity_type": "DNA", "text": "IL-2 gene"},
                                 {"start": 0, "end": 1, "entity_type": "protein", "text": "IL-2"}]},
            {"doc_id": "d1", "sent_id": "d1-1", "tokens": ["T", "cells", "respond", "."],
             "entity_mentions": [{"id": "e1", "start": 0, "end": 2, "entity_type": "cell_type", "text": "T cells"},
                                 {"id": "e2", "start": 2, "end": 3, "entity_type": "X"}],
             "relation_mentions": [{"relation_type": "R", "arguments": [{"entity_id": "e1", "role": "Arg-1"},
                                                                        {"entity_id": "e2", "role": "Arg-2"}]}],
             "event_mentions": [{"event_type": "Response", "trigger": {"start": 2, "end": 3, "text": "respond"},
                                 "arguments": [{"entity_id": "e1", "role": "Theme"}]}]},
            {"doc_id": "d2", "tokens": ["None", "here"], "entity_mentions": []}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d1, d2 = READERS["ner_jsonlines"](tmp_path / "s.jsonl")
    assert (d1["id"], d1["text"], d2["id"], d2["entities"]) == ("d1", "IL-2 gene binds . T cells respond .", "d2", [])
    assert [(e["id"], e["type"], e["offsets"], e["text"]) for e in d1["entities"]] == [
        ("T1", "DNA", [[0, 9]], ["IL-2 gene"]), ("T2", "protein", [[0, 4]], ["IL-2"]),
        ("T3", "cell_type", [[18, 25]], ["T cells"]), ("T4", "X", [[26, 33]], ["respond"]),
        ("T5", "Response", [[26, 33]], ["respond"])]
    assert d1["relations"] == [{"id": "R1", "type": "R", "arg1": "T3", "arg2": "T4"}]
    assert d1["events"] == [{"id": "E1", "type": "Response", "trigger": "T5",
                             "arguments": [{"role": "Theme", "ref_id": "T3"}]}]
    ok = '{"doc_id": "k", "tokens": ["a", "b"], "entity_mentions": []}'
    bad = {"inclusive end": ('{"doc_id": "k", "tokens": ["a"], "entity_mentions": [{"start": 0, "end": 0, '
                             '"entity_type": "X"}]}', r"e\.jsonl:2: entity_mentions\[0\] .*expected \{\"start\", "
                                                    r"\"end\", \"entity_type\"\} with 0 <= start < end <= 1"),
           "text": ('{"tokens": ["a", "b"], "entity_mentions": [{"start": 0, "end": 1, "entity_type": "X", '
                    '"text": "b"}]}', r"tokens 0-1 are 'a', the mention says 'b'"),
           "apart": ('{"doc_id": "j", "tokens": []}\n' + ok, r"e\.jsonl:3: document 'k' again \(first on line 1\); "
                                                               r"expected each document's lines together"),
           "mixed": ('{"sentences": [["a"]], "ners": [[]]}', r"e\.jsonl:2: a document record .* in a file of "
                                                              r"sentence records"),
           "argument": ('{"tokens": ["a"], "entity_mentions": [], "relation_mentions": [{"relation_type": "R", '
                        '"arguments": [{"entity_id": "z"}]}]}', r"relation_mentions\[0\]: expected \"arguments\""),
           "tokens": ('{"tokens": "a b"}', r"e\.jsonl:2: expected \"tokens\": a list of strings")}
    for name, (line, message) in bad.items():
        (tmp_path / "e.jsonl").write_text(ok + "\n" + line + "\n")
        with pytest.raises(DataError, match=message):
            READERS["ner_jsonlines"](tmp_path / "e.jsonl")


def test_i2b2_2009_medication_entries(tmp_path):
    import shutil

    docs = {d["id"]: d for d in READERS["i2b2_2009_medication"](SAMPLES / "i2b2_2009_medication")}
    assert sorted(docs) == ["900101", "900102"]  # 900103 has no entries file: never annotated, not read
    d = docs["900101"]

    def spans(doc, typ):
        return [e["text"] for e in doc["entities"] if e["type"] == typ]

    assert spans(d, "Medication") == [["Aspirin"], ["Metoprolol"], ["heparin"]]  # annotation texts are lower-cased
    assert spans(d, "Reason") == [["hypertension"], ["anticoagulation"]]  # the token's full stop left out
    assert spans(d, "Mode") == [["p.o."], ["p.o."]]  # a full stop the annotation has stays
    rels = {(r["type"], r["arg1"], r["arg2"]) for r in d["relations"]}
    ids = {e["text"][0]: e["id"] for e in d["entities"]}
    assert ("has_reason", ids["heparin"], ids["anticoagulation"]) in rels and len(rels) == 8
    d = docs["900102"]
    assert spans(d, "Frequency") == [["twice daily", "once daily"], ["nightly"]]  # "..."-joined parts, ","-joined
    assert spans(d, "Reason") == [["atrial", "fibrillation"]]  # a range over a line end: one piece per line
    assert spans(d, "Duration") == [["three days"]]  # read after a stray third "|"
    from mnlu_jax.data.build import DatasetSpec, dataset_instances

    # records and entries in separate folders, as released; `entries` is relative to the mixer config like `path`
    (tmp_path / "records").mkdir()
    (tmp_path / "truth").mkdir()
    for f in (SAMPLES / "i2b2_2009_medication").iterdir():
        shutil.copy(f, tmp_path / ("truth" if "." in f.name else "records") / f.name)
    spec = DatasetSpec(name="med", reader="i2b2_2009_medication", path="records", task="NER",
                       reader_options={"entries": "truth"})
    inst, notes = dataset_instances(spec, 0, "mnlu", tmp_path)
    assert notes["documents"] == 2 and "Reason: atrial fibrillation" in inst[1].messages[-1]["content"]
    folder = tmp_path / "med"
    shutil.copytree(SAMPLES / "i2b2_2009_medication", folder)
    (folder / "900101.m").write_text('m="aspirin" 3:1 3:1||do="82 mg" 3:2 3:3\n')
    with pytest.raises(DataError, match=r"900101\.m:1: do: the tokens read '81 mg' in the text, the annotation "
                                        r"says '82 mg'"):
        READERS["i2b2_2009_medication"](folder)
    skipped = READERS["i2b2_2009_medication"](folder, bad_spans="skip")[0]
    assert skipped["skipped_annotations"] == 1 and spans(skipped, "Medication") == [["Aspirin"]]
    (folder / "900101.m").write_text('m="aspirin" 3:1||do="nm"\n')
    with pytest.raises(DataError, match=r"900101\.m:1: positions '3:1': expected L:T L:T pairs"):
        READERS["i2b2_2009_medication"](folder)
    (folder / "900101.m").write_text('m="aspirin" 3:1 3:9\n')
    with pytest.raises(DataError, match=r"900101\.m:1: m: position 3:1-3:9 is outside the text"):
        READERS["i2b2_2009_medication"](folder)
    (folder / "900101").unlink()
    with pytest.raises(DataError, match=r"900101\.m: no record 900101 \(or 900101\.txt\)"):
        READERS["i2b2_2009_medication"](folder)
    with pytest.raises(DataError, match=r"no entries files"):
        READERS["i2b2_2009_medication"](folder, entries=tmp_path)


def test_i2b2_2011_coreference_release(tmp_path):
    import shutil

    from mnlu_jax.data.build import DatasetSpec, dataset_instances

    docs = {d["id"]: d for d in READERS["i2b2_2011_coref"](SAMPLES / "i2b2_2011_coref")}  # README.txt is no record
    assert sorted(docs) == ["clinical-901", "report-902"]
    d = docs["clinical-901"]
    names = {e["id"]: e["text"][0] for e in d["entities"]}
    assert [(r["type"], names[r["arg1"]], names[r["arg2"]]) for r in d["relations"]] == [
        ("coref person", "a 67 year old man", "Mr. Doe"), ("coref person", "He", "a 67 year old man"),
        ("coref person", "His", "He"), ("coref problem", "His chest pain", "chest pain"),
        ("coref test", "The x-ray", "A chest x-ray")]  # each mention to the one before it, in text order
    assert docs["report-902"]["entities"][6]["text"] == ["Her dia-\nbetes"]  # a word broken over a line end
    inst, notes = dataset_instances(DatasetSpec(name="coref", reader="i2b2_2011_coref", path=str(SAMPLES /
                                                "i2b2_2011_coref"), task="RE"), 0, "mnlu", tmp_path)
    unrelated = [i.messages[1]["content"].split("\n")[0] for i in inst if i.gold["relation"] == "none"]
    assert len(inst) == 10 + 5 and len(unrelated) == 5  # no unrelated pair inside a chain: every person is in one
    assert not any("Person" in q or "Pronoun" in q or ("'chest pain'" in q and "'His chest pain'" in q)
                   for q in unrelated)
    broken = next(i for i in inst if i.gold["relation"] == "coref problem" and "dia-" in i.messages[1]["content"])
    assert "(" in broken.messages[1]["content"] and "'Her dia- betes' refers to the same medical problem as " \
        "'diabetes mellitus'." in broken.messages[1]["content"]
    ner, _ = dataset_instances(DatasetSpec(name="coref", reader="i2b2_2011_coref", path=str(SAMPLES /
                                           "i2b2_2011_coref"), task="NER"), 0, "mnlu", tmp_path)
    assert "Medical problem: diabetes mellitus ... Her dia- betes" in ner[1].messages[-1]["content"]
    # bad input: a span that does not read as its concept, a chain naming no concept, a record without chains
    tree = tmp_path / "tree"
    shutil.copytree(SAMPLES / "i2b2_2011_coref", tree)
    con = tree / "Beth_Train/concepts/clinical-901.txt.con"
    con.write_text(con.read_text().replace('c="he" 3:0 3:0', 'c="she" 3:0 3:0'))
    with pytest.raises(DataError, match=r"clinical-901\.txt\.con:4: tokens 3:0-3:0 are 'He' in the text, annotation "
                                        r"says 'she'"):
        READERS["i2b2_2011_coref"](tree)
    skipped = READERS["i2b2_2011_coref"](tree, bad_spans="skip")[0]
    assert skipped["skipped_annotations"] == 1 and len(skipped["relations"]) == 4  # the chain closes over "He"
    chains = tree / "Beth_Train/chains/clinical-901.txt.chains"
    chains.write_text('c="his" 3:7 3:7||c="man" 2:12 2:12||t="coref person"\n')
    with pytest.raises(DataError, match=r"clinical-901\.txt\.chains:1: mention 'man' 2:12 is not a concept of "
                                        r"clinical-901\.txt\.con"):
        READERS["i2b2_2011_coref"](tree, bad_spans="skip")
    chains.write_text('c="his" 3:7 3:7||coref person\n')
    with pytest.raises(DataError, match=r"chains:1: expected c=\"\.\.\.\" L:T L:T joined by \"\|\|\""):
        READERS["i2b2_2011_coref"](tree, bad_spans="skip")
    chains.unlink()
    with pytest.raises(DataError, match=r"clinical-901\.txt\.con: no chains file .* for record clinical-901"):
        READERS["i2b2_2011_coref"](tree)
    shutil.copytree(tree / "Partners_Train", tree / "copy")  # a tree unpacked twice reads once...
    assert [d["id"] for d in READERS["i2b2_2011_coref"](tree / "copy")] == ["report-902"]
    (tree / "copy/docs/report-902.txt").write_text("Another text .\n")  # ...but not two different records
    with pytest.raises(DataError, match=r"record report-902 again, and not as in"):
        READERS["i2b2_2011_coref"](tree)


def test_hf_dataset_reader(tmp_path, monkeypatch):
    import datasets

    from mnlu_jax.data.build import DatasetSpec, dataset_instances

    # NLI with a ClassLabel, saved with save_to_disk as a DatasetDict; -1 (no gold label) is counted as unlabelled
    nli = datasets.Dataset.from_dict(
        {"premise": ["p1", "p2", "p3"], "hypothesis": ["h1", "h2", "h3"], "label": [0, 2, -1]},
        features=datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])}))
    datasets.DatasetDict({"train": nli, "validation": nli.select([1])}).save_to_disk(str(tmp_path / "nli"))
    assert [d["label"] for d in READERS["hf_dataset"](tmp_path / "nli", schema="te")] == ["entailment",
                                                                                          "contradiction", "-"]
    (val,) = READERS["hf_dataset"](tmp_path / "nli", split="validation", schema="te")
    assert val == {"schema": "te", "id": "validation-0", "premise": "p2", "hypothesis": "h2", "label": "contradiction"}
    inst, notes = dataset_instances(DatasetSpec(name="nli", reader="hf_dataset", path="nli", task="NLI",
                                                reader_options={"schema": "te"}), 0, "mnlu", tmp_path)
    assert len(inst) == 2 and notes["skipped_unlabeled"] == 1
    # TrialStop's layout: a text and its list of label names, here as JSON lines; class indices as Parquet
    rows = [{"nct_id": "NCT0001", "text": "Slow accrual.", "label_descriptions": ["Insufficient_Enrollment"]},
            {"nct_id": "NCT0002", "text": "Sponsor decision; drug supply ended.",
             "label_descriptions": ["Business_Administrative", "Logistics_Resources"]}]
    (tmp_path / "stop.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    stop = READERS["hf_dataset"](tmp_path / "stop.jsonl")
    assert [(d["id"], d["labels"]) for d in stop] == [("NCT0001", ["Insufficient_Enrollment"]),
                                                     ("NCT0002", ["Business_Administrative", "Logistics_Resources"])]
    multi = datasets.Dataset.from_dict({"text": ["a", "b"], "labels": [[1], [0, 1]]}, features=datasets.Features(
        {"text": datasets.Value("string"), "labels": datasets.Sequence(datasets.ClassLabel(names=["x", "y"]))}))
    multi.to_parquet(str(tmp_path / "multi.parquet"))
    assert [d["labels"] for d in READERS["hf_dataset"](tmp_path / "multi.parquet")] == [["y"], ["x", "y"]]
    # STS pairs from a CSV, with the score column named
    (tmp_path / "sts.csv").write_text("s1,s2,similarity\nA man runs.,A person runs.,4.2\nA cat.,Rain.,0\n")
    sts = READERS["hf_dataset"](tmp_path / "sts.csv", schema="pairs",
                                columns={"text_1": "s1", "text_2": "s2", "label": "similarity"})
    assert [(d["text_1"], d["label"]) for d in sts] == [("A man runs.", 4.2), ("A cat.", 0.0)]
    # a Hub id goes to datasets.load_dataset (faked here: no network in tests) and through the mixer untouched
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        if name == "missing/set":
            raise ConnectionError("offline")
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    inst, notes = dataset_instances(DatasetSpec(
        name="trialstop", reader="hf_dataset", path="hub:opentargets/clinical_trial_reason_to_stop", task="DC",
        subject="the reasons the trial stopped"), 0, "mnlu", tmp_path)
    assert calls == [("opentargets/clinical_trial_reason_to_stop", None, "train")] and len(inst) == 2
    assert "Business or administrative reasons" in inst[1].messages[-1]["content"]
    with pytest.raises(DataError, match=r"hub:missing/set: could not load split 'test' from the Hugging Face Hub "
                                        r"\(ConnectionError: offline\)"):
        READERS["hf_dataset"]("hub:missing/set", split="test")
    with pytest.raises(DataError, match=r"path 'hub:a/b' names a Hub dataset, which only the 'hf_dataset' reader"):
        dataset_instances(DatasetSpec(name="x", reader="nli_jsonl", path="hub:a/b", task="NLI"), 0, "mnlu", tmp_path)
    monkeypatch.undo()
    # bad input names the file and what was expected
    with pytest.raises(DataError, match=r"nli: no split 'test'; it has \['train', 'validation'\]"):
        READERS["hf_dataset"](tmp_path / "nli", split="test", schema="te")
    with pytest.raises(DataError, match=r"stop\.jsonl: no column for \['premise', 'hypothesis', 'label'\].*its "
                                        r"columns: \['nct_id', 'text', 'label_descriptions'\]"):
        READERS["hf_dataset"](tmp_path / "stop.jsonl", schema="te")
    with pytest.raises(DataError, match=r"no column 'score' \(for label\)"):
        READERS["hf_dataset"](tmp_path / "sts.csv", schema="pairs", columns={"label": "score"})
    with pytest.raises(DataError, match=r"columns \['answer'\] are not fields of the 'text' schema"):
        READERS["hf_dataset"](tmp_path / "stop.jsonl", columns={"answer": "text"})
    with pytest.raises(DataError, match=r"sts\.csv \(train\) row 0: score 'A person runs\.'; expected a number"):
        READERS["hf_dataset"](tmp_path / "sts.csv", schema="pairs",
                              columns={"text_1": "s1", "text_2": "s1", "label": "s2"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: not a dataset written by save_to_disk"):
        READERS["hf_dataset"](tmp_path / "empty")
    with pytest.raises(DataError, match=r"x\.tsv: expected hub:<name>, a save_to_disk folder or a"):
        READERS["hf_dataset"](tmp_path / "x.tsv")


def test_hf_dataset_bigbio_kb(tmp_path):
    # BigBio's kb schema (what its loaders give for most corpora of the mix): passages with offsets, entities,
    # events with triggers, relations and coreference chains between entity ids
    title, abstract = "IL6 in sepsis.", "IL6 expression rose in patients. It was high in sepsis."
    text = f"{title} {abstract}"

    def at(word, start=0):
        i = text.index(word, start)
        return {"text": [word], "offsets": [[i, i + len(word)]]}

    norm = [{"db_name": "NCBIGene", "db_id": "3569"}]
    row = {"id": "0", "document_id": "PMID1",
           "passages": [{"id": "p1", "type": "title", "text": [title], "offsets": [[0, len(title)]]},
                        {"id": "p2", "type": "abstract", "text": [abstract], "offsets": [[len(title) + 1, len(text)]]}],
           "entities": [{"id": "T1", "type": "Gene", **at("IL6"), "normalized": norm},
                        {"id": "T2", "type": "Disease", **at("sepsis"), "normalized": []},
                        {"id": "T3", "type": "Gene", **at("IL6", 5), "normalized": []},
                        {"id": "T4", "type": "Gene", **at("It"), "normalized": []}],
           "events": [{"id": "E1", "type": "Gene_expression", "trigger": at("expression"),
                       "arguments": [{"role": "Theme", "ref_id": "T3"}]}],
           "relations": [{"id": "R1", "type": "Association", "arg1_id": "T1", "arg2_id": "T2", "normalized": []}],
           "coreferences": [{"id": "C1", "entity_ids": ["T4", "T3"]}]}
    (tmp_path / "kb.jsonl").write_text(json.dumps(row) + "\n")
    (doc,) = READERS["hf_dataset"](tmp_path / "kb.jsonl", schema="kb")
    assert doc["id"] == "PMID1" and doc["text"] == text
    ents = {e["id"]: e for e in doc["entities"]}
    assert ents["T1"]["concept"] == "NCBIGene:3569" and ents["T4"]["concept"] == ents["T3"]["concept"] == \
        "coreference:C1" and ents["E1-trigger"]["text"] == ["expression"]
    assert [(r["type"], r["arg1"], r["arg2"]) for r in doc["relations"]] == [("Association", "T1", "T2"),
                                                                            ("coreference", "T4", "T3")]
    inst = T.event_instances([doc], "kb")
    assert {i.task for i in inst} == {"ETE", "EAE"} and "Gene_expression - Theme: IL6" in inst[1].answer
    # bad input names the row and the annotation
    bad = dict(row, entities=row["entities"][:1] + [dict(row["entities"][1], text=["fever"])])
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl \(train\) row 0: entity T2: span \[\[7, 13\]\] is 'sepsis'"):
        READERS["hf_dataset"](tmp_path / "bad.jsonl", schema="kb")
    bad = dict(row, relations=[dict(row["relations"][0], arg2_id="T9")])
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"row 0: relation R1 joins T1 and T9, not both entities or events"):
        READERS["hf_dataset"](tmp_path / "bad.jsonl", schema="kb")
    with pytest.raises(DataError, match=r"no columns \['passages', 'entities'\] of BigBio's kb schema"):
        READERS["hf_dataset"](SAMPLES / "dc/trialstop_sample.jsonl", schema="kb")


def test_i2b2_deid_release_layouts(tmp_path):
    # 2014: CDATA text and PHI tags with offsets, read without newline translation (one sample note is CRLF)
    notes = {d["id"]: d for d in READERS["i2b2_2014_deid"](SAMPLES / "i2b2_2014_deid")}
    assert "\r\n" in notes["202-01"]["text"] and "\r" not in notes["200-01"]["text"]
    assert [e["type"] for e in notes["202-01"]["entities"]] == ["DATE", "PATIENT", "DOCTOR", "HOSPITAL"]
    categories = READERS["i2b2_2014_deid"](SAMPLES / "i2b2_2014_deid", level="category")
    assert [e["type"] for e in categories[0]["entities"]] == ["DATE", "NAME", "NAME", "LOCATION"]
    # a CRLF file whose offsets were counted on LF line ends reads too
    raw = (SAMPLES / "i2b2_2014_deid/200-01.xml").read_bytes()
    head, rest = raw.split(b"<![CDATA[")
    body, tail = rest.split(b"]]>", 1)
    (tmp_path / "lf.xml").write_bytes(head + b"<![CDATA[" + body.replace(b"\n", b"\r\n") + b"]]>" + tail)
    lf = READERS["i2b2_2014_deid"](tmp_path / "lf.xml")[0]
    assert "\r\n" not in lf["text"] and lf["entities"][1]["text"] == notes["200-01"]["entities"][1]["text"]
    (tmp_path / "bad.xml").write_bytes(raw.replace(b'start="13" end="23"', b'start="14" end="24"'))
    with pytest.raises(DataError, match=r"bad\.xml, tag P0: span \[\[14, 24\]\]"):
        READERS["i2b2_2014_deid"](tmp_path / "bad.xml")
    # 2006: PHI inline in each RECORD's TEXT; the text is the record's with the tags taken out
    records = READERS["i2b2_2006_deid"](SAMPLES / "i2b2_2006_deid")
    assert len(records) == 3 and all("<PHI" not in d["text"] for d in records)
    for d in records:
        assert [e["type"] for e in d["entities"]] == ["DATE", "PATIENT", "DOCTOR", "HOSPITAL"]
        assert all(d["text"][s:t] == e["text"][0] for e in d["entities"] for s, t in e["offsets"])
    assert records[0]["text"].replace("\r", "") == notes["200-01"]["text"].join(["\n", ""])
    (tmp_path / "r.xml").write_text('<ROOT><RECORD ID="1"><TEXT>Seen by <NAME>X</NAME>.</TEXT></RECORD></ROOT>')
    with pytest.raises(DataError, match=r"r\.xml: RECORD 1: <NAME> in the text; expected <PHI TYPE=\.\.\.>"):
        READERS["i2b2_2006_deid"](tmp_path / "r.xml")


def test_pico_data_release_layout(tmp_path):
    # spans per annotator in annotations/<split>/*.json, texts in docs/<docid>.txt; ends stripped of whitespace
    agg = SAMPLES / "pico_data/annotations/train/PICO-annos-crowdsourcing-agg.json"
    hmm = READERS["pico_data"](agg)  # auto: HMMCrowd, the paper's aggregation
    first = json.loads(agg.read_text().splitlines()[0])
    (s, e), = first["Participants"]["HMMCrowd"]
    assert hmm[0]["text"][s:e].endswith(".\n") and hmm[0]["entities"][0]["offsets"] == [[s, e - 1]]
    assert hmm[0]["entities"][0]["text"][0].endswith(".") and hmm[0]["entities"][0]["type"] == "Participants"
    vote = READERS["pico_data"](agg, annotator="MajorityVote")
    assert [d["entities"][0]["text"] for d in vote][0][0].startswith("adults with ")
    student = READERS["pico_data"](SAMPLES / "pico_data/annotations/acl17-test/PICO-annos-professional.json")
    assert student[0]["entities"] == [] and all(d["entities"] for d in student[1:])  # {}: nothing marked
    crowd = tmp_path / "annotations" / "train" / "PICO-annos-crowdsourcing.json"
    crowd.parent.mkdir(parents=True)
    crowd.write_text(json.dumps({"Participants": {"W1": [[0, 4]], "W2": [[1, 4]]}, "docid": first["docid"]}) + "\n")
    with pytest.raises(DataError, match=r"no such directory of abstracts"):
        READERS["pico_data"](crowd)
    with pytest.raises(DataError, match=r"crowdsourcing\.json:1: document 6100: no Participants annotations by "
                                        r"'HMMCrowd'; annotators here: \['W1', 'W2'\]"):
        READERS["pico_data"](crowd, docs=SAMPLES / "pico_data/docs")
    w2 = READERS["pico_data"](crowd, docs=SAMPLES / "pico_data/docs", annotator="W2")
    assert w2[0]["entities"][0]["offsets"] == [[1, 4]]
    crowd.write_text(json.dumps({"Participants": {"W1": [[0, 10_000]]}, "docid": first["docid"]}) + "\n")
    with pytest.raises(DataError, match=r"document 6100: span \[0, 10000\] outside its text"):
        READERS["pico_data"](crowd, docs=SAMPLES / "pico_data/docs")


def test_euadr_ibi_release_layout(tmp_path):
    # Latin-1 like the release; FA (false association) pairs are asked, all of them, with the no-relation answer
    raw = (SAMPLES / "euadr/EUADR_drug_target.csv").read_bytes()
    assert b"\xfc" in raw  # "Kr\u00fcppel" in Latin-1: not UTF-8
    docs = READERS["euadr_csv"](SAMPLES / "euadr")
    assert len(docs) == 6 and all(len(d["relations"]) == 1 and len(d["negative_pairs"]) == 1 for d in docs)
    assert any("Kr\u00fcppel-like factor 4" in d["text"] for d in docs)
    assert {r["type"] for d in docs for r in d["relations"]} == {"PA", "SA"}
    inst, counts = T.re_kb_instances(docs, "euadr", ["PA", "NA", "SA"], negative_ratio=0.0)
    assert len(inst) == 12 and sum(i.gold["relation"] == "none" for i in inst) == 6  # the FA pairs, none sampled
    gold = {i.id.rsplit("-", 1)[1]: i.gold["relation"] for i in inst if i.id.startswith(f"euadr-{docs[0]['id']}-")}
    assert gold == {"R1": docs[0]["relations"][0]["type"], "F1": "none"}
    header = raw.split(b"\n", 1)[0].decode()
    bad = tmp_path / "EUADR_drug_disease.csv"
    row = '"XA"\t1\t0\t"rash"\t0\t4\t"Diseases & Disorders"\t"zinc"\t10\t14\t"Chemicals & Drugs"\t"rash with zinc"'
    bad.write_text(header + "\n" + row + "\n")
    with pytest.raises(DataError, match=r"EUADR_drug_disease\.csv:2: association 'XA'; expected one of"):
        READERS["euadr_csv"](tmp_path)
    bad.write_text(header + "\n" + row.replace("XA", "PA") + "\n")
    assert READERS["euadr_csv"](tmp_path)[0]["relations"] == [{"id": "R1", "type": "PA", "arg1": "T1", "arg2": "T2"}]
    bad.write_text(header + "\n" + row.replace("XA", "PA").replace("\t10\t14", "\t9\t13") + "\n")
    with pytest.raises(DataError, match=r"EUADR_drug_disease\.csv:2, entity 2: span \[\[9, 13\]\] is ' zin'"):
        READERS["euadr_csv"](tmp_path)
    bad.write_text("PMID\tSENTENCE\n")
    with pytest.raises(DataError, match=r"EUADR_drug_disease\.csv:1: expected the header"):
        READERS["euadr_csv"](tmp_path)


def test_pubtator_biored_layout_and_unresolved_concepts(tmp_path):
    text = "Zinc and rash. Zinc lotion eased the rash in V600E carriers."
    lines = ["7|t|Zinc and rash.", "7|a|Zinc lotion eased the rash in V600E carriers.",
             "7\t0\t4\tZinc\tChemicalEntity\tC9", "7\t9\t13\trash\tDiseaseOrPhenotypicFeature\tD7,D8",
             "7\t15\t19\tZinc\tChemicalEntity\tC9",
             "7\t45\t50\tV600E\tSequenceVariant\tp|SUB|V|600|E",  # a tmVar id: "|" inside one id
             "7\tNegative_Correlation\tC9\tD8\tNovel",  # BioRED: a fifth field, the novelty flag
             "7\tAssociation\tC9\tD404\tNo",
             "7\tPositive_Correlation\tp|SUB|V|600|E\tD7\tNo"]  # BioRED names a variant by its whole id
    assert text[9:13] == "rash" and text[45:50] == "V600E"
    (tmp_path / "b.txt").write_text("\n".join(lines) + "\n")
    d = READERS["pubtator"](tmp_path / "b.txt")[0]
    assert d["relations"] == [{"id": "R1", "type": "Negative_Correlation", "arg1": "T1", "arg2": "T2"},
                              {"id": "R3", "type": "Positive_Correlation", "arg1": "T4", "arg2": "T2"}]
    assert d["unresolved_relations"] == [{"id": "R2", "type": "Association", "concept1": "C9", "concept2": "D404"}]
    (tmp_path / "m.txt").write_text("\n".join(lines[:3] + ["8\t9\t13\trash\tDisease\tD7"]) + "\n")
    with pytest.raises(DataError, match=r"m\.txt:4: PMID '8' in the block of document '7'"):
        READERS["pubtator"](tmp_path / "m.txt")


def test_document_id_list_selects_a_split(tmp_path):
    """NLM-Gene ships every abstract in one folder (Corpus/FINAL/<PMID>.BioC.XML) and its splits as PMID lists
    (Pmidlist.Train.txt); `document_ids` keeps the listed documents and counts the others."""
    from mnlu_jax.data.build import DatasetSpec, dataset_instances, stats_markdown, statistics

    folder = SAMPLES / "bioc/biored_sample.xml"
    everything = READERS["bioc"](folder)
    (tmp_path / "Pmidlist.Train.txt").write_text("9001\n\n9003\n")
    spec = DatasetSpec(name="genes", reader="bioc", path=str(folder), task="NER", document_ids="Pmidlist.Train.txt")
    inst, notes = dataset_instances(spec, 0, "mnlu", tmp_path)  # the list's path is relative to the config
    assert sorted(i.id.split("-")[1] for i in inst) == ["9001", "9003"]
    assert notes["documents"] == 2 and notes["documents_not_listed"] == len(everything) - 2
    stats = statistics(inst, {"genes": notes})
    assert f"documents not listed {len(everything) - 2}" in stats_markdown(stats)
    (tmp_path / "Pmidlist.Test.txt").write_text("9001\n123\n456\n")
    spec.document_ids = str(tmp_path / "Pmidlist.Test.txt")
    with pytest.raises(DataError, match=r"dataset genes: document_ids .*Pmidlist\.Test\.txt: 2 listed ids have no "
                                        r"document \(first: 123, 456\)"):
        dataset_instances(spec, 0, "mnlu", tmp_path)
    spec.reader_options = {"bad_span": "skip"}  # a misspelt option is named, with the reader's own
    with pytest.raises(DataError, match=r"dataset genes: reader_options \['bad_span'\] are not options of the 'bioc' "
                                        r"reader; it takes \['bad_spans', 'individual_mentions'\]"):
        dataset_instances(spec, 0, "mnlu", tmp_path)
    spec.reader_options = {}
    spec.document_ids = str(tmp_path / "missing.txt")
    with pytest.raises(DataError, match=r"document_ids .*missing\.txt: cannot read"):
        dataset_instances(spec, 0, "mnlu", tmp_path)


def test_text_that_is_not_utf8_is_named_by_line_and_column(tmp_path):
    """Every reader goes through read_text / read_bytes_as_utf8 / iter_jsonl, so a stray Latin-1 byte in a 100 MB
    corpus is named by its line, not by a byte position in the whole file."""
    from mnlu_jax.data.schema import iter_jsonl, read_bytes_as_utf8, read_text

    iob = tmp_path / "train.tsv"
    iob.write_bytes(b"We\tO\nsaw\tO\n\nna\xefve\tO\n")
    for read in (read_text, read_bytes_as_utf8, READERS["iob"]):
        with pytest.raises(DataError, match=r"train\.tsv:4: byte 0xef at column 3 is not UTF-8; expected UTF-8"):
            read(iob)
    assert read_text(iob, fallback="latin-1").splitlines()[3] == "na\u00efve\tO"
    jl = tmp_path / "p.jsonl"
    jl.write_bytes(b'{"id": "a"}\r\n\n{"id": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:3: byte 0xe9 at column 12 is not UTF-8"):
        list(iter_jsonl(jl))
    jl.write_bytes(b'{"id": "a"}\r\n\n{"id": "b"}')
    assert list(iter_jsonl(jl)) == [(1, {"id": "a"}), (3, {"id": "b"})]
    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb\rc\n")
    assert read_text(tmp_path / "crlf.txt") == "a\nb\nc\n"  # universal newlines, as Path.read_text gave
    assert read_bytes_as_utf8(tmp_path / "crlf.txt") == "a\r\nb\rc\n"


def test_instances_read_back_are_checked(tmp_path):
    """MNLU-Instruct shards may come from elsewhere (the original's data, a user's own): a chat the trainer could
    not render, options or gold of the wrong kind are named by file and line when read."""
    from mnlu_jax.data.schema import read_instances

    good = T.nli_instances([{"id": "p", "premise": "a", "hypothesis": "b", "label": "neutral"}], "x")[0][0]
    base = json.loads(good.to_json())
    assert list(read_instances(_write_lines(tmp_path / "ok.jsonl", [base])))[0] == good
    bad = [({"messages": "hi"}, r"messages: expected a non-empty list"),
           ({"messages": [{"role": "bot", "content": "a"}]}, r"messages\[0\]: expected \{\"role\""),
           ({"messages": base["messages"][:1] + [{"role": "user", "content": 3}]}, r"messages\[1\]: expected"),
           ({"options": "A, B"}, "options: expected a list of strings"), ({"gold": None}, "gold: expected an object")]
    for change, match in bad:
        path = _write_lines(tmp_path / "bad.jsonl", [base, {**base, **change}])
        with pytest.raises(DataError, match=r"bad\.jsonl:2: " + match):
            list(read_instances(path))


def _write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_build_stats_list_what_was_left_out():
    from mnlu_jax.data.build import statistics, stats_markdown

    stats = statistics([], {"cdr": {"task": "RE", "documents": 3, "available": 0, "relations_unresolved": 2}})
    assert stats["datasets"]["cdr"]["instances"] == 0  # a dataset that gave nothing is still listed
    assert "| cdr | RE | 0 | 0 |" in stats_markdown(stats) and "relations unresolved 2" in stats_markdown(stats)


def test_pubmedqa_bad_ground_truth_names_the_file(tmp_path):
    (tmp_path / "gt.json").write_text('{"1": "yes",')
    with pytest.raises(DataError, match=r"gt\.json: cannot read as JSON"):
        READERS["pubmedqa"](SAMPLES / "pubmedqa/ori_pqal.json", ground_truth=tmp_path / "gt.json")
    gt = json.loads((SAMPLES / "pubmedqa/test_ground_truth.json").read_text())
    pmid = sorted(gt)[0]
    (tmp_path / "gt.json").write_text(json.dumps({**gt, pmid: "perhaps"}))
    with pytest.raises(DataError, match=rf"gt\.json: PMID {pmid} answer 'perhaps'; expected yes, no or maybe"):
        READERS["pubmedqa"](SAMPLES / "pubmedqa/ori_pqal.json", ground_truth=tmp_path / "gt.json")


def test_empty_answer_and_zero_trainable_tokens_are_errors(tiny_tok):
    inst = T.nli_instances([{"id": "p", "premise": "a", "hypothesis": "b", "label": "neutral"}], "x")[0][0]
    inst.messages[-1]["content"] = "  "
    with pytest.raises(DataError, match="instance x-p: empty assistant answer"):
        tokenize_instance(inst, tiny_tok, ZEPHYR_TEMPLATE, 512)


# ------------------------------------------------------------------ builder, tokenization, packing
@pytest.fixture(scope="module")
def sample_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix")
    stats = run_build(ROOT / "configs/data/sample.yaml", out)
    return out, stats


@pytest.fixture(scope="module")
def tiny_tok(sample_build):
    out, _ = sample_build
    inst = [i for f in sorted(out.glob("train-*.jsonl")) for i in read_instances(f)]
    return train_tiny_tokenizer(instance_texts(inst), vocab_size=400)


def test_build_counts_truncations_as_training_tokenises(sample_build, tiny_tok, tmp_path):
    """build-data --tokenizer counts what the trainer would cut: sequences of max_seq_length + 1 tokens (inputs and
    targets of max_seq_length each) in the training config's default template (it counted at max_seq_length with
    the tokenizer's own template, one token short)."""
    out, _ = sample_build
    tiny_tok.save_pretrained(tmp_path / "tok")
    inst = [i for f in sorted(out.glob("train-*.jsonl")) for i in read_instances(f)]
    longest = max(len(tokenize_instance(i, tiny_tok, ZEPHYR_TEMPLATE, 10**6).ids) for i in inst)

    def truncated(seq):
        stats = run_build(ROOT / "configs/data/sample.yaml", tmp_path / f"b{seq}", tokenizer=str(tmp_path / "tok"),
                          max_seq_length=seq)
        return sum(d["truncated"] for d in stats["datasets"].values())

    assert truncated(longest - 1) == 0  # the longest example just fits the trainer's sequence + 1
    assert truncated(longest - 2) >= 1


def test_sample_mix_covers_all_tasks(sample_build):
    out, stats = sample_build
    assert {"NER", "ETE", "EAE", "EAC", "DC", "RE", "NLI", "STS", "SUM"} <= set(stats["tasks"])
    assert "QA" not in stats["tasks"]  # held out, as in the paper
    assert stats["datasets"]["snli"]["skipped_unlabeled"] == 1
    assert stats["datasets"]["snli"]["instances"] == round(0.5 * stats["datasets"]["snli"]["available"])
    assert (out / "stats.md").read_text().startswith("| dataset | task |")
    again = run_build(ROOT / "configs/data/sample.yaml", out.parent / "again")
    a = (out / "train-00000-of-00001.jsonl").read_text()
    assert a == (out.parent / "again" / "train-00000-of-00001.jsonl").read_text()  # reproducible
    assert again == stats


def test_mix_settings_are_refused_before_reading(tmp_path):
    """A repeated dataset name, a negative fraction or total, a zero shard size or an unknown task/style used to
    give a mix with repeated ids, an empty mix written without a word, or a ZeroDivisionError."""
    cfg = tmp_path / "mix.yaml"
    iob = SAMPLES / "iob/chemical/train.tsv"
    chem = {"name": "chem", "reader": "iob", "path": str(iob), "task": "NER", "types": ["Chemical"],
            "reader_options": {"default_type": "Chemical"}}
    cases = [([chem, chem], [], r"datasets\[1\] \(chem\): the name of datasets\[0\] again"),
             ([{**chem, "fraction": -0.5}], [], r"datasets\[0\] \(chem\): fraction -0.5: expected >= 0"),
             ([{**chem, "task": "NRE"}], [], r"task 'NRE': expected one of \['NER'"),
             ([chem], ["total_instances=-5"], r"total_instances -5: expected at least 1"),
             ([chem], ["shard_size=0", "style=alpaca"], r"style 'alpaca': expected mnlu or medtuned; shard_size 0"),
             ([{**chem, "fraction": 0.0}], [], r"the mix gives no instances \(chem: \d+ available\); nothing written")]
    for datasets, overrides, match in cases:
        cfg.write_text(json.dumps({"seed": 1, "datasets": datasets}))
        with pytest.raises(DataError, match=r"mix\.yaml: .*" + match):
            run_build(cfg, tmp_path / "out", overrides)
        assert not (tmp_path / "out").exists()
    cfg.write_text(json.dumps({"seed": 1, "datasets": [{**chem, "task": "EE", "reader": "brat",
                                                        "path": str(SAMPLES / "brat/sdoh"), "reader_options": {}}]}))
    assert run_build(cfg, tmp_path / "out")["total"] > 0  # EE: all three event subtasks of one corpus


def test_rebuild_replaces_every_shard(tmp_path):
    from mnlu_jax.data.schema import shard_files
    from mnlu_jax.train.loop import _instances

    out = tmp_path / "mix"
    run_build(ROOT / "configs/data/sample.yaml", out, ["shard_size=100"])
    many = shard_files(out)
    assert len(many) > 2 and many[0].name == "train-00000-of-%05d.jsonl" % len(many)
    stats = run_build(ROOT / "configs/data/sample.yaml", out, ["total_instances=60"])  # fewer, in one shard
    assert [f.name for f in shard_files(out)] == ["train-00000-of-00001.jsonl"] and len(_instances(out)) == 60
    assert stats["total"] == 60
    (out / "train-00001-of-00003.jsonl").write_text("")  # a shard copied in from another build
    with pytest.raises(DataError, match=r"not one set of build-data shards .*shards of builds into \[1, 3\] files"):
        _instances(out)
    (out / "train-00001-of-00003.jsonl").unlink()
    (out / "train-00000-of-00001.jsonl").rename(out / "train-00000-of-00002.jsonl")
    with pytest.raises(DataError, match=r"shards \['train-00001-of-00002\.jsonl'\] are missing"):
        _instances(out)
    (out / "train-extra.jsonl").write_text("")
    with pytest.raises(DataError, match=r"other files \['train-extra\.jsonl'\]"):
        _instances(out)


def test_ablation_total_split_equally_over_tasks(tmp_path):
    stats = run_build(ROOT / "configs/data/sample.yaml", tmp_path / "abl",
                      ["total_instances=60", "balance=task", "tasks=[NER, RE, DC]"])
    by = stats["tasks"]
    assert set(by) == {"NER", "RE", "DC"}
    assert all(abs(n - 20) <= 2 for n in by.values()), by
    stats = run_build(ROOT / "configs/data/sample.yaml", tmp_path / "clin", ["domains=[clinical]"])
    assert "stsb" not in stats["datasets"] and "n2c2_2018_ade_ner" in stats["datasets"]


def test_assistant_mask_covers_exactly_the_answer(sample_build, tiny_tok):
    out, _ = sample_build
    inst = next(read_instances(out / "train-00000-of-00001.jsonl"))
    t = tokenize_instance(inst, tiny_tok, ZEPHYR_TEMPLATE, 2048)
    answer_text = tiny_tok.decode(t.ids[t.loss_mask])
    assert answer_text == inst.answer + "</s>\n"
    prompt_text = tiny_tok.decode(t.ids[~t.loss_mask])
    assert prompt_text == render(tiny_tok, inst.messages[:-1], ZEPHYR_TEMPLATE, True)


def test_truncation_keeps_answer_and_generation_prompt(sample_build, tiny_tok):
    out, _ = sample_build
    inst = next(i for i in read_instances(out / "train-00000-of-00001.jsonl") if i.task == "RE")
    full = tokenize_instance(inst, tiny_tok, ZEPHYR_TEMPLATE, 4096)
    t = tokenize_instance(inst, tiny_tok, ZEPHYR_TEMPLATE, len(full.ids) - 10)
    assert t.truncated and len(t.ids) == len(full.ids) - 10
    np.testing.assert_array_equal(t.ids[t.loss_mask], full.ids[full.loss_mask])
    assert tiny_tok.decode(t.ids[~t.loss_mask]).endswith("<|assistant|>\n")


def test_packing_segments_and_iterator_restore(sample_build, tiny_tok):
    out, _ = sample_build
    inst = list(read_instances(out / "train-00000-of-00001.jsonl"))
    examples, _ = tokenize_all(inst, tiny_tok, "zephyr", 257)
    ds = make_dataset(examples, seq_len=256, global_batch=4, seed=0, epochs=1)
    it = iter(ds)
    first = next(it)
    seg, pos = first["segment_ids"], first["positions"]
    assert first["inputs"].shape == (4, 256)
    for row in range(4):
        for s in set(seg[row]) - {0}:
            idx = np.where(seg[row] == s)[0]
            assert (np.diff(idx) == 1).all() and (pos[row, idx] == np.arange(len(idx))).all()
        assert (first["weights"][row][seg[row] == 0] == 0).all()
    # every packed segment equals one tokenized example
    lens = {len(e["inputs"]) for e in examples}
    assert all(int((seg[r] == s).sum()) in lens for r in range(4) for s in set(seg[r]) - {0})
    state = it.get_state()
    nxt = [next(it) for _ in range(2)]
    it2 = iter(make_dataset(examples, seq_len=256, global_batch=4, seed=0, epochs=1))
    it2.set_state(json.loads(json.dumps(state)))  # the state survives JSON (it is saved with checkpoints)
    for a in nxt:
        b = next(it2)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # process slices: 2 processes see the two halves of the same global batch
    p0 = next(iter(make_dataset(examples, 256, 4, 0, 1, process_index=0, process_count=2)))
    p1 = next(iter(make_dataset(examples, 256, 4, 0, 1, process_index=1, process_count=2)))
    np.testing.assert_array_equal(np.concatenate([p0["inputs"], p1["inputs"]]), first["inputs"])


def test_total_instances_shares_add_up_to_the_total():
    from mnlu_jax.data.build import apportion

    # rounding each share alone: 4 x round(2.5) = 8, and 3 x round(3.33) + 2 x round(5.5) = 9 + 12 = 21 for 20
    assert apportion({"DC": {"a": 5, "b": 5, "c": 5, "d": 5}}, 10) == {"a": 3, "b": 3, "c": 2, "d": 2}
    shares = apportion({"NER": {"x": 1, "y": 1, "z": 1}, "RE": {"u": 7, "v": 7}}, 20)
    assert sum(shares.values()) == 20 and shares["u"] == shares["v"] == 5 and sorted(
        shares[n] for n in "xyz") == [3, 3, 4]
    assert apportion({"NER": {"x": 0}, "RE": {"u": 3, "v": 1}}, 8) == {"x": 0, "u": 3, "v": 1}  # an empty group


@pytest.mark.parametrize("mix", ["configs/paper/mnlu_instruct.yaml", "configs/data/sample.yaml"])
def test_mix_configs_name_readers_and_options_they_take(mix):
    """The paper mix points at corpora not shipped here, so nothing else reads it: every dataset must name a known
    reader, options that reader takes, and a task the builder knows."""
    import inspect

    from mnlu_jax.config import load_config
    from mnlu_jax.data.build import MixConfig

    for d in load_config(MixConfig, ROOT / mix).datasets:
        assert d.reader in READERS, d.name
        assert set(d.reader_options) <= set(inspect.signature(READERS[d.reader]).parameters) - {"path"}, d.name
        assert d.task in ("NER", "EE", "ETE", "EAE", "EAC", "DC", "RE", "QA", "NLI", "STS", "SUM"), d.name


def test_ablation_configs_reuse_the_full_mix(tmp_path):
    """configs/paper/ablations/* take their datasets from mnlu_instruct.yaml (base_config) and filter them."""
    from mnlu_jax.config import load_config
    from mnlu_jax.data.build import MixConfig

    cfg = load_config(MixConfig, ROOT / "configs/paper/ablations/re_k3.yaml")
    assert cfg.base_config == "../mnlu_instruct.yaml" and cfg.tasks == ["RE", "NLI", "NER"] and cfg.total_instances == 50000
    # a small ablation over the sample mix, through the same mechanism
    (tmp_path / "abl.yaml").write_text(f"base_config: {ROOT / 'configs/data/sample.yaml'}\ntotal_instances: 30\n"
                                       "balance: task\ntasks: [NLI, STS, DC]\n")
    stats = run_build(tmp_path / "abl.yaml", tmp_path / "out")
    assert set(stats["tasks"]) == {"NLI", "STS", "DC"} and stats["total"] == 30
    # DC's 10 are shared by its five datasets by size (11, 8, 6, 6, 5 of 36: 3.1, 2.2, 1.7, 1.7, 1.4), rounded so
    # as to add up (rounding each alone gave 3 + 2 + 2 + 2 + 1 = 10 here, but 31 in all with four datasets)
    dc = {n: d["instances"] for n, d in stats["datasets"].items() if d["task"] == "DC"}
    assert len(dc) == 5 and sum(dc.values()) == stats["tasks"]["DC"] == 10


def test_tokenizer_template_without_one_falls_back_to_zephyr_with_a_warning(tiny_tok, caplog):
    """`--chat-template tokenizer` on a base model's tokenizer (no template) renders the paper's zephyr template, and
    says so once per tokenizer (it used to switch without a word)."""
    import copy
    import logging

    from mnlu_jax.data.chat import ZEPHYR_TEMPLATE, resolve_template

    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = None
    with caplog.at_level(logging.WARNING, logger="mnlu_jax.data.chat"):
        assert resolve_template(tok, "tokenizer") == ZEPHYR_TEMPLATE == resolve_template(tok, None)
    assert [r.getMessage() for r in caplog.records].count(
        f"chat template 'tokenizer': {tok.name_or_path or type(tok).__name__} has none; using the zephyr template "
        "(the paper's)") == 1
    tok.chat_template = "{{ messages[0]['content'] }}"
    assert resolve_template(tok, "tokenizer") == tok.chat_template
    with pytest.raises(ValueError, match=r"chat template 'zephyrr': expected 'tokenizer', 'zephyr' or a path"):
        resolve_template(tok, "zephyrr")


def test_chat_template_errors_name_the_file_or_the_record(tiny_tok, tmp_path):
    """A template file that does not parse is named with its line when it is chosen; a template that refuses a
    conversation (Mistral's own raises on a system message) names the record and suggests --drop-system. Both were
    jinja2 tracebacks."""
    import copy

    from mnlu_jax.data.chat import resolve_template
    from mnlu_jax.decode.generate import encode_records

    (tmp_path / "bad.jinja").write_text("{% for m in messages %}\n{{ m.content }\n")
    with pytest.raises(ValueError, match=r"bad\.jinja:2: chat template does not parse \(unexpected '}'\)"):
        resolve_template(tiny_tok, str(tmp_path / "bad.jinja"))
    from mnlu_jax.data.chat import check_template_choice
    from mnlu_jax.decode.engine import DecodeConfig
    from mnlu_jax.decode.generate import run_generate

    check_template_choice("zephyr")
    check_template_choice("tokenizer")
    with pytest.raises(ValueError, match=r"bad\.jinja:2: chat template does not parse"):  # before any model load
        run_generate("no-model-loaded", tmp_path / "in.jsonl", tmp_path / "out.jsonl", DecodeConfig(),
                     chat_template=str(tmp_path / "bad.jinja"))
    (tmp_path / "gen.jinja").write_text("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
                                        "{% endfor %}")  # transformers' own tags parse
    assert "generation" in resolve_template(tiny_tok, str(tmp_path / "gen.jinja"))
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('Conversation roles must "
              "alternate user/assistant') }}{% endif %}{{ m['content'] }}{% endfor %}")
    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = strict
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match=r"in\.jsonl: record 1 \(id 's'\): the chat template refused messages with "
                                         r"roles \['system', 'user'\]: Conversation roles must alternate .*"
                                         r"--drop-system"):
        encode_records([{"id": "s", "messages": chat}], tok, "tokenizer", False, 64, "in.jsonl")
    assert encode_records([{"id": "s", "messages": chat}], tok, "tokenizer", True, 64, "in.jsonl")[0]
    inst = T.nli_instances([{"id": "p", "premise": "a", "hypothesis": "b", "label": "neutral"}], "x")[0][0]
    with pytest.raises(ValueError, match=r"instance x-p: the chat template refused"):
        tokenize_instance(inst, tok, strict, 512)
