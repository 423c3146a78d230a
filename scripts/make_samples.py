"""Write the small synthetic sample corpora under data/samples/ (deterministic; no text from real corpora).

Every file is in the native format of a real corpus so that the readers run exactly as on the full
public files: IOB/CoNLL TSV, BLURB PICO TSV, BRAT standoff, BioC XML and JSON, PubTator, ChemProt/DrugProt
TSV, i2b2 2010 concept/relation, 2011 coreference and 2012 XML, PubMedQA JSON, NLI JSONL, STS/RE/HoC/BioASQ TSV,
summarisation JSONL and nested-NER jsonlines.
Sentences are assembled from templates and a small made-up lexicon.

    python scripts/make_samples.py [--out data/samples]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DRUGS = ["aspirin", "metformin", "warfarin", "cisplatin", "ibuprofen", "lisinopril", "heparin", "tamoxifen",
         "amoxicillin", "insulin glargine", "prednisone", "simvastatin"]
DISEASES = ["renal failure", "hypertension", "type 2 diabetes", "breast cancer", "sepsis", "asthma", "hepatitis",
            "atrial fibrillation", "pneumonia", "migraine", "anemia", "psoriasis"]
GENES = ["BRCA1", "TP53", "EGFR", "KRAS", "IL6", "TNF", "HER2", "APOE", "CFTR", "VEGFA", "MYC", "PTEN"]
CELLS = ["T cells", "monocytes", "HeLa cells", "B lymphocytes", "Jurkat cells", "macrophages"]
RNAS = ["IL6 mRNA", "TNF mRNA", "MYC transcripts"]
DNAS = ["NF-kappa B binding site", "promoter region", "enhancer element"]
EFFECTS = ["nausea", "rash", "dizziness", "bleeding", "headache", "fatigue"]
TESTS = ["chest x-ray", "blood culture", "echocardiogram", "CT scan", "urinalysis", "ECG"]
HALLMARKS = ["Sustaining proliferative signaling", "Evading growth suppressors", "Resisting cell death",
             "Enabling replicative immortality", "Inducing angiogenesis", "Activating invasion and metastasis",
             "Genomic instability and mutation", "Tumor promoting inflammation", "Cellular energetics",
             "Avoiding immune destruction"]
HALLMARK_CUES = {
    "Sustaining proliferative signaling": "stimulated uncontrolled proliferation",
    "Evading growth suppressors": "bypassed growth suppressor checkpoints",
    "Resisting cell death": "blocked apoptosis",
    "Enabling replicative immortality": "activated telomerase",
    "Inducing angiogenesis": "promoted new vessel formation",
    "Activating invasion and metastasis": "increased invasion and metastasis",
    "Genomic instability and mutation": "caused genomic instability",
    "Tumor promoting inflammation": "drove chronic inflammation",
    "Cellular energetics": "shifted glucose metabolism",
    "Avoiding immune destruction": "suppressed immune recognition",
}


def tokens_of(text: str) -> list[str]:
    return text.replace(",", " ,").replace(".", " .").split()


def iob_lines(parts: list[tuple[str, str | None]]) -> list[str]:
    """parts: (text, type or None) -> token<TAB>tag lines."""
    out = []
    for text, typ in parts:
        toks = tokens_of(text)
        for k, t in enumerate(toks):
            out.append(f"{t}\t{'O' if typ is None else ('B' if k == 0 else 'I') + ('-' + typ if typ != '_' else '')}")
    return out


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_iob(out: Path, rng: random.Random) -> None:
    # Disease (untyped tags, like NCBI-disease / BC5-disease), Chemical, Gene, and JNLPBA-style typed tags.
    for name, pool, typ in [("disease", DISEASES, "_"), ("chemical", DRUGS, "_"), ("gene", GENES, "_")]:
        for split, n in [("train", 24), ("test", 12)]:
            lines = []
            for _ in range(n):
                a, b = rng.sample(pool, 2)
                form = rng.randrange(3)
                if form == 0:
                    parts = [("Patients with", None), (a, typ), ("were enrolled in the study .", None)]
                elif form == 1:
                    parts = [("We observed", None), (a, typ), ("and", None), (b, typ), ("in the cohort .", None)]
                else:
                    parts = [("No relevant findings were reported in this group .", None)]
                lines += iob_lines(parts) + [""]
            write(out / "iob" / name / f"{split}.tsv", "\n".join(lines))
    for split, n in [("train", 20), ("test", 10)]:
        lines = []
        for _ in range(n):
            parts = [("Expression of", None), (rng.choice(GENES) + " protein", "protein"), ("in", None),
                     (rng.choice(CELLS), "cell_type"), ("requires the", None), (rng.choice(DNAS), "DNA"), (".", None)]
            if rng.random() < 0.5:
                parts = parts[:-1] + [("and", None), (rng.choice(RNAS), "RNA"), ("in", None),
                                      (rng.choice(["HeLa", "Jurkat", "U937"]) + " line", "cell_line"), (".", None)]
            lines += iob_lines(parts) + [""]
        write(out / "iob" / "jnlpba" / f"{split}.tsv", "\n".join(lines))


def make_pico(out: Path, rng: random.Random) -> None:
    for split, n in [("train", 8), ("test", 6)]:
        lines = []
        for _ in range(n):
            lines.append("-DOCSTART-\tO")
            lines.append("")
            drug, dis = rng.choice(DRUGS), rng.choice(DISEASES)
            for sent in [[("We randomized", None), (f"adults with {dis}", "PAR"), ("to", None), (drug, "INT"),
                          ("or placebo .", None)],
                         [("The primary outcome was", None), (f"change in {rng.choice(['blood pressure', 'HbA1c', 'pain scores'])}", "OUT"),
                          ("at twelve weeks .", None)]]:
                for text, typ in sent:
                    for t in tokens_of(text):
                        lines.append(f"{t}\t{'O' if typ is None else 'I-' + typ}")
                lines.append("")
        write(out / "pico" / f"{split}.tsv", "\n".join(lines))
    # The same kind of abstracts in EBM-NLP's own release layout (tokens + one label file per element).
    for k in range(4):
        drug, dis = rng.choice(DRUGS), rng.choice(DISEASES)
        parts = [("We randomized", None), (f"adults with {dis}", "participants"), ("to", None), (drug, "interventions"),
                 ("or placebo and measured", None), ("pain scores", "outcomes"), (".", None)]
        toks, labs = [], {"participants": [], "interventions": [], "outcomes": []}
        for text, typ in parts:
            for t in tokens_of(text):
                toks.append(t)
                for name in labs:
                    labs[name].append("1" if typ == name else "0")
        pmid = str(6100 + k)
        write(out / "ebmnlp" / "documents" / f"{pmid}.tokens", "\n".join(toks) + "\n")
        for name, lab in labs.items():
            write(out / "ebmnlp" / "annotations" / "aggregated" / "starting_spans" / name / "test" / "gold" /
                  f"{pmid}.AGGREGATED.ann", "\n".join(lab) + "\n")


def make_brat(out: Path, rng: random.Random) -> None:
    # n2c2 2018 ADE style: Drug, ADE, Dosage entities; ADE-Drug and Dosage-Drug relations.
    for k in range(6):
        drug, ade, dose = rng.choice(DRUGS), rng.choice(EFFECTS), rng.choice(["10 mg", "500 mg", "2 units"])
        home = DRUGS[(DRUGS.index(drug) + 1) % len(DRUGS)]  # an unrelated drug: the pairs drawn as no-relation
        text = (f"The patient was started on {drug} {dose} daily.\nShe later developed {ade}, attributed to {drug}.\n"
                f"Her home {home} was continued.\n")
        s1 = text.index(drug)
        s2 = text.index(dose)
        s3 = text.index(ade)
        s4 = text.index(f"home {home}") + 5
        ann = [f"T1\tDrug {s1} {s1 + len(drug)}\t{drug}", f"T2\tDosage {s2} {s2 + len(dose)}\t{dose}",
               f"T3\tADE {s3} {s3 + len(ade)}\t{ade}", "R1\tDosage-Drug Arg1:T2 Arg2:T1", "R2\tADE-Drug Arg1:T3 Arg2:T1",
               "#1\tAnnotatorNotes T3\tsynthetic", f"T4\tDrug {s4} {s4 + len(home)}\t{home}"]
        write(out / "brat" / "ade" / f"note{k:02d}.txt", text)
        write(out / "brat" / "ade" / f"note{k:02d}.ann", "\n".join(ann) + "\n")
    # n2c2 2022 SDoH style: event triggers with argument spans and status attributes.
    for k in range(6):
        sub = rng.choice(["Tobacco", "Alcohol"])
        trig = "smokes" if sub == "Tobacco" else "drinks"
        amount = rng.choice(["one pack per day", "two beers nightly", "occasionally"])
        status = rng.choice(["current", "past"])
        text = f"Social history: patient {trig} {amount}. Lives with spouse.\n"
        st, sa = text.index(trig), text.index(amount)
        ann = [f"T1\t{sub} {st} {st + len(trig)}\t{trig}", f"T2\tAmount {sa} {sa + len(amount)}\t{amount}",
               f"T3\tStatusTime {st} {st + len(trig)}\t{trig}", f"E1\t{sub}:T1 Amount:T2 Status:T3",
               f"A1\tStatusTimeVal T3 {status}"]
        write(out / "brat" / "sdoh" / f"note{k:02d}.txt", text)
        write(out / "brat" / "sdoh" / f"note{k:02d}.ann", "\n".join(ann) + "\n")


def make_bioc(out: Path, rng: random.Random) -> None:
    docs_xml, docs_json = [], []
    for k in range(6):
        gene, dis, chem = rng.choice(GENES), rng.choice(DISEASES), rng.choice(DRUGS)
        title = f"{gene} variants in {dis}."
        other = GENES[(GENES.index(gene) + 1) % len(GENES)]  # an unrelated gene: the pairs drawn as no-relation
        nlmgene_abstract = (f"Loss of {gene} function increased the risk of {dis}. Treatment with {chem} reduced "
                            f"{gene} activity.")
        abstract = f"{nlmgene_abstract} {other} was not measured."
        off2 = len(title) + 1
        anns = []

        def add(text, typ, base, passage_text, ident):
            i = passage_text.index(text)
            anns.append((f"{len(anns)}", typ, base + i, len(text), text, ident))

        add(gene, "GeneOrGeneProduct", 0, title, f"G{gene}")
        add(dis, "DiseaseOrPhenotypicFeature", 0, title, f"D{k}")
        add(chem, "ChemicalEntity", off2, abstract, f"C{k}")
        add(other, "GeneOrGeneProduct", off2, abstract, f"G{other}")
        # BioRED's layout: relations between concept ids (infons entity1/entity2), with a novelty flag
        rels = [("R0", "Association", f"G{gene}", f"D{k}"), ("R1", "Negative_Correlation", f"C{k}", f"G{gene}")]
        ann_xml = "".join(
            f'<annotation id="{i}"><infon key="type">{t}</infon><infon key="identifier">{ident}</infon>'
            f'<location offset="{o}" length="{n}"/><text>{tx}</text></annotation>' for i, t, o, n, tx, ident in anns)
        rel_xml = "".join(f'<relation id="{r}"><infon key="entity1">{a}</infon><infon key="entity2">{b}</infon>'
                          f'<infon key="novel">No</infon><infon key="type">{t}</infon></relation>'
                          for r, t, a, b in rels)
        docs_xml.append(f"<document><id>{9000 + k}</id><passage><infon key=\"type\">title</infon><offset>0</offset>"
                        f"<text>{title}</text></passage><passage><infon key=\"type\">abstract</infon><offset>{off2}</offset>"
                        f"<text>{abstract}</text>{ann_xml}</passage>{rel_xml}</document>")
        docs_json.append({"id": str(9100 + k), "passages": [
            {"offset": 0, "text": title, "annotations": [
                {"id": i, "infons": {"type": "Gene" if t == "GeneOrGeneProduct" else t, "identifier": ident}, "text": tx,
                 "locations": [{"offset": o, "length": n}]} for i, t, o, n, tx, ident in anns
                if t == "GeneOrGeneProduct" and o < off2]},
            {"offset": off2, "text": nlmgene_abstract, "annotations": []}], "relations": []})
    write(out / "bioc" / "biored_sample.xml",
          '<?xml version="1.0" encoding="UTF-8"?>\n<collection><source>synthetic</source>' + "".join(docs_xml) + "</collection>\n")
    write(out / "bioc" / "nlmgene_sample.json", json.dumps({"source": "synthetic", "documents": docs_json}, indent=1))


def make_pubtator(out: Path, rng: random.Random) -> None:
    blocks = []
    for k in range(8):
        chem, dis = rng.choice(DRUGS), rng.choice(DISEASES)
        title = f"{chem.capitalize()}-induced {dis} in a case series."
        abstract = f"Three patients developed {dis} after exposure to {chem}. Symptoms resolved after stopping {chem}."
        text = title + " " + abstract
        lines = [f"{5000 + k}|t|{title}", f"{5000 + k}|a|{abstract}"]
        for m, typ, cid in [(chem.capitalize(), "Chemical", f"C{k}"), (dis, "Disease", f"D{k}")]:
            s = text.index(m)
            lines.append(f"{5000 + k}\t{s}\t{s + len(m)}\t{m}\t{typ}\t{cid}")
        s = text.index(dis, len(title))
        lines.append(f"{5000 + k}\t{s}\t{s + len(dis)}\t{dis}\tDisease\tD{k}")
        s = text.index(chem, len(title))
        lines.append(f"{5000 + k}\t{s}\t{s + len(chem)}\t{chem}\tChemical\tC{k}")
        lines.append(f"{5000 + k}\tCID\tC{k}\tD{k}")
        blocks.append("\n".join(lines))
    write(out / "pubtator" / "bc5cdr_sample.txt", "\n\n".join(blocks) + "\n")


def make_chemprot(out: Path, rng: random.Random) -> None:
    """The BioCreative ChemProt (6-column relations, CPR groups) and DrugProt (4 columns) split directories."""
    forms = {"chemprot": ("chemprot_sample_abstracts.tsv", "chemprot_sample_entities.tsv",
                          "chemprot_sample_relations.tsv"),
             "drugprot": ("drugprot_sample_abstracs.tsv", "drugprot_sample_entities.tsv",  # DrugProt's spelling
                          "drugprot_sample_relations.tsv")}
    verbs = [("inhibited", "INHIBITOR", "CPR:4", "Y"), ("activated", "ACTIVATOR", "CPR:3", "Y"),
             ("is a substrate of", "SUBSTRATE", "CPR:9", "Y"), ("was found alongside", "PART-OF", "CPR:1", "N")]
    for form, (abstracts_name, entities_name, relations_name) in forms.items():
        abstracts, entities, relations = [], [], []
        for k in range(5):
            pmid = str((7000 if form == "chemprot" else 7100) + k)
            chem, chem2, gene, gene2 = *rng.sample(DRUGS, 2), *rng.sample(GENES, 2)
            verb, name, group, flag = rng.choice(verbs)
            title = f"{chem.capitalize()} and {gene} in cultured cells."
            abstract = (f"In vitro, {chem} {verb} {gene}. {chem2.capitalize()} had no effect on {gene2} expression, "
                        f"and {gene} levels did not change.")
            text = title + "\t" + abstract  # the releases' offsets count the tab between title and abstract
            abstracts.append(f"{pmid}\t{title}\t{abstract}")
            mentions = [(chem.capitalize(), "CHEMICAL", 0), (gene, "GENE-Y", 0), (chem, "CHEMICAL", len(title)),
                        (gene, "GENE-Y", len(title)), (chem2.capitalize(), "CHEMICAL", len(title)),
                        (gene2, "GENE-N", len(title))]
            for i, (m, typ, after) in enumerate(mentions, 1):
                s = text.index(m, after)
                typ = typ if form == "chemprot" else typ.split("-")[0]
                entities.append(f"{pmid}\tT{i}\t{typ}\t{s}\t{s + len(m)}\t{m}")
            if form == "chemprot":  # group, evaluated flag (the release writes "N " with a space), name
                relations.append(f"{pmid}\t{group}\t{flag + ' ' if flag == 'N' else flag}\t{name}\tArg1:T3\tArg2:T4")
            else:
                relations.append(f"{pmid}\t{name}\tArg1:T3\tArg2:T4")
        for file_name, rows in zip((abstracts_name, entities_name, relations_name), (abstracts, entities, relations)):
            write(out / form / file_name, "\n".join(rows) + "\n")


def make_dc(out: Path, rng: random.Random) -> None:
    """Document classification in the releases' own formats: MTSamples' Kaggle CSV, the i2b2 2006 smoking and 2008
    obesity XML files and n2c2 2018 cohort XML files (one per patient)."""
    import csv
    import io
    from xml.sax.saxutils import escape, quoteattr

    cues = {"Cardiology": "chest pain and an abnormal ECG", "Neurology": "recurrent seizures and headache",
            "Orthopedics": "a fractured left tibia"}
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(["", "description", "medical_specialty", "sample_name", "transcription", "keywords"])
    for k in range(12):
        spec = list(cues)[k % 3]
        drug = rng.choice(DRUGS)
        # quoted fields with commas and a line break inside, the label with MTSamples' leading space
        note = (f"HISTORY:,  The patient presented with {cues[spec]}.\nPLAN:,  Start {drug}, follow-up in two weeks."
                if k != 7 else "")  # MTSamples has rows without a transcription
        rows.writerow([k, f" Visit for {cues[spec]}.", f" {spec}", f" {spec} Visit {k} ", note,
                       f"{spec.lower()}, {drug}"])
    write(out / "dc" / "mtsamples_sample.csv", buf.getvalue())

    statuses = ["CURRENT SMOKER", "PAST SMOKER", "NON-SMOKER", "UNKNOWN"]
    habit = {"CURRENT SMOKER": "She smokes one pack per day.", "PAST SMOKER": "He quit smoking ten years ago.",
             "NON-SMOKER": "She has never smoked.", "UNKNOWN": "Social history was not obtained."}
    records = []
    for k in range(8):
        status = statuses[k % 4]
        text = f"\nAdmission note.\nThe patient was admitted with {rng.choice(DISEASES)}.\n{habit[status]}\n"
        records.append(f'<RECORD ID="{300 + k}">\n<SMOKING STATUS="{status}"></SMOKING>\n<TEXT>{escape(text)}</TEXT>\n'
                       "</RECORD>")
    write(out / "dc" / "i2b2_2006_smoking_sample.xml", "<ROOT>\n" + "\n".join(records) + "\n</ROOT>\n")

    diseases = {"Asthma": "asthma treated with an inhaler", "CAD": "coronary artery disease after a stent",
                "Diabetes": "type 2 diabetes on insulin", "OSA": "sleep apnea using CPAP at night"}
    docs, judged = [], {}
    for k in range(6):
        present = rng.sample(list(diseases), rng.choice([1, 2]))
        text = "Discharge summary.\nHistory of " + " and ".join(diseases[d] for d in present) + ".\n"
        docs.append(f'<doc id="{k + 1}">\n<text>{escape(text)}</text>\n</doc>')
        for d in diseases:
            judged.setdefault(d, []).append((k + 1, "Y" if d in present else "N"))

    def standoff(judgments: dict) -> str:
        body = "".join("<disease name=" + quoteattr(d) + ">\n" + "".join(
            f'<doc id="{i}" judgment="{j}"/>\n' for i, j in js) + "</disease>\n" for d, js in judgments.items())
        return f'<diseaseset>\n<diseases source="intuitive">\n{body}</diseases>\n</diseaseset>\n'

    folder = out / "dc" / "i2b2_2008_obesity"
    write(folder / "obesity_patient_records_sample.xml", "<root>\n<docs>\n" + "\n".join(docs) + "\n</docs>\n</root>\n")
    # the first judgment file has record 6's asthma wrong; the addendum corrects it (read after it, by name)
    wrong = {d: [(i, {"Y": "N", "N": "Y"}[j] if (i, d) == (6, "Asthma") else j) for i, j in js]
             for d, js in judged.items()}
    write(folder / "obesity_standoff_annotations_sample.xml", standoff(wrong))
    write(folder / "obesity_standoff_annotations_sample_addendum.xml",
          standoff({"Asthma": [(6, dict(judged["Asthma"])[6])]}))

    # SemEval-2024 Task 2 (NLI4CT): statements about one trial report or two, reports in "CT json/<NCT id>.json"
    trials, nli_rng = {}, random.Random(20261125)  # its own generator: the cohort files below stay as they were
    for k, (drug, dis) in enumerate(zip(nli_rng.sample(DRUGS, 3), nli_rng.sample(DISEASES, 3))):
        nct, n, events = f"NCT9000000{k + 1}", 40 + 10 * k, 3 + k
        trials[nct] = (drug, dis, n, events)
        write(out / "dc" / "nli4ct" / "CT json" / f"{nct}.json", json.dumps({
            "Clinical Trial ID": nct,
            "Intervention": ["INTERVENTION 1: ", f"  {drug.capitalize()} arm",
                             f"  Oral {drug} once daily for 12 weeks."],
            "Eligibility": ["Inclusion Criteria:", f"  Adults with {dis}.", "Exclusion Criteria:", "  Pregnancy."],
            "Results": ["Outcome Measurement: ", "  Response rate at 12 weeks",
                        f"  Overall Number of Participants: {n}"],
            "Adverse Events": ["Adverse Events 1:", f"  Total: {events}/{n}", f"  Nausea 2/{n}"]},
            indent=1) + "\n")
    (a, ta), (b, tb), (c, tc) = trials.items()
    statements = {
        "s1": ("Single", "Intervention", a, None, f"The primary trial gives {ta[0]} by mouth.", "Entailment"),
        "s2": ("Single", "Eligibility", b, None, f"Patients with {tb[1]} are excluded from the primary trial.",
               "Contradiction"),
        "s3": ("Single", "Adverse Events", c, None,
               f"More than {tc[3]} patients had adverse events in the primary trial.", "Contradiction"),
        "s4": ("Comparison", "Results", a, b, "The secondary trial enrolled more participants than the primary trial.",
               "Entailment"),
        "s5": ("Comparison", "Intervention", b, c, f"Both trials give {tb[0]}.", "Contradiction"),
        "s6": ("Comparison", "Eligibility", c, a, "Pregnant patients are excluded from both trials.", "Entailment"),
    }
    write(out / "dc" / "nli4ct" / "train.json", json.dumps({
        uuid: {"Type": typ, "Section_id": sec, "Primary_id": p1, **({"Secondary_id": p2} if p2 else {}),
               "Statement": st, "Label": lab} for uuid, (typ, sec, p1, p2, st, lab) in statements.items()},
        indent=1) + "\n")

    criteria = {"ABDOMINAL": "had a small bowel resection in 2010", "ENGLISH": "speaks English at home",
                "HBA1C": "had an HbA1c of 7.2 % last month", "DRUG-ABUSE": "reports past cocaine use"}
    for k in range(5):
        met = rng.sample(list(criteria), rng.choice([0, 1, 2]))
        text = "\nRecord date: 2090-01-0" + str(k + 1) + "\nThe patient " + (
            " and ".join(criteria[c] for c in met) if met else "came for a routine visit") + ".\n"
        tags = "".join(f'<{c} met="{"met" if c in met else "not met"}" />\n' for c in criteria)
        write(out / "dc" / "n2c2_2018_cohort" / f"{100 + k}.xml",
              f'<?xml version="1.0" encoding="UTF-8" ?>\n<PatientMatching>\n<TEXT><![CDATA[{text}]]></TEXT>\n'
              f"<TAGS>\n{tags}</TAGS>\n</PatientMatching>\n")


def make_euadr(out: Path, rng: random.Random) -> None:
    """EU-ADR as the IBI group distributes it: one tab-separated file per pair kind, quoted fields, sentence offsets,
    PA/NA/SA/FA associations, and Latin-1 like the release (a gene name with "ü")."""
    header = ["ASSOCIATION_TYPE", "PMID", "NUM_SENTENCE", "ENTITY1_TEXT", "ENTITY1_INI", "ENTITY1_END",
              "ENTITY1_TYPE", "ENTITY2_TEXT", "ENTITY2_INI", "ENTITY2_END", "ENTITY2_TYPE", "SENTENCE"]
    genes = GENES[:4] + ["Krüppel-like factor 4"]
    rows = []
    for k in range(6):
        gene, drug, other = rng.choice(genes), *rng.sample(DRUGS, 2)
        sentence = f"{drug.capitalize()} inhibited {gene} in vitro, while {other} was given to all patients."
        pmid = str(9100 + k // 2)
        for assoc, d in (("PA" if k % 3 else "SA", drug.capitalize()), ("FA", other)):
            g0, d0 = sentence.index(gene), sentence.index(d)
            rows.append([assoc, pmid, str(k % 2), gene, str(g0), str(g0 + len(gene)), "Genes & Molecular Sequences",
                         d, str(d0), str(d0 + len(d)), "Chemicals & Drugs", sentence])
    quoted = ['"' + c + '"' if not c.isdigit() else c for c in header]  # the release quotes text, not numbers
    lines = ["\t".join(quoted)] + ["\t".join(c if c.isdigit() else f'"{c}"' for c in r) for r in rows]
    path = out / "euadr" / "EUADR_drug_target.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def make_pico_data(out: Path, rng: random.Random) -> None:
    """PICO-data's release: abstracts in docs/<docid>.txt, Participants spans (character offsets) per annotator in
    annotations/<split>/*.json, one object per line: the crowd's aggregations, or the medical student."""
    agg, professional = [], []
    for k in range(4):
        docid = str(6100 + k)
        dis, drug = rng.choice(DISEASES), rng.choice(DRUGS)
        group = f"{40 + 5 * k} adults with {dis}"
        text = f"{drug.capitalize()} for {dis}: a randomised trial.\n\nWe enrolled {group}.\nOutcomes were recorded.\n"
        start = text.index(group)
        write(out / "pico_data" / "docs" / f"{docid}.txt", text)
        # the HMM aggregation takes the line break after the span too; majority vote drops the age group
        spans = {"HMMCrowd": [[start, start + len(group) + 2]], "DawidSkene": [[start, start + len(group)]],
                 "MajorityVote": [[start + len(group.split(" with ")[0]) - 6, start + len(group)]]}
        agg.append(json.dumps({"Participants": spans, "docid": docid}))
        professional.append(json.dumps({"Participants": {"MedicalStudent": [[start, start + len(group)]]} if k
                                        else {}, "docid": docid}))  # {}: the student marked nothing
    write(out / "pico_data" / "annotations" / "train" / "PICO-annos-crowdsourcing-agg.json", "\n".join(agg) + "\n")
    write(out / "pico_data" / "annotations" / "acl17-test" / "PICO-annos-professional.json",
          "\n".join(professional) + "\n")


def make_deid(out: Path, rng: random.Random) -> None:
    """The i2b2 de-identification releases: 2014's one XML per note (CDATA text, PHI tags with offsets; one note
    with CRLF line ends whose offsets count the CR) and 2006's one XML of RECORDs with the PHI inline."""
    from xml.sax.saxutils import escape, quoteattr

    names, hospitals = ["Jane Roe", "John Doe", "Ann Smith"], ["Lakeside Hospital", "Hillview Clinic"]
    records = []
    for k in range(3):
        patient, doctor = rng.sample(names, 2)
        hospital, date, nl = rng.choice(hospitals), f"2090-0{k + 1}-1{k}", "\r\n" if k == 2 else "\n"
        parts = [("Record date: ", None), (date, ("DATE", "DATE")),
                 (f"{nl}{rng.choice(DISEASES).capitalize()} in ", None),
                 (patient, ("NAME", "PATIENT")), (", seen by Dr. ", None), (doctor, ("NAME", "DOCTOR")),
                 (" at ", None), (hospital, ("LOCATION", "HOSPITAL")), (f".{nl}", None)]
        text, tags = "", []
        for piece, tag in parts:
            if tag:
                tags.append(f'<{tag[0]} id="P{len(tags)}" start="{len(text)}" end="{len(text) + len(piece)}" '
                            f'text={quoteattr(piece)} TYPE="{tag[1]}" comment="" />')
            text += piece
        xml = (f'<?xml version="1.0" encoding="UTF-8" ?>\n<deIdi2b2>\n<TEXT><![CDATA[{text}]]></TEXT>\n<TAGS>\n'
               + "\n".join(tags) + "\n</TAGS>\n</deIdi2b2>\n")
        path = out / "i2b2_2014_deid" / f"{200 + k}-01.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(xml.encode("utf-8"))  # as is: no newline translation
        inline = "".join(f'<PHI TYPE="{tag[1]}">{escape(piece)}</PHI>' if tag
                         else escape(piece.replace("\r\n", "\n")) for piece, tag in parts)
        records.append(f'<RECORD ID="{400 + k}">\n<TEXT>\n{inline}</TEXT>\n</RECORD>')
    write(out / "i2b2_2006_deid" / "deid_surrogate_sample.xml", "<ROOT>\n" + "\n".join(records) + "\n</ROOT>\n")


def make_summ_releases(out: Path, rng: random.Random) -> None:
    """Summarisation in the releases' own layouts: ACI-Bench's CSV (dataset, encounter_id, dialogue, note; quoted
    fields with line breaks and commas) and the PubMed long-document JSONL (sentence lists, <S>-wrapped abstract)."""
    import csv
    import io

    buf = io.StringIO()
    table = csv.writer(buf, lineterminator="\n")
    table.writerow(["dataset", "encounter_id", "dialogue", "note"])
    pubmed = []
    for k in range(3):
        dis, drug = rng.choice(DISEASES), rng.choice(DRUGS)
        dialogue = (f"[doctor] hi , how are you feeling ?\n[patient] not great , my {dis} is back .\n"
                    f"[doctor] okay , let's restart {drug} , twice a day .")
        note = f"CHIEF COMPLAINT\n\n{dis.capitalize()}.\n\nPLAN\n\nRestart {drug}, twice daily."
        table.writerow(["aci", f"D2N9{k:02d}", dialogue, note])
        pubmed.append(json.dumps({
            "article_id": f"PMC9{k:03d}", "section_names": ["introduction", "results"],
            "article_text": [f"{dis} is common .", f"we gave {drug} to {30 + k} patients .", "symptoms improved ."],
            "abstract_text": [f"<S> {drug} improved symptoms of {dis} . </S>", "<S> adverse events were rare . </S>"],
            "sections": [[f"{dis} is common ."], [f"we gave {drug} to {30 + k} patients .", "symptoms improved ."]]}))
    write(out / "summ" / "aci_bench_sample.csv", buf.getvalue())
    write(out / "summ" / "pubmed_long_sample.txt", "\n".join(pubmed) + "\n")


def make_summ_pairs(out: Path, rng: random.Random) -> None:
    """Line-aligned `.source` / `.target` / `.doi` files, the layout CDSR's preprocessing script (and the Cochrane
    simplification release) write: a review abstract per line, its plain-language summary on the same line of
    the target file."""
    sources, targets, dois = [], [], []
    for k in range(3):
        dis, drug = rng.choice(DISEASES), rng.choice(DRUGS)
        n = rng.randint(3, 12)
        sources.append(f"Background: {dis.capitalize()} is common. Objectives: To assess {drug} for {dis}. "
                       f"Main results: We included {n} trials; {drug} reduced symptoms (moderate-certainty evidence).")
        targets.append(f"We found {n} studies. {drug.capitalize()} probably helps people with {dis} feel better.")
        dois.append(f"10.1002/14651858.CD9{k:05d}" + (".pub2" if k == 1 else ""))
    for suffix, lines in (("source", sources), ("target", targets), ("doi", dois)):
        write(out / "summ" / "cdsr" / f"train.{suffix}", "\n".join(lines) + "\n")


def make_medication_2009(out: Path) -> None:
    """The i2b2 2009 medication layout: extension-less records and their entries files (`<id>.m`,
    `<id>_gold.entries`), with the release's habits: lower-cased mention texts, a token carrying a full stop the
    annotation leaves out, "..."-joined parts, a range over a line end, a stray third "|", and a record without
    entries (never annotated)."""
    folder = out / "i2b2_2009_medication"
    write(folder / "900101", "Admission Date : 01/02/2090\nDISCHARGE MEDICATIONS :\n1. Aspirin 81 mg p.o. daily .\n"
                             "2. Metoprolol 25 mg p.o. b.i.d. for\nhypertension .\n"
                             "She was started on heparin for anticoagulation.\n")
    write(folder / "900101.m",
          'm="aspirin" 3:1 3:1||do="81 mg" 3:2 3:3||mo="p.o." 3:4 3:4||f="daily" 3:5 3:5||du="nm"||r="nm"||e="nm"||'
          't="nm"||c="nm"||ln="list"\n'
          'm="metoprolol" 4:1 4:1||do="25 mg" 4:2 4:3||mo="p.o." 4:4 4:4||f="b.i.d." 4:5 4:5||du="nm"||'
          'r="hypertension" 5:0 5:0||e="nm"||t="nm"||c="nm"||ln="list"\n'
          'm="heparin" 6:4 6:4||do="nm"||mo="nm"||f="nm"||du="nm"||r="anticoagulation" 6:6 6:6||e="start"||'
          't="past"||c="factual"||ln="narrative"\n')
    write(folder / "900102", "Lasix 40 mg IV\ntwice daily for three days ... then\nonce daily .\n"
                             "Coumadin 5 mg nightly for atrial\nfibrillation .\n")
    write(folder / "900102_gold.entries",
          'm="lasix" 1:0 1:0||do="40 mg" 1:1 1:2||mo="iv" 1:3 1:3||f="twice daily...once daily" 2:0 2:1,3:0 3:1||'
          'du="three days" 2:3 2:4||r="nm"|||ln="narrative"\n'
          'm="coumadin" 4:0 4:0||do="5 mg" 4:1 4:2||mo="nm"||f="nightly" 4:3 4:3||du="nm"||'
          'r="atrial fibrillation" 4:5 5:0||ln="narrative"\n')
    write(folder / "900103", "No medications were discussed .\n")


def make_coref_2011(out: Path) -> None:
    """The i2b2/VA 2011 coreference layout: one tree per source (Beth, Partners) with docs/<id>.txt,
    concepts/<id>.txt.con and chains/<id>.txt.chains; lower-cased concept texts, a chain listed out of text order,
    a word broken over a line end that the concept writes whole, and a README beside the records."""
    beth, partners = out / "i2b2_2011_coref" / "Beth_Train", out / "i2b2_2011_coref" / "Partners_Train"
    write(out / "i2b2_2011_coref" / "README.txt", "Synthetic records in the i2b2/VA 2011 coreference layout.\n")
    write(beth / "docs" / "clinical-901.txt",
          "Admission Date : 03/04/2091\n"
          "HISTORY OF PRESENT ILLNESS : Mr. Doe is a 67 year old man with hypertension .\n"
          "He was admitted for chest pain . His chest pain resolved after nitroglycerin .\n"
          "A chest x-ray was negative . The x-ray showed no effusion .\n")
    write(beth / "concepts" / "clinical-901.txt.con", "\n".join([
        'c="mr. doe" 2:5 2:6||t="person"', 'c="a 67 year old man" 2:8 2:12||t="person"',
        'c="hypertension" 2:14 2:14||t="problem"', 'c="he" 3:0 3:0||t="pronoun"', 'c="chest pain" 3:4 3:5||t="problem"',
        'c="his" 3:7 3:7||t="pronoun"', 'c="his chest pain" 3:7 3:9||t="problem"',
        'c="nitroglycerin" 3:12 3:12||t="treatment"', 'c="a chest x-ray" 4:0 4:2||t="test"',
        'c="the x-ray" 4:6 4:7||t="test"', 'c="effusion" 4:10 4:10||t="problem"']) + "\n")
    write(beth / "chains" / "clinical-901.txt.chains", "\n".join([
        'c="mr. doe" 2:5 2:6||c="a 67 year old man" 2:8 2:12||c="he" 3:0 3:0||c="his" 3:7 3:7||t="coref person"',
        'c="chest pain" 3:4 3:5||c="his chest pain" 3:7 3:9||t="coref problem"',
        'c="the x-ray" 4:6 4:7||c="a chest x-ray" 4:0 4:2||t="coref test"']) + "\n")
    write(partners / "docs" / "report-902.txt",
          "Patient is a 54 year old woman with diabetes mellitus . She takes metformin . Her dia-\n"
          "betes is controlled . Metformin was continued .\n")
    write(partners / "concepts" / "report-902.txt.con", "\n".join([
        'c="patient" 1:0 1:0||t="person"', 'c="a 54 year old woman" 1:2 1:6||t="person"',
        'c="diabetes mellitus" 1:8 1:9||t="problem"', 'c="she" 1:11 1:11||t="pronoun"',
        'c="metformin" 1:13 1:13||t="treatment"', 'c="her" 1:15 1:15||t="pronoun"',
        'c="her dia-betes" 1:15 2:0||t="problem"', 'c="metformin" 2:4 2:4||t="treatment"']) + "\n")
    write(partners / "chains" / "report-902.txt.chains", "\n".join([
        'c="patient" 1:0 1:0||c="a 54 year old woman" 1:2 1:6||c="she" 1:11 1:11||c="her" 1:15 1:15||'
        't="coref person"',
        'c="diabetes mellitus" 1:8 1:9||c="her dia-betes" 1:15 2:0||t="coref problem"',
        'c="metformin" 1:13 1:13||c="metformin" 2:4 2:4||t="coref treatment"']) + "\n")


def make_trialstop(out: Path, rng: random.Random) -> None:
    """TrialStop as its Hub dataset holds it (read with `reader: hf_dataset`): a JSON line per trial with the
    "why stopped" text and the list of its classes."""
    reasons = [("Enrollment was slower than planned.", ["Insufficient_Enrollment"]),
               ("The sponsor decided to end the program.", ["Business_Administrative"]),
               ("Stopped after the interim analysis showed no benefit.", ["Interim_Analysis", "Negative"]),
               ("Drug supply was interrupted and the site closed.", ["Logistics_Resources"]),
               ("Two participants had serious liver toxicity.", ["Safety_Sideeffects"])]
    lines = [json.dumps({"nct_id": f"NCT9{k:07d}", "text": text, "label_descriptions": labels})
             for k, (text, labels) in enumerate(rng.sample(reasons, len(reasons)))]
    write(out / "dc" / "trialstop_sample.jsonl", "\n".join(lines) + "\n")


def make_bionli(out: Path, rng: random.Random) -> None:
    """BioNLI as its authors publish it (pandas CSV: supp_set, conclusion, abstract, label_cat, ori_conclusion, pmid,
    index): per abstract the tagged conclusion ("pos") and perturbations of it, among them a tag swap (SET)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["supp_set", "conclusion", "abstract", "label_cat", "ori_conclusion", "pmid", "index"])
    for k in range(4):
        gene, target = rng.sample(GENES, 2)
        dose = rng.choice([5, 10, 20])
        premise = (f"Knockdown of {gene} lowered {target} levels by {dose * 3} percent in cultured cells. "
                   f"In mice, {gene} deficiency reduced {target} expression, and a {dose} mg/kg rescue restored it.")
        conclusion = f"<re> {gene} <er> promotes the expression of <el> {target} <le> at {dose} mg/kg."
        perturbed = {
            "LPR": conclusion.replace("promotes", "inhibits"),
            "SEN": f"<re> {target} <er> promotes the expression of <el> {gene} <le> at {dose} mg/kg.",
            "swap_number": conclusion.replace(f"at {dose} mg", f"at {dose * 3} mg"),
            "SET": f"<el> {gene} <le> promotes the expression of <re> {target} <er> at {dose} mg/kg.",
            "posToNeg": conclusion.replace("promotes", "does not promote"),
        }
        rows = [("pos", conclusion)] + [(cat, perturbed[cat]) for cat in rng.sample(sorted(perturbed), 3 + k % 2)]
        for cat, hyp in rows:
            w.writerow([premise, hyp, f"{premise} <exp> {hyp}", cat, conclusion, 91000 + k, k])
    write(out / "nli" / "bionli_sample.csv", buf.getvalue())


def make_pubmed_pico(out: Path, rng: random.Random) -> None:
    """PubMed PICO (Jin and Szolovits 2018) as its split files hold it: `###<PMID>`, then a sentence per line as
    `<section heading>|<label>|<sentence>`, numbers written as @."""
    lines = []
    for k in range(4):
        drug, dis = rng.choice(DRUGS), rng.choice(DISEASES)
        sents = [("OBJECTIVE", "A", f"To assess whether {drug} improves control of {dis}."),
                 ("METHODS", "M", "We ran a randomised, double-blind trial at @ centres."),
                 ("PARTICIPANTS", "P", f"Adults aged @ to @ years with {dis} were enrolled."),
                 ("INTERVENTIONS", "I", f"Patients received {drug} @ mg daily or placebo for @ weeks."),
                 ("MAIN OUTCOME MEASURES", "O", f"The primary outcome was the change in {dis} severity score."),
                 ("RESULTS", "R", f"The score fell by @ points with {drug} and by @ with placebo."),
                 ("CONCLUSIONS", "C", f"{drug.capitalize()} improved control of {dis}.")]
        if k % 2:  # not every abstract states every element
            sents = [s for s in sents if s[1] != "I"]
        lines += [f"###{24000000 + 17 * k}"] + ["|".join(s) for s in sents] + [""]
    write(out / "pubmed_pico" / "PICO_train.txt", "\n".join(lines))


def make_ner_jsonlines(out: Path, rng: random.Random) -> None:
    """GENIA-like nested mentions in the biaffine-NER jsonlines layout (Yu et al. 2020): a document per line, its
    sentences as token lists, its mentions per sentence as [start, end, type] token indices (end inclusive) within
    that sentence; a protein inside a DNA or RNA mention, a sentence without mentions."""
    lines = []
    for k in range(4):
        gene, cell, dna = rng.choice(GENES), rng.choice(CELLS), rng.choice(["binding site", "promoter", "enhancer"])
        d, c = len(dna.split()), len(cell.split())
        s1 = [gene, *dna.split(), "activity", "was", "measured", "in", *cell.split(), "."]
        ners1 = [[0, d, "DNA"], [0, 0, "protein"], [d + 5, d + 4 + c, "cell_type"]]
        line = rng.choice(["HeLa", "Jurkat", "U937"])
        s2 = ["Levels", "of", gene, "mRNA", "rose", "in", line, "cells", "."]
        ners2 = [[2, 3, "RNA"], [2, 2, "protein"], [6, 7, "cell_line"]]
        s3 = ["No", "further", "changes", "were", "seen", "."]
        sentences, ners = ([s1, s2, s3], [ners1, ners2, []]) if k % 2 == 0 else ([s3, s2], [[], ners2])
        lines.append(json.dumps({"doc_key": f"ge/train/{k + 1:04d}", "ners": ners, "sentences": sentences}))
    write(out / "ner_jsonlines" / "train.genia.jsonlines", "\n".join(lines) + "\n")


def make_i2b2(out: Path, rng: random.Random) -> None:
    for k in range(4):
        prob, test, treat = rng.choice(DISEASES), rng.choice(TESTS), rng.choice(DRUGS)
        lines = [f"Admission diagnosis : {prob} .", f"A {test} was obtained .", f"He was given {treat} for {prob} ."]
        text = "\n".join(lines) + "\n"

        def pos(line_no, phrase):
            toks = lines[line_no - 1].split()
            ptoks = phrase.split()
            for i in range(len(toks)):
                if toks[i:i + len(ptoks)] == ptoks:
                    return f"{line_no}:{i} {line_no}:{i + len(ptoks) - 1}"
            raise ValueError(phrase)

        con = [f'c="{prob}" {pos(1, prob)}||t="problem"', f'c="{test}" {pos(2, test)}||t="test"',
               f'c="{treat}" {pos(3, treat)}||t="treatment"', f'c="{prob}" {pos(3, prob)}||t="problem"']
        rel = [f'c="{treat}" {pos(3, treat)}||r="TrAP"||c="{prob}" {pos(3, prob)}']
        write(out / "i2b2_2010" / "txt" / f"record{k}.txt", text)
        write(out / "i2b2_2010" / "concept" / f"record{k}.con", "\n".join(con) + "\n")
        write(out / "i2b2_2010" / "rel" / f"record{k}.rel", "\n".join(rel) + "\n")
        # 2012 temporal XML (1-based offsets, as in some releases)
        t = f"Admission Date : 2020-0{k + 1}-12\n{prob.capitalize()} was treated with {treat} .\n"
        ev1, ev2 = t.index(prob.capitalize()), t.index(treat)
        tx = t.index("2020")
        xml = (f'<?xml version="1.0" encoding="UTF-8" ?>\n<ClinicalNarrativeTemporalAnnotation>\n<TEXT><![CDATA[{t}]]></TEXT>\n<TAGS>\n'
               f'<EVENT id="E0" start="{ev1 + 1}" end="{ev1 + len(prob) + 1}" text="{prob.capitalize()}" modality="FACTUAL" polarity="POS" type="PROBLEM" />\n'
               f'<EVENT id="E1" start="{ev2 + 1}" end="{ev2 + len(treat) + 1}" text="{treat}" modality="FACTUAL" polarity="POS" type="TREATMENT" />\n'
               f'<TIMEX3 id="T0" start="{tx + 1}" end="{tx + 11}" text="2020-0{k + 1}-12" type="DATE" val="2020-0{k + 1}-12" mod="NA" />\n'
               f'<TLINK id="TL0" fromID="E1" fromText="{treat}" toID="E0" toText="{prob}" type="OVERLAP" />\n'
               f'<TLINK id="TL1" fromID="E0" fromText="{prob}" toID="T0" toText="date" type="AFTER" />\n'
               "</TAGS>\n</ClinicalNarrativeTemporalAnnotation>\n")
        write(out / "i2b2_2012" / f"record{k}.xml", xml)


def make_qa_nli_sts(out: Path, rng: random.Random) -> None:
    pqa, gt = {}, {}
    for k in range(12):
        drug, dis = rng.choice(DRUGS), rng.choice(DISEASES)
        dec = ["yes", "no", "maybe"][k % 3]
        finding = {"yes": f"{drug} significantly reduced the severity of {dis}",
                   "no": f"{drug} had no measurable effect on {dis}",
                   "maybe": f"results for {drug} in {dis} were mixed and inconclusive"}[dec]
        pmid = str(7000 + k)
        pqa[pmid] = {"QUESTION": f"Does {drug} improve outcomes in {dis}?",
                     "CONTEXTS": [f"We studied {40 + k} patients with {dis}.", f"In this trial, {finding}."],
                     "LABELS": ["METHODS", "RESULTS"], "MESHES": [], "YEAR": "2020", "reasoning_required_pred": dec,
                     "reasoning_free_pred": dec, "final_decision": dec, "LONG_ANSWER": finding}
        if k >= 4:
            gt[pmid] = dec
    write(out / "pubmedqa" / "ori_pqal.json", json.dumps(pqa, indent=1))
    write(out / "pubmedqa" / "test_ground_truth.json", json.dumps(gt, indent=1))
    rows = ["id\tquestion\tpassage\tlabel"] if False else []
    for k in range(8):
        gene, dis = rng.choice(GENES), rng.choice(DISEASES)
        yes = k % 2 == 0
        passage = f"Mutations in {gene} were {'frequently' if yes else 'never'} detected in patients with {dis}."
        rows.append(f"bioasq{k}\tIs {gene} mutated in {dis}?\t{passage}\t{'yes' if yes else 'no'}")
    write(out / "bioasq" / "test.tsv", "\n".join(rows) + "\n")
    for name, n in [("snli_sample", 30), ("mednli_test", 12)]:
        lines = []
        for k in range(n):
            dis, drug = rng.choice(DISEASES), rng.choice(DRUGS)
            lab = ["entailment", "neutral", "contradiction"][k % 3]
            hyp = {"entailment": f"The patient has {dis}.", "neutral": f"The patient's {dis} is hereditary.",
                   "contradiction": f"The patient has never had {dis}."}[lab]
            if name == "snli_sample" and k == n - 1:
                lab = "-"  # no annotator consensus, as in SNLI
            lines.append(json.dumps({"sentence1": f"The patient was admitted for {dis} and received {drug}.",
                                     "sentence2": hyp, "gold_label": lab, "pairID": f"{name}-{k}"}))
        write(out / "nli" / f"{name}.jsonl", "\n".join(lines) + "\n")
    for name, scale, n in [("stsb_sample", 5, 24), ("biosses_test", 4, 10)]:
        lines = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        for k in range(n):
            g1, g2 = rng.sample(GENES, 2)
            score = round(rng.uniform(0, scale), 1)
            s2 = {True: f"{g1} regulates cell growth in tumors.", False: f"{g2} is expressed in the liver."}[score > scale / 2]
            lines.append(f"{k}\tsynthetic\tnone\t2024\t{k}\tnone\tnone\t{g1} controls the growth of tumor cells.\t{s2}\t{score}")
        write(out / "sts" / f"{name}.tsv", "\n".join(lines) + "\n")


def make_blue(out: Path, rng: random.Random) -> None:
    sets = {
        "chemprot": (["CPR:3", "CPR:4", "CPR:5", "CPR:6", "CPR:9", "false"], "@CHEMICAL$", "@GENE$",
                     {"CPR:3": "activates", "CPR:4": "inhibits", "CPR:5": "is an agonist of", "CPR:6": "is an antagonist of",
                      "CPR:9": "is metabolized by", "false": "was measured alongside"}),
        "ddi": (["DDI-advise", "DDI-effect", "DDI-int", "DDI-mechanism", "DDI-false"], "@DRUG$", "@DRUG$",
                {"DDI-advise": "should not be combined with", "DDI-effect": "increases the sedative effect of",
                 "DDI-int": "interacts with", "DDI-mechanism": "raises plasma levels of", "DDI-false": "and"}),
        "gad": (["1", "0"], "@GENE$", "@DISEASE$", {"1": "polymorphisms are associated with", "0": "was not linked to"}),
        "i2b2_2010_re": (["TrIP", "TrWP", "TrCP", "TrAP", "TrNAP", "TeRP", "TeCP", "PIP", "false"], "@treatment$", "@problem$",
                         {"TrIP": "improved", "TrWP": "worsened", "TrCP": "caused", "TrAP": "was given for",
                          "TrNAP": "was stopped because of", "TeRP": "revealed", "TeCP": "was ordered to evaluate",
                          "PIP": "was complicated by", "false": "was noted with"}),
    }
    for name, (labels, m1, m2, verbs) in sets.items():
        for split, n in [("train", 3 * len(labels)), ("test", 2 * len(labels))]:
            lines = ["index\tsentence\tlabel"]
            for k in range(n):
                lab = labels[k % len(labels)]
                a = m1 if not name.startswith("i2b2") or not lab.startswith("Te") else "@test$"
                b = m2 if lab != "PIP" else "@problem$"
                a = "@problem$" if lab == "PIP" else a
                lines.append(f"{name}-{split}-{k}\t{a} {verbs[lab]} {b} in the reported patients .\t{lab}")
            write(out / "blue_re" / f"{name}_{split}.tsv", "\n".join(lines) + "\n")
    # BLUE's and BLURB's own HoC form beside the generic one: a row per sentence, labels k_v in BLUE's
    # alphabetical hallmark order, index <pmid>_s<i>
    blue_order = sorted(HALLMARKS)
    for split, n in [("train", 20), ("test", 10)]:
        lines, blue_lines = ["pmid\ttext\tlabels"], ["labels\tsentence\tindex"]
        for k in range(n):
            hs = rng.sample(HALLMARKS, rng.choice([0, 1, 1, 2]))
            gene = rng.choice(GENES)
            sentences = [(f"Loss of {gene} {HALLMARK_CUES[h]}.", {h}) for h in hs] or [
                (f"{gene} expression was measured in tissue samples.", set())]
            body = " ".join(t for t, _ in sentences)
            lines.append(f"{8000 + k}\t{body}\t{';'.join(hs)}")
            for i, (t, hk) in enumerate(sentences):
                flags = ",".join(f"{j}_{int(h in hk)}" for j, h in enumerate(blue_order))
                blue_lines.append(f"{flags}\t{t}\t{8000 + k}_s{i}")
        write(out / "hoc" / f"{split}.tsv", "\n".join(lines) + "\n")
        write(out / "hoc" / f"{split}_blue_form.tsv", "\n".join(blue_lines) + "\n")
    summ = []
    for k in range(8):
        drug, dis = rng.choice(DRUGS), rng.choice(DISEASES)
        summ.append(json.dumps({"id": f"s{k}", "text": f"In a trial of {60 + k} adults with {dis}, {drug} was compared with "
                                f"placebo for six months. Symptoms improved in the {drug} group and adverse events were rare.",
                                "summary": f"{drug.capitalize()} improved symptoms of {dis} with few adverse events."}))
    write(out / "summ" / "pubmedsum_sample.jsonl", "\n".join(summ) + "\n")


EVAL_LAYOUT = {  # eval-set layout of `mnlu-jax build-eval --data-root` <- sample file
    "BC2GM-IOB/train.tsv": "iob/gene/train.tsv", "BC2GM-IOB/test.tsv": "iob/gene/test.tsv",
    "BC5CDR-chem-IOB/train.tsv": "iob/chemical/train.tsv", "BC5CDR-chem-IOB/test.tsv": "iob/chemical/test.tsv",
    "BC5CDR-disease-IOB/train.tsv": "iob/disease/train.tsv", "BC5CDR-disease-IOB/test.tsv": "iob/disease/test.tsv",
    "NCBI-disease-IOB/train.tsv": "iob/disease/train.tsv", "NCBI-disease-IOB/test.tsv": "iob/disease/test.tsv",
    "JNLPBA/train.tsv": "iob/jnlpba/train.tsv", "JNLPBA/test.tsv": "iob/jnlpba/test.tsv",
    "ebmnlp/test.tsv": "pico/test.tsv", "HoC/test.tsv": "hoc/test_blue_form.tsv",
    "pubmedqa/ori_pqal.json": "pubmedqa/ori_pqal.json", "pubmedqa/test_ground_truth.json": "pubmedqa/test_ground_truth.json",
    "BioASQ/test.tsv": "bioasq/test.tsv", "GAD/test.tsv": "blue_re/gad_test.tsv", "DDI/test.tsv": "blue_re/ddi_test.tsv",
    "ChemProt/test.tsv": "blue_re/chemprot_test.tsv", "i2b2-2010/test.tsv": "blue_re/i2b2_2010_re_test.tsv",
    "mednli/mli_test_v1.jsonl": "nli/mednli_test.jsonl", "BIOSSES/test.tsv": "sts/biosses_test.tsv",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "samples"))
    out = Path(ap.parse_args().out)
    rng = random.Random(20241122)
    for f in (make_iob, make_pico, make_brat, make_bioc, make_pubtator, make_i2b2, make_qa_nli_sts, make_blue):
        f(out, rng)
    make_chemprot(out, random.Random(20261123))  # its own generator: the samples above stay as they were
    make_dc(out, random.Random(20261124))
    make_euadr(out, random.Random(20261126))
    make_pico_data(out, random.Random(20261127))
    make_deid(out, random.Random(20261128))
    make_summ_releases(out, random.Random(20261129))
    make_summ_pairs(out, random.Random(20261130))
    make_medication_2009(out)
    make_ner_jsonlines(out, random.Random(20261205))
    make_coref_2011(out)
    make_trialstop(out, random.Random(20261206))
    make_bionli(out, random.Random(20261207))
    make_pubmed_pico(out, random.Random(20261208))
    eval_root = out.parent / "eval_samples"
    for dst, src in EVAL_LAYOUT.items():
        write(eval_root / dst, (out / src).read_text(encoding="utf-8"))
    print(f"wrote samples under {out} and the eval layout under {eval_root}")


if __name__ == "__main__":
    main()
