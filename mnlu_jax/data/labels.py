"""Label names, expansions and option wordings: one place for training, evaluation and the golden tests.

Relation options are templates over the two entity spans ({e1}, {e2}); the paper's Table 1 example
answer is "(C) 'stress' causes 'headache'.".
"""

from __future__ import annotations

# Abbreviated labels expanded to what they mean (paper: "from 'GENERIF' to 'Gene reference into a function
# (function of a gene)'"). Dataset label maps override or extend this.
EXPANSIONS = {
    "GENERIF": "Gene reference into a function (function of a gene)",
    "PAR": "Participants", "INT": "Interventions", "OUT": "Outcomes",
    "ADE": "Adverse drug event", "DNA": "DNA", "RNA": "RNA", "cell_line": "Cell line", "cell_type": "Cell type",
    "protein": "Protein", "problem": "Medical problem", "test": "Medical test", "treatment": "Treatment",
    "Chemical": "Chemical", "Disease": "Disease", "Gene": "Gene",
    "GeneOrGeneProduct": "Gene or gene product", "DiseaseOrPhenotypicFeature": "Disease or phenotypic feature",
    "ChemicalEntity": "Chemical entity", "SequenceVariant": "Sequence variant", "OrganismTaxon": "Organism taxon",
    "CellLine": "Cell line", "DNAMutation": "DNA mutation", "ProteinMutation": "Protein mutation", "SNP": "SNP",
    "PHI": "Protected health information", "TIMEX3": "Temporal expression", "EVENT": "Clinical event",
    # ChemProt / DrugProt entity types
    "CHEMICAL": "Chemical", "GENE": "Gene", "GENE-Y": "Gene (normalizable)",
    "GENE-N": "Gene (not normalizable)",
    # GNormPlus's corpus annotates gene families and protein domains beside genes
    "FamilyName": "Gene family", "DomainMotif": "Protein domain or motif",
    # i2b2 2009 medication fields (formats/i2b2.py), and an entry's links from its medication to them
    "Mode": "Mode of administration",
    "has_dosage": "is taken at the dosage", "has_mode": "is taken by the route",
    "has_frequency": "is taken with the frequency", "has_duration": "is taken for the duration",
    "has_reason": "is taken for the reason",
    # i2b2 2011 coreference: its concept types besides 2010's, and its chains as relations to the mention before
    "person": "Person", "pronoun": "Pronoun",
    "coref person": "refers to the same person as", "coref problem": "refers to the same medical problem as",
    "coref test": "refers to the same medical test as", "coref treatment": "refers to the same treatment as",
    "coref pronoun": "refers to the same thing as", "coreference": "refers to the same thing as",
}
# ChemProt's CPR groups and DrugProt's relation types, read from their own releases (formats/chemprot.py), are
# worded as the verb of an option "'{e1}' <expansion> '{e2}'." (the chemical first, the gene second).
EXPANSIONS.update({
    "CPR:1": "is part of", "CPR:2": "regulates", "CPR:3": "upregulates or activates",
    "CPR:4": "downregulates or inhibits", "CPR:5": "is an agonist of", "CPR:6": "is an antagonist of",
    "CPR:7": "modulates", "CPR:8": "is a cofactor of", "CPR:9": "is a substrate or product of",
    "CPR:10": "is stated not to interact with",
    "INHIBITOR": "is an inhibitor of", "ACTIVATOR": "is an activator of", "AGONIST": "is an agonist of",
    "ANTAGONIST": "is an antagonist of", "AGONIST-ACTIVATOR": "is an agonist that activates",
    "AGONIST-INHIBITOR": "is an agonist that inhibits", "DIRECT-REGULATOR": "directly regulates",
    "INDIRECT-UPREGULATOR": "indirectly upregulates", "INDIRECT-DOWNREGULATOR": "indirectly downregulates",
    "SUBSTRATE": "is a substrate of", "PRODUCT-OF": "is a product of",
    "SUBSTRATE_PRODUCT-OF": "is a substrate and a product of", "PART-OF": "is part of",
})
# PHI types and categories of the i2b2 2006 and 2014 de-identification releases (formats/i2b2.py)
EXPANSIONS.update({
    "NAME": "Name", "PROFESSION": "Profession", "LOCATION": "Location", "AGE": "Age", "DATE": "Date",
    "CONTACT": "Contact", "HOSPITAL": "Hospital", "ORGANIZATION": "Organization", "ROOM": "Room",
    "DEPARTMENT": "Department", "STREET": "Street", "CITY": "City", "STATE": "State", "COUNTRY": "Country",
    "URL": "URL", "OTHER": "Other",
    "PATIENT": "Patient name", "DOCTOR": "Doctor name", "USERNAME": "Username", "ID": "Identifier",
    "IDNUM": "Identification number", "MEDICALRECORD": "Medical record number", "HEALTHPLAN": "Health plan number",
    "ACCOUNT": "Account number", "LICENSE": "License number", "SSN": "Social security number",
    "VEHICLE": "Vehicle identifier", "DEVICE": "Device identifier", "BIOID": "Biometric identifier",
    "PHONE": "Phone number", "FAX": "Fax number", "EMAIL": "Email address", "IPADDR": "IP address",
    "ZIP": "ZIP code", "LOCATION-OTHER": "Other location",
})
# Document classification labels of the clinical corpora, read from their own releases (formats/classification.py)
EXPANSIONS.update({
    # i2b2 2006 smoking status
    "CURRENT SMOKER": "Current smoker", "PAST SMOKER": "Past smoker", "NON-SMOKER": "Non-smoker",
    "SMOKER": "Smoker, current or past not stated", "UNKNOWN": "Smoking status not stated",
    # i2b2 2008 obesity comorbidities (the rest are plain names)
    "CAD": "Coronary artery disease", "CHF": "Congestive heart failure", "GERD": "Gastroesophageal reflux disease",
    "OA": "Osteoarthritis", "OSA": "Obstructive sleep apnea", "PVD": "Peripheral vascular disease",
    # n2c2 2018 cohort selection criteria
    "ABDOMINAL": "History of intra-abdominal surgery, intestinal resection or small bowel obstruction",
    "ADVANCED-CAD": "Advanced coronary artery disease", "ALCOHOL-ABUSE": "Alcohol use over weekly recommended limits",
    "ASP-FOR-MI": "Aspirin taken to prevent myocardial infarction",
    "CREATININE": "Serum creatinine above the upper limit of normal",
    "DIETSUPP-2MOS": "Dietary supplement (not vitamin D) in the past 2 months",
    "DRUG-ABUSE": "Drug abuse, current or past", "ENGLISH": "Speaks English", "HBA1C": "HbA1c between 6.5 % and 9.5 %",
    "KETO-1YR": "Ketoacidosis diagnosed in the past year", "MAJOR-DIABETES": "Major diabetes-related complication",
    "MAKES-DECISIONS": "Makes their own medical decisions", "MI-6MOS": "Myocardial infarction in the past 6 months",
    # TrialStop (Open Targets' classes of why a trial stopped early; worded after their own short names). Its plain
    # words (Negative, Regulatory, Success) are left to the mix's label_map: another corpus may use them otherwise.
    "Another_Study": "Another study", "Business_Administrative": "Business or administrative reasons",
    "Covid19": "COVID-19", "Endpoint_Met": "Endpoint met", "Ethical_Reason": "Ethical reasons",
    "Insufficient_Data": "Insufficient data", "Insufficient_Enrollment": "Insufficient enrollment",
    "Interim_Analysis": "Interim analysis", "Invalid_Reason": "Invalid reason",
    "Logistics_Resources": "Logistics or resources", "No_Context": "No context given",
    "Safety_Sideeffects": "Safety or side effects", "Study_Design": "Study design",
    "Study_Staff_Moved": "Study staff moved",
    # SemEval-2024 Task 2 (NLI4CT): the statement against the trial reports
    "Entailment": "The trial report supports the statement",
    "Contradiction": "The trial report contradicts the statement",
})
# BioRED's relation types (between concepts; one direction is given, the options read it as "'e1' ... 'e2'.")
EXPANSIONS.update({
    "Association": "is associated with", "Positive_Correlation": "is positively correlated with",
    "Negative_Correlation": "is negatively correlated with", "Bind": "binds to",
    "Cotreatment": "is given in combination with", "Comparison": "is compared with",
    "Drug_Interaction": "has a drug interaction with", "Conversion": "is converted to",
})

# ---- relation extraction -----------------------------------------------------------------------------
NO_RELATION = "There is no relation between '{e1}' and '{e2}'."
RE_OPTIONS: dict[str, dict[str, str]] = {
    "chemprot": {
        "CPR:3": "'{e1}' upregulates or activates '{e2}'.",
        "CPR:4": "'{e1}' downregulates or inhibits '{e2}'.",
        "CPR:5": "'{e1}' is an agonist of '{e2}'.",
        "CPR:6": "'{e1}' is an antagonist of '{e2}'.",
        "CPR:9": "'{e1}' is a substrate or product of '{e2}'.",
        "false": NO_RELATION,
    },
    "ddi": {
        "DDI-advise": "An advice or recommendation is given about using '{e1}' together with '{e2}'.",
        "DDI-effect": "The interaction of '{e1}' and '{e2}' has a described effect.",
        "DDI-int": "'{e1}' interacts with '{e2}', with no further detail.",
        "DDI-mechanism": "'{e1}' and '{e2}' interact through a pharmacokinetic mechanism.",
        "DDI-false": NO_RELATION,
    },
    "gad": {
        "1": "'{e1}' is associated with '{e2}'.",
        "0": NO_RELATION,
    },
    "i2b2_2010": {
        "TrIP": "The treatment '{e1}' improves the medical problem '{e2}'.",
        "TrWP": "The treatment '{e1}' worsens the medical problem '{e2}'.",
        "TrCP": "The treatment '{e1}' causes the medical problem '{e2}'.",
        "TrAP": "The treatment '{e1}' is administered for the medical problem '{e2}'.",
        "TrNAP": "The treatment '{e1}' is not administered because of the medical problem '{e2}'.",
        "TeRP": "The test '{e1}' reveals the medical problem '{e2}'.",
        "TeCP": "The test '{e1}' is conducted to investigate the medical problem '{e2}'.",
        "PIP": "The medical problem '{e1}' indicates the medical problem '{e2}'.",
        "false": NO_RELATION,
    },
}
# BLUE masks entity mentions; the mask names the entity type.
MASK_TYPES = {"@GENE$": "Gene", "@DISEASE$": "Disease", "@CHEMICAL$": "Chemical", "@DRUG$": "Drug",
              "@problem$": "Medical problem", "@test$": "Medical test", "@treatment$": "Treatment",
              # one mask for two overlapping mentions (BLUE's ChemProt and DDI, e.g. a chemical inside a gene name)
              "@CHEM-GENE$": ("Chemical", "Gene"), "@DRUG-DRUG$": ("Drug", "Drug")}

# ---- document classification ------------------------------------------------------------------------
HOC_HALLMARKS = [
    "Sustaining proliferative signaling", "Evading growth suppressors", "Resisting cell death",
    "Enabling replicative immortality", "Inducing angiogenesis", "Activating invasion and metastasis",
    "Genomic instability and mutation", "Tumor promoting inflammation", "Cellular energetics",
    "Avoiding immune destruction",
]

# ---- NLI, QA, STS -----------------------------------------------------------------------------------
NLI_OPTIONS = {"entailment": "Entails", "neutral": "Neutral", "contradiction": "Contradicts"}
QA_OPTIONS = {"yes": "yes", "no": "no", "maybe": "maybe"}

# Ordinal similarity definitions from the sources (BIOSSES 0-4; SemEval STS 0-5 for STS-B).
STS_DEFINITIONS = {
    "biosses": [
        "The two sentences are on different topics",
        "The two sentences are not equivalent, but are on the same topic",
        "The two sentences are not equivalent, but share some details",
        "The two sentences are roughly equivalent, but some important information differs or is missing",
        "The two sentences are completely or mostly equivalent, as they mean the same thing",
    ],
    "stsb": [
        "The two sentences are on different topics",
        "The two sentences are not equivalent, but are on the same topic",
        "The two sentences are not equivalent, but share some details",
        "The two sentences are roughly equivalent, but some important information differs or is missing",
        "The two sentences are mostly equivalent, but some unimportant details differ",
        "The two sentences are completely equivalent, as they mean the same thing",
    ],
}


def sts_options(scale: str) -> list[str]:
    if scale not in STS_DEFINITIONS:
        raise ValueError(f"STS scale {scale!r}: expected one of {sorted(STS_DEFINITIONS)}")
    return [f"{d} (score {i})." for i, d in enumerate(STS_DEFINITIONS[scale])]


def expand(label: str, label_map: dict[str, str] | None = None) -> str:
    if label_map and label in label_map:
        return label_map[label]
    return EXPANSIONS.get(label, label)


# Negative-class keys that the paper's Overall row leaves out (evaluation.py).
NEGATIVE_MARKERS = ("no", "not mentioned", "not related to", "cannot be", "none")
