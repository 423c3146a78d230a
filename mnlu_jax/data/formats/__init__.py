"""Readers for native corpus formats. Each returns interchange documents (see data/schema.py).

READERS maps the name used in mixer/eval configs to the reader function `reader(path, **options)`.
"""

from mnlu_jax.data.formats.bioc import read_bioc
from mnlu_jax.data.formats.bionli import read_bionli_csv
from mnlu_jax.data.formats.brat import read_brat
from mnlu_jax.data.formats.chemprot import read_chemprot_tsv
from mnlu_jax.data.formats.classification import (read_classification_csv, read_i2b2_2006_smoking,
                                                  read_i2b2_2008_obesity, read_n2c2_2018_cohort, read_nli4ct)
from mnlu_jax.data.formats.conll import read_ebmnlp, read_iob, read_pico_tsv
from mnlu_jax.data.formats.euadr import read_euadr_csv
from mnlu_jax.data.formats.hf import read_hf_dataset
from mnlu_jax.data.formats.i2b2 import (read_i2b2_2006_deid, read_i2b2_2009_medication, read_i2b2_2010,
                                        read_i2b2_2011_coref, read_i2b2_2012, read_i2b2_2014_deid)
from mnlu_jax.data.formats.jsonfmt import read_ner_jsonlines, read_nli_jsonl, read_pico_data, read_pubmedqa
from mnlu_jax.data.formats.pubmed_pico import read_pubmed_pico
from mnlu_jax.data.formats.pubtator import read_pubtator
from mnlu_jax.data.formats.tsv import (read_blue_re, read_classification_tsv, read_hoc_tsv, read_qa_tsv,
                                       read_sts_tsv, read_summ_csv, read_summ_jsonl, read_summ_pair)

READERS = {
    "iob": read_iob,
    "pico_tsv": read_pico_tsv,
    "ebmnlp": read_ebmnlp,
    "brat": read_brat,
    "bioc": read_bioc,
    "pubtator": read_pubtator,
    "chemprot_tsv": read_chemprot_tsv,
    "euadr_csv": read_euadr_csv,
    "i2b2_2010": read_i2b2_2010,
    "i2b2_2011_coref": read_i2b2_2011_coref,
    "i2b2_2012": read_i2b2_2012,
    "i2b2_2006_deid": read_i2b2_2006_deid,
    "i2b2_2009_medication": read_i2b2_2009_medication,
    "i2b2_2014_deid": read_i2b2_2014_deid,
    "pubmedqa": read_pubmedqa,
    "pico_data": read_pico_data,
    "pubmed_pico": read_pubmed_pico,
    "ner_jsonlines": read_ner_jsonlines,
    "nli_jsonl": read_nli_jsonl,
    "bionli_csv": read_bionli_csv,
    "blue_re": read_blue_re,
    "classification_tsv": read_classification_tsv,
    "classification_csv": read_classification_csv,
    "i2b2_2006_smoking": read_i2b2_2006_smoking,
    "i2b2_2008_obesity": read_i2b2_2008_obesity,
    "n2c2_2018_cohort": read_n2c2_2018_cohort,
    "nli4ct": read_nli4ct,
    "hoc_tsv": read_hoc_tsv,
    "sts_tsv": read_sts_tsv,
    "qa_tsv": read_qa_tsv,
    "summ_jsonl": read_summ_jsonl,
    "summ_csv": read_summ_csv,
    "summ_pair": read_summ_pair,
    "hf_dataset": read_hf_dataset,
}
