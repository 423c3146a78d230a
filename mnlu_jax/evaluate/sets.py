"""The 15 BLURB/BLUE test sets in the unified format (`mnlu-jax build-eval`).

Expected layout under --data-root (the public file formats; see the README for where to get each; BLURB's own
directory names, BC2GM/ BC5CDR-chem/ BC5CDR-disease/ NCBI-disease/ chemprot/, are read too):

    BC2GM-IOB/test.tsv  BC5CDR-chem-IOB/test.tsv  BC5CDR-disease-IOB/test.tsv  NCBI-disease-IOB/test.tsv
    JNLPBA/test.tsv     ebmnlp/test.tsv (BLURB PICO)    HoC/test.tsv    pubmedqa/ori_pqal.json + test_ground_truth.json
    BioASQ/test.tsv     GAD/test.tsv    DDI/test.tsv    ChemProt/test.tsv    i2b2-2010/test.tsv (restricted)
    mednli/mli_test_v1.jsonl (restricted)    BIOSSES/test.tsv
NER sets read `train.tsv` beside `test.tsv` for n-shot examples. Missing files are skipped with a line saying
which file was expected where.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from mnlu_jax.data import labels as L
from mnlu_jax.data import tasks as T
from mnlu_jax.data.formats import READERS
from mnlu_jax.config import write_text_atomic
from mnlu_jax.data.schema import DataError, Instance, read_json_object, read_text, write_jsonl


@dataclasses.dataclass(frozen=True)
class EvalSet:
    name: str                 # as printed in Table 5
    benchmarks: tuple[str, ...]
    task: str                 # NER PICO DC QA RE NLI STS
    metric: str
    files: tuple[str, ...]    # relative to data root; the first is the test file
    paper_count: int
    count_unit: str           # mentions | tokens | documents | questions | pairs
    build: Callable[..., list[Instance]] = dataclasses.field(compare=False, repr=False, default=None)
    restricted: bool = False


def _ner(types: list[str], type_map: dict[str, str] | None = None, default_type: str | None = None):
    def build(root: Path, es: "EvalSet", shots: int, seed: int) -> list[Instance]:
        test = READERS["iob"](root / es.files[0], default_type=default_type, type_map=type_map)
        set_types = types
        if default_type and default_type not in types and {e["type"] for d in test for e in d["entities"]} == {
                default_type}:
            set_types = [default_type]  # an untyped file where a typed one was expected (BLURB's JNLPBA)
        train = None
        if shots:
            train_path = (root / es.files[0]).with_name("train.tsv")
            if not train_path.exists():
                raise FileNotFoundError(f"{es.name}: n-shot needs {train_path}")
            train = READERS["iob"](train_path, default_type=default_type, type_map=type_map)
        out = []
        for d in test:
            sh = T.ner_shots(train, es.name, set_types, seed, None, k=shots, exclude_id=d["id"]) if shots else ()
            out.append(T.ner_instance(d, es.name, set_types, seed, shots=sh))
        return out
    return build


def _pico(root, es, shots, seed):
    docs = READERS["pico_tsv"](root / es.files[0])
    return [T.ner_instance(d, es.name, ["Participants", "Interventions", "Outcomes"], seed, scoring_type="PICO")
            for d in docs]


def _hoc(root, es, shots, seed):
    # BLUE's and BLURB's own form (labels, sentence, index) or the generic id/text/labels TSV
    head = {h.strip() for h in read_text(root / es.files[0]).split("\n", 1)[0].lower().split("\t")}
    reader = "hoc_tsv" if {"labels", "sentence", "index"} <= head else "classification_tsv"
    docs = READERS[reader](root / es.files[0])
    return T.dc_instances(docs, es.name, L.HOC_HALLMARKS, "cancer hallmark", seed)


def _pubmedqa(root, es, shots, seed):
    docs = READERS["pubmedqa"](root / es.files[0], ground_truth=root / es.files[1])
    return T.qa_instances(docs, es.name, seed)


def _bioasq(root, es, shots, seed):
    return T.qa_instances(READERS["qa_tsv"](root / es.files[0]), es.name, seed)


def _re(relation_set: str):
    def build(root, es, shots, seed):
        return T.re_masked_instances(READERS["blue_re"](root / es.files[0]), es.name, relation_set, seed)
    return build


def _mednli(root, es, shots, seed):
    inst, _ = T.nli_instances(READERS["nli_jsonl"](root / es.files[0]), es.name, seed)
    return inst


def _biosses(root, es, shots, seed):
    return T.sts_instances(READERS["sts_tsv"](root / es.files[0]), es.name, "biosses", seed)


JNLPBA_TYPES = {"protein": "Protein", "cell_type": "Cell type", "RNA": "RNA", "cell_line": "Cell line", "DNA": "DNA"}
# BLURB's JNLPBA files tag B/I/O without the type (BLURB scores the five types as one)
JNLPBA_UNTYPED = "Protein, DNA, RNA, cell line or cell type"
EVAL_SETS: list[EvalSet] = [
    EvalSet("BC2GM", ("blurb",), "NER", "Entity-level F1", ("BC2GM-IOB/test.tsv",), 6322, "mentions", _ner(["Gene"], default_type="Gene")),
    EvalSet("BC5-chemical", ("blurb", "blue"), "NER", "Entity-level F1", ("BC5CDR-chem-IOB/test.tsv",), 5385, "mentions",
            _ner(["Chemical"], default_type="Chemical")),
    EvalSet("BC5-disease", ("blurb", "blue"), "NER", "Entity-level F1", ("BC5CDR-disease-IOB/test.tsv",), 4424, "mentions",
            _ner(["Disease"], default_type="Disease")),
    EvalSet("NCBI-disease", ("blurb",), "NER", "Entity-level F1", ("NCBI-disease-IOB/test.tsv",), 955, "mentions",
            _ner(["Disease"], default_type="Disease")),
    EvalSet("JNLPBA", ("blurb",), "NER", "Entity-level F1", ("JNLPBA/test.tsv",), 8657, "mentions",
            _ner(list(JNLPBA_TYPES.values()), type_map=JNLPBA_TYPES, default_type=JNLPBA_UNTYPED)),
    EvalSet("EBM PICO", ("blurb",), "PICO", "Token-level F1", ("ebmnlp/test.tsv",), 24474, "tokens", _pico),
    EvalSet("HoC", ("blurb", "blue"), "DC", "F1", ("HoC/test.tsv",), 315, "documents", _hoc),
    EvalSet("PubMedQA", ("blurb",), "QA", "Acc", ("pubmedqa/ori_pqal.json", "pubmedqa/test_ground_truth.json"), 500,
            "questions", _pubmedqa),
    EvalSet("BioASQ", ("blurb",), "QA", "Acc", ("BioASQ/test.tsv",), 263, "questions", _bioasq),
    EvalSet("GAD", ("blurb",), "RE", "F1", ("GAD/test.tsv",), 534, "pairs", _re("gad")),
    EvalSet("DDI", ("blurb", "blue"), "RE", "F1", ("DDI/test.tsv",), 5761, "pairs", _re("ddi")),
    EvalSet("ChemProt", ("blurb", "blue"), "RE", "F1", ("ChemProt/test.tsv",), 14744, "pairs", _re("chemprot")),
    EvalSet("i2b2-2010", ("blue",), "RE", "F1", ("i2b2-2010/test.tsv",), 6292, "pairs", _re("i2b2_2010"), restricted=True),
    EvalSet("MedNLI", ("blue",), "NLI", "Acc", ("mednli/mli_test_v1.jsonl",), 1422, "pairs", _mednli, restricted=True),
    EvalSet("BioSSES", ("blurb", "blue"), "STS", "Pearson Corr", ("BIOSSES/test.tsv",), 20, "pairs", _biosses),
]
BY_NAME = {e.name: e for e in EVAL_SETS}


def gold_count(es: EvalSet, instances: list[Instance]) -> int:
    if es.count_unit == "mentions":
        return sum(len(v) for i in instances for v in i.gold["entities"].values())
    if es.count_unit == "tokens":
        return sum(len(s.split()) for i in instances for v in i.gold["entities"].values() for s in v)
    return len(instances)


# BLURB's release names some directories differently from MTL-Bioinformatics-2016 and BLUE; either layout is read
BLURB_DIRS = {"BC2GM-IOB": "BC2GM", "BC5CDR-chem-IOB": "BC5CDR-chem", "BC5CDR-disease-IOB": "BC5CDR-disease",
              "NCBI-disease-IOB": "NCBI-disease", "ChemProt": "chemprot"}


def _blurb_name(root: Path, file: str) -> str:
    top, _, rest = file.partition("/")
    alt = f"{BLURB_DIRS[top]}/{rest}" if top in BLURB_DIRS else file
    return alt if not (root / file).exists() and (root / alt).exists() else file


def build_eval(benchmark: str, data_root: str | Path, out: str | Path, shots: int = 0, seed: int = 0,
               names: list[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Write `<out>/<name>.jsonl` per available set and `<out>/manifest.json` (counts beside the paper's)."""
    if benchmark not in ("blurb", "blue", "all"):
        raise ValueError(f"benchmark {benchmark!r}: expected blurb, blue or all")
    if shots < 0:
        raise ValueError(f"shots {shots}: expected 0 (zero-shot) or more in-context examples")
    root, out = Path(data_root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {root}: no such directory (expected the eval files' folders, e.g. "
                                f"{root}/BC2GM-IOB/test.tsv)")
    unknown = sorted(set(names or ()) - {es.name for es in EVAL_SETS})
    if unknown:
        raise ValueError(f"eval sets {unknown}: not among {[es.name for es in EVAL_SETS]}")
    manifest = {"benchmark": benchmark, "shots": shots, "seed": seed, "sets": {}, "skipped": {}}
    for es in EVAL_SETS:
        if benchmark != "all" and benchmark not in es.benchmarks:
            continue
        if names and es.name not in names:
            continue
        es = dataclasses.replace(es, files=tuple(_blurb_name(root, f) for f in es.files))
        missing = [str(root / f) for f in es.files if not (root / f).exists()]
        if missing:
            why = "restricted: supply it under its data use agreement" if es.restricted else "not found"
            log(f"skip {es.name}: expected {missing[0]} ({why})")
            manifest["skipped"][es.name] = missing
            continue
        inst = es.build(root, es, shots if es.task == "NER" else 0, seed)
        if not inst:  # a set of none would be decoded and scored as 0 without a word
            raise DataError(f"{es.name}: {', '.join(str(root / f) for f in es.files)} gave no instances (an empty or "
                            "cut-off file?); nothing written")
        fname = es.name.replace(" ", "_") + ".jsonl"
        write_jsonl(out / fname, inst)
        n = gold_count(es, inst)
        manifest["sets"][es.name] = {"file": fname, "instances": len(inst), "gold_count": n, "count_unit": es.count_unit,
                                     "paper_count": es.paper_count, "task": es.task, "metric": es.metric,
                                     "benchmarks": list(es.benchmarks)}
        log(f"{es.name:14s} {len(inst):6d} instances, gold {n} {es.count_unit} (paper: {es.paper_count})")
    if not manifest["sets"]:
        raise FileNotFoundError(f"{root}: none of the {len(manifest['skipped'])} eval sets asked for is there "
                                "(the lines above name the file each expected); nothing written")
    out.mkdir(parents=True, exist_ok=True)
    # written last and whole: its presence is what says the sets are built (evaluate, pipeline)
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


MANIFEST_SET_KEYS = ("file", "instances", "gold_count")


def read_manifest(path: str | Path) -> dict[str, dict]:
    """build-eval's manifest.json -> its "sets" (name -> file, instances, gold_count, ...); a missing file, a file
    that is not JSON or a set without the keys the readers use is an error naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest (build-eval writes manifest.json beside the sets)")
    sets = read_json_object(path, "build-eval's manifest (an object with \"sets\")").get("sets")
    if not isinstance(sets, dict):
        raise DataError(f"{path}: sets: expected an object of eval sets (name -> file, instances, gold_count), got "
                        f"{type(sets).__name__ if sets is not None else 'nothing'}")
    for name, info in sets.items():
        missing = [k for k in MANIFEST_SET_KEYS if not isinstance(info, dict) or k not in info]
        if missing:
            raise DataError(f"{path}: sets.{name}: expected keys {list(MANIFEST_SET_KEYS)}, missing {missing}")
    return sets
