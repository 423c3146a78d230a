"""Task builders: interchange documents -> Instances in the paper's unified format (Table 1).

Table 1 wording (user message; `{options}` are lettered lines `(A) ...`, shuffled per instance):
  NER/ETE  Extract all relevant medical named entities from the medical text below. Focus on identifying
           following entities: {type_1}, {type_2}, ....\\nMedical text: {text}
  EAE      What is the {type} attribute of the {trigger} '{span}' in the medical text below?\\nMedical text: {text}
  EAC      What is the {type} attribute of the {trigger} '{span}' in the medical text below?\\nMedical text: {text}\\n{options}
  DC       Which options best describe {subject} from the medical text below?\\nMedical text: {text}\\n{options}
  RE       What is the relation between the {type_1} entity '{span_1}' and the {type_2} entity '{span_2}' from the
           medical text below?\\nMedical text: {text}\\n{options}
  QA       {question}\\nMedical text: {text}\\n{options}
  NLI      What is the relation between the premise and hypothesis? Premise: {premise}. Hypothesis: {hypothesis}\\n{options}
  STS      How similar are the two sentences below? Sentence 1: {sentence_1}. Sentence 2: {sentence_2}.\\n{options}
Answers: token tasks give one line per label, `Label: span1 ... span2` in text order (`Label: None` when
empty); sequence tasks give the chosen option line(s), e.g. `(C) Contradicts`; EAE/EAC prefix the line with
`{trigger} - {type}: `; STS options carry the source's score definitions.

`style="medtuned"` renders the same content in the Llama2-MedTuned (Alpaca) form instead:
`### Instruction:` (one of several paraphrases) / `### Input:` / `### Output:` with `token : B/I/O` NER answers.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Any, Sequence

from mnlu_jax.data import labels as L
from mnlu_jax.data.schema import DataError, Instance

SYSTEM_PROMPT = "You are a medical natural language understanding assistant. Answer in the requested format."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NER_FORMAT_EXPLANATION = (
    "Output format: one line per entity type, written as 'Type: span'. Separate several spans of the same "
    "type with ' ... ' in the order they appear, and write 'Type: None' when the text has no span of that type."
)
MEDTUNED_INSTRUCTIONS = {
    "NER": [
        "In the given text, identify the named entities of these types: {types}. Label each token with B (beginning), I (inside) or O (outside).",
        "Your task is to tag every token of the input for the entity types {types}, using the B, I and O scheme.",
        "Find mentions of {types} in the text below and mark each token as B, I or O.",
    ],
    "SEQ": [
        "Read the input and choose the correct option(s) from the following list:\n{options}",
        "This is a classification task. Assign the right label from these options:\n{options}",
        "Select the option that best answers the input:\n{options}",
    ],
    "SUM": ["Summarize the following medical text.", "Write a short summary of the input text."],
}
# Family used by the paper's scorer (evaluation.py task names).
SCORING_TYPE = {"NER": "events", "ETE": "events", "EAE": "events", "EAC": "other classification", "DC": "other classification",
                "RE": "other classification", "QA": "QA", "NLI": "NLI", "STS": "STS", "SUM": "summarization"}


def instance_rng(seed: int, dataset: str, key: str) -> random.Random:
    """A generator that depends only on (seed, dataset, instance key): shuffles are reproducible per instance."""
    return random.Random(zlib.crc32(f"{seed}|{dataset}|{key}".encode()))


def format_options(options: Sequence[str]) -> list[str]:
    return [f"({LETTERS[i]}) {o}" for i, o in enumerate(options)]


def _messages(user: str, answer: str | None, system: bool = True) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    msgs.append({"role": "user", "content": user})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def _sentence(text: str) -> str:
    return text.strip().rstrip(".")


# ---------------------------------------------------------------------------------------------------------
# Token classification: NER / ETE / EAE
# ---------------------------------------------------------------------------------------------------------
def mention_text(entity: dict) -> str:
    """A mention as a prompt or an answer names it: its parts joined, every run of whitespace one space (a mention
    over a line end stays on its answer line, inside its option, inside its quotes)."""
    return " ".join(" ".join(entity["text"]).split())


def span_lines(entities: list[dict], types: Sequence[str], names: dict[str, str], prefix: str = "") -> tuple[str, dict]:
    """Answer lines `Name: s1 ... s2` per type (in `types` order), spans in text order (as `mention_text`); and the
    gold dict."""
    by_type: dict[str, list[tuple[int, str]]] = {t: [] for t in types}
    for e in entities:
        if e["type"] in by_type:
            by_type[e["type"]].append((e["offsets"][0][0], mention_text(e)))
    lines, gold = [], {}
    for t in types:
        spans = [s for _, s in sorted(by_type[t], key=lambda x: x[0])]
        name = names.get(t, t)
        gold[name] = spans
        lines.append(f"{prefix}{name}: {' ... '.join(spans) if spans else 'None'}")
    return "\n".join(lines), gold


def ner_instance(doc: dict, dataset: str, types: Sequence[str], seed: int = 0, label_map: dict | None = None,
                 task: str = "NER", shots: Sequence[tuple[str, str]] = (), style: str = "mnlu",
                 scoring_type: str | None = None) -> Instance:
    rng = instance_rng(seed, dataset, doc["id"])
    order = list(types)
    rng.shuffle(order)
    names = {t: L.expand(t, label_map) for t in order}
    answer, gold_spans = span_lines(doc["entities"], order, names)
    gold = {"entities": gold_spans,
            "offsets": [[names[e["type"]], e["offsets"][0][0], e["offsets"][-1][1]]
                        for e in doc["entities"] if e["type"] in names]}
    if style == "medtuned":
        return _medtuned_ner(doc, dataset, order, names, gold, task)
    instr = ("Extract all relevant medical named entities from the medical text below. Focus on identifying "
             f"following entities: {', '.join(names[t] for t in order)}.")
    if shots:
        instr += " " + NER_FORMAT_EXPLANATION
        for k, (t, a) in enumerate(shots, 1):
            instr += f"\nExample {k}:\nMedical text: {t}\nAnswer:\n{a}"
    user = f"{instr}\nMedical text: {doc['text']}"
    return Instance(id=f"{dataset}-{doc['id']}", dataset=dataset, task=task,
                    type=scoring_type or SCORING_TYPE[task], options=[names[t] for t in order],
                    messages=_messages(user, answer), gold=gold)


def _medtuned_ner(doc, dataset, order, names, gold, task) -> Instance:
    rng = instance_rng(0, dataset, doc["id"] + "#instr")
    tokens = doc.get("tokens") or doc["text"].split()
    # token -> tag from offsets (tokens are space-joined in IOB docs; else whitespace tokens of the text)
    spans = []
    pos = 0
    for tok in tokens:
        s = doc["text"].find(tok, pos)
        spans.append((s, s + len(tok)))
        pos = s + len(tok)
    tags = ["O"] * len(tokens)
    single = len(order) == 1
    for e in doc["entities"]:
        if e["type"] not in names:
            continue
        s, t = e["offsets"][0][0], e["offsets"][-1][1]
        inside = [i for i, (a, b) in enumerate(spans) if a >= s and b <= t]
        for j, i in enumerate(inside):
            tag = "B" if j == 0 else "I"
            tags[i] = tag if single else f"{tag}-{names[e['type']]}"
    instr = rng.choice(MEDTUNED_INSTRUCTIONS["NER"]).format(types=", ".join(names[t] for t in order))
    output = "\n".join(f"{tok} : {tag}" for tok, tag in zip(tokens, tags))
    user = f"### Instruction:\n{instr}\n\n### Input:\n{doc['text']}\n\n### Output:"
    return Instance(id=f"{dataset}-{doc['id']}", dataset=dataset, task=task, type="medtuned-ner",
                    options=[names[t] for t in order], messages=_messages(user, output, system=False),
                    gold={**gold, "bio": tags})


def ner_instances(docs: list[dict], dataset: str, types: Sequence[str] | None = None, seed: int = 0,
                  label_map: dict | None = None, style: str = "mnlu", **kw: Any) -> list[Instance]:
    types = list(types) if types else sorted({e["type"] for d in docs for e in d["entities"]})
    if not types:
        raise DataError(f"{dataset}: no entity types given and none found in the documents")
    known = set(types)
    unknown = sorted({e["type"] for d in docs for e in d["entities"]} - known)
    if unknown and kw.pop("strict_types", True):
        raise DataError(f"{dataset}: entity types {unknown} are not among the configured types {sorted(known)}")
    return [ner_instance(d, dataset, types, seed, label_map, style=style, **kw) for d in docs]


def event_instances(docs: list[dict], dataset: str, seed: int = 0, label_map: dict | None = None,
                    attribute_values: dict[str, list[str]] | None = None) -> list[Instance]:
    """ETE (triggers as NER), EAE (argument spans per role) and EAC (attribute values as options). Events without
    a trigger (SeeDev's n-ary relations) have no span to ask about and are left out (`build` counts them)."""
    out: list[Instance] = []
    docs = [dict(d, events=[ev for ev in d["events"] if ev["trigger"] is not None]) for d in docs]
    trig_types = sorted({next(e["type"] for e in d["entities"] if e["id"] == ev["trigger"])
                         for d in docs for ev in d["events"]})
    values: dict[str, set] = {}
    for d in docs:
        for a in d["attributes"]:
            values.setdefault(a["type"], set()).add(str(a["value"]))
    if attribute_values:
        values.update({k: set(v) for k, v in attribute_values.items()})
    # Flags, attributes without a value (brat `M1 Negation E1`; BioNLP-ST's Negation and Speculation), are asked as
    # yes/no of the events that carry them and of as many events of the same document that do not: asked only of
    # the flagged events, every question would have one option and one answer.
    flags = sorted(t for t, vs in values.items() if vs == {"True"})
    for d in docs:
        ents = {e["id"]: e for e in d["entities"]}
        triggers = [ents[ev["trigger"]] for ev in d["events"]]
        if trig_types:
            doc = dict(d, entities=triggers, id=d["id"] + "-ete")
            out.append(ner_instance(doc, dataset, trig_types, seed, label_map, task="ETE"))
        for ev in d["events"]:
            trig = ents[ev["trigger"]]
            tname = L.expand(trig["type"], label_map)
            span = mention_text(trig)
            roles: dict[str, list[dict]] = {}
            for a in ev["arguments"]:
                if a["ref_id"] in ents:
                    roles.setdefault(a["role"], []).append(ents[a["ref_id"]])
            for role, args in sorted(roles.items()):
                rname = L.expand(role, label_map)
                answer, gold = span_lines([dict(x, type=role) for x in args], [role], {role: rname}, prefix=f"{tname} - ")
                user = (f"What is the {rname} attribute of the {tname} '{span}' in the medical text below?\n"
                        f"Medical text: {d['text']}")
                out.append(Instance(id=f"{dataset}-{d['id']}-{ev['id']}-{role}", dataset=dataset, task="EAE",
                                    type="events", options=[rname], messages=_messages(user, answer),
                                    gold={"entities": {f"{tname} - {rname}": gold[rname]}}))
            arg_role = {a["ref_id"]: a["role"] for a in ev["arguments"]}
            for attr in [a for a in d["attributes"] if a["ref_id"] in (ev["id"], ev["trigger"], *arg_role)
                         and a["type"] not in flags]:
                # the attribute is named by the argument's role when it sits on an argument (e.g. Status)
                aname = L.expand(arg_role.get(attr["ref_id"], attr["type"]), label_map)
                out.append(_eac_instance(f"{dataset}-{d['id']}-{attr['id']}", dataset, d["text"], tname, span, aname,
                                         sorted(values.get(attr["type"], {str(attr["value"])})), str(attr["value"]),
                                         instance_rng(seed, dataset, f"{d['id']}-{attr['id']}")))
        for flag in flags:
            carried = {a["ref_id"] for a in d["attributes"] if a["type"] == flag}
            marked = [ev for ev in d["events"] if {ev["id"], ev["trigger"]} & carried]
            unmarked = [ev for ev in d["events"] if not {ev["id"], ev["trigger"]} & carried]
            instance_rng(seed, dataset, f"{d['id']}-{flag}").shuffle(unmarked)
            for ev, answer in [(ev, "Yes") for ev in marked] + [(ev, "No") for ev in unmarked[:len(marked)]]:
                trig = ents[ev["trigger"]]
                out.append(_eac_instance(f"{dataset}-{d['id']}-{ev['id']}-{flag}", dataset, d["text"],
                                         L.expand(trig["type"], label_map), mention_text(trig),
                                         L.expand(flag, label_map), ["Yes", "No"], answer,
                                         instance_rng(seed, dataset, f"{d['id']}-{ev['id']}-{flag}")))
    return out


def _eac_instance(iid: str, dataset: str, text: str, tname: str, span: str, aname: str, opts: list[str], gold: str,
                  rng: random.Random) -> Instance:
    """An event attribute question: the options shuffled and lettered, the answer `Trigger type - Attribute: (X) v`."""
    opts = list(opts)
    rng.shuffle(opts)
    lettered = format_options(opts)
    gold_opt = lettered[opts.index(gold)]
    user = (f"What is the {aname} attribute of the {tname} '{span}' in the medical text below?\n"
            f"Medical text: {text}\nOptions:\n" + "\n".join(lettered))
    return Instance(id=iid, dataset=dataset, task="EAC", type="other classification", options=lettered,
                    messages=_messages(user, f"{tname} - {aname}: {gold_opt}"), gold={"labels": [gold_opt]})


# ---------------------------------------------------------------------------------------------------------
# Sequence classification: DC / RE / QA / NLI / STS
# ---------------------------------------------------------------------------------------------------------
def _choice_instance(iid: str, dataset: str, task: str, user_head: str, options: list[str], gold_options: list[str],
                     rng: random.Random, style: str, scoring_type: str | None = None,
                     extra_gold: dict | None = None, labels: dict[str, tuple[str, str]] | None = None) -> Instance:
    """`labels` maps an option text to (paper key, raw label); by default both are the option text. The paper's
    scorer groups counts by key; the official scorers use raw labels (e.g. CPR:4). Both are stored in `gold`,
    aligned with the shuffled, lettered options."""
    for g in gold_options:
        if g not in options:
            raise DataError(f"{dataset}: instance {iid}: gold label {g!r} is not among the options {options}")
    order = list(options)
    rng.shuffle(order)
    lettered = format_options(order)
    gold_lines = [lettered[order.index(g)] for g in sorted(gold_options, key=order.index)]
    answer = "\n".join(gold_lines) if gold_lines else "None"
    if style == "medtuned":
        instr = rng.choice(MEDTUNED_INSTRUCTIONS["SEQ"]).format(options="\n".join(lettered))
        user = f"### Instruction:\n{instr}\n\n### Input:\n{user_head}\n\n### Output:"
        msgs = _messages(user, answer, system=False)
    else:
        msgs = _messages(f"{user_head}\nOptions:\n" + "\n".join(lettered), answer)
    gold = {"labels": gold_lines,
            "option_keys": [(labels or {}).get(o, (o, o))[0] for o in order],
            "option_labels": [(labels or {}).get(o, (o, o))[1] for o in order], **(extra_gold or {})}
    return Instance(id=iid, dataset=dataset, task=task, type=scoring_type or SCORING_TYPE[task], options=lettered,
                    messages=msgs, gold=gold)


def dc_instances(docs: list[dict], dataset: str, labels: Sequence[str], subject: str, seed: int = 0,
                 label_map: dict | None = None, style: str = "mnlu", multi_label: bool = True) -> list[Instance]:
    names = {l: L.expand(l, label_map) for l in labels}
    out = []
    for d in docs:
        unknown = [l for l in d["labels"] if l not in names]
        if unknown:
            raise DataError(f"{dataset}: document {d['id']}: unknown label(s) {unknown}; expected one of {list(labels)}")
        head = f"Which options best describe {subject} from the medical text below?\nMedical text: {d['text']}"
        out.append(_choice_instance(f"{dataset}-{d['id']}", dataset, "DC", head, list(names.values()),
                                    [names[l] for l in dict.fromkeys(d["labels"])],
                                    instance_rng(seed, dataset, d["id"]), style,
                                    scoring_type="MultiQA" if multi_label else "other classification"))
    return out


def _mask_spans(text: str) -> list[str]:
    return re.findall(r"@[A-Za-z]+(?:-[A-Za-z]+)?\$", text)


def _mask_type(mask: str, position: int) -> str:
    """The entity type a mask names; a mask for two overlapping mentions (@CHEM-GENE$) names one per position."""
    types = L.MASK_TYPES.get(mask, mask.strip("@$"))
    if "-" in mask and isinstance(types, str):
        types = tuple(types.split("-"))
    return types[position] if isinstance(types, tuple) else types


def re_masked_instances(docs: list[dict], dataset: str, relation_set: str, seed: int = 0, style: str = "mnlu") -> list[Instance]:
    """BLUE-form relation sentences: entities are masks (@GENE$ ...), labels are the relation ids. Two overlapping
    mentions share one mask (@CHEM-GENE$), which then stands for both entities."""
    templates = L.RE_OPTIONS[relation_set]
    out = []
    for d in docs:
        masks = _mask_spans(d["text"])
        if len(masks) < 2:
            if len(masks) == 1 and ("-" in masks[0] or d["text"].count(masks[0]) >= 2):
                masks = [masks[0], masks[0]]
            else:
                raise DataError(f"{dataset}: sentence {d['id']}: expected two entity masks like @GENE$ (or one like "
                                f"@CHEM-GENE$), found {masks}")
        e1, e2 = masks[0], masks[1]
        t1, t2 = _mask_type(e1, 0), _mask_type(e2, 1)
        label = d["labels"][0]
        if label not in templates:
            raise DataError(f"{dataset}: sentence {d['id']}: unknown relation label {label!r}; expected {list(templates)}")
        options = [t.format(e1=e1, e2=e2) for t in templates.values()]
        keys = {t.format(e1=e1, e2=e2): (t.format(e1="X", e2="Y"), lab) for lab, t in templates.items()}
        head = (f"What is the relation between the {t1} entity '{e1}' and the {t2} entity '{e2}' from the medical "
                f"text below?\nMedical text: {d['text']}")
        out.append(_choice_instance(f"{dataset}-{d['id']}", dataset, "RE", head, options,
                                    [templates[label].format(e1=e1, e2=e2)], instance_rng(seed, dataset, d["id"]),
                                    style, extra_gold={"relation": label}, labels=keys))
    return out


def re_kb_instances(docs: list[dict], dataset: str, relation_types: Sequence[str] | None = None, seed: int = 0,
                    label_map: dict | None = None, negative_ratio: float = 1.0, style: str = "mnlu"
                    ) -> tuple[list[Instance], dict[str, int]]:
    """Relations annotated on entities (BRAT, BioC, PubTator, ChemProt/DrugProt, i2b2): one instance per related
    pair, plus sampled unrelated pairs (negative_ratio per positive, only between entity types that the dataset's
    relations join, in their order) answered with the no-relation option; a document's `negative_pairs` (pairs the
    corpus marks as unrelated, such as EU-ADR's false associations) are all asked too. Returns also
    counts of what could not become an instance: `relations_unresolved` (a concept-level relation naming a
    concept no mention carries: `schema.resolve_concept_relations`), `relations_not_on_entities` (an argument
    is not an entity mention, e.g. a BRAT event), `pairs_ambiguous` (both mentions read the same, so the
    options would be identical) and `events_not_binary`. A trigger-less event with two arguments (SeeDev's binary
    relations, `E1 Type Role:T1 Role:T2`) is a relation from its first argument to its second."""
    docs = [dict(d, relations=d["relations"] + [
        {"id": ev["id"], "type": ev["type"], "arg1": ev["arguments"][0]["ref_id"], "arg2": ev["arguments"][1]["ref_id"]}
        for ev in d.get("events", []) if ev["trigger"] is None and len(ev["arguments"]) == 2]) for d in docs]
    types = list(relation_types) if relation_types else sorted({r["type"] for d in docs for r in d["relations"]})
    out = []
    counts = {"relations_unresolved": sum(len(d.get("unresolved_relations", [])) for d in docs),
              "relations_not_on_entities": 0, "pairs_ambiguous": 0,
              "events_not_binary": sum(ev["trigger"] is None and len(ev["arguments"]) != 2
                                       for d in docs for ev in d.get("events", []))}
    # Unrelated pairs are drawn only between entity types that the dataset's relations join, in the order they
    # join them. DrugProt relates a chemical to a gene; a chemical-chemical pair (with options such as "'X' is an
    # inhibitor of 'Y'") is a no-relation answer that teaches nothing. Before this, such same-type pairs were 51 % of
    # the negatives drawn on DrugProt's dev set and gene-chemical pairs in the reverse order another 21 %.
    joined = set()
    for d in docs:
        kinds = {e["id"]: e["type"] for e in d["entities"]}
        joined.update((kinds[r["arg1"]], kinds[r["arg2"]]) for r in d["relations"]
                      if r["arg1"] in kinds and r["arg2"] in kinds)
    for d in docs:
        ents = {e["id"]: e for e in d["entities"]}
        rng = instance_rng(seed, dataset, d["id"] + "#neg")
        pairs = []
        related_concepts, related_names = set(), set()

        def name(x):
            return mention_text(ents[x]).lower()

        for r in d["relations"]:
            if r["arg1"] not in ents or r["arg2"] not in ents:  # e.g. a BRAT relation on an event (E1)
                counts["relations_not_on_entities"] += 1
                continue
            if r["type"] not in types:
                raise DataError(f"{dataset}: document {d['id']}: relation type {r['type']!r} not in {types}")
            pairs.append((r["arg1"], r["arg2"], r["type"], r["id"]))
            ca, cb = ents[r["arg1"]].get("concept"), ents[r["arg2"]].get("concept")
            if ca and cb:  # other mentions of the same two concepts are related too
                related_concepts.update({(ca, cb), (cb, ca)})
            # and so are other mentions reading the same (the question names mentions only by their text)
            related_names.update({(name(r["arg1"]), name(r["arg2"])), (name(r["arg2"]), name(r["arg1"]))})

        def same(a, b):  # coreferent mentions, or mentions of a related pair, make no negative pair
            ca, cb = ents[a].get("concept"), ents[b].get("concept")
            return ((ca is not None and ca == cb) or (ca, cb) in related_concepts or name(a) == name(b)
                    or (name(a), name(b)) in related_names)

        def oriented(a, b):  # (a, b) or (b, a) as the dataset's relations orient their types; None if neither
            ta, tb = ents[a]["type"], ents[b]["type"]
            return (a, b) if (ta, tb) in joined else (b, a) if (tb, ta) in joined else None

        asked = set()

        def first_asking(a, b):  # one question per pair of names
            if (name(a), name(b)) in asked:
                return False
            asked.add((name(a), name(b)))
            return True

        # pairs the corpus itself marks as unrelated (EU-ADR's false associations) are all asked, besides the
        # sampled ones
        for neg in d.get("negative_pairs", []):
            a, b = neg["arg1"], neg["arg2"]
            if a not in ents or b not in ents:
                raise DataError(f"{dataset}: document {d['id']}: unrelated pair {neg['id']} names {a}, {b}; "
                                "expected two entity ids")
            if not same(a, b) and first_asking(a, b):
                pairs.append((a, b, None, neg["id"]))
        cands = [pair for pair in (oriented(a, b) for a in ents for b in ents if a < b and not same(a, b))
                 if pair is not None and first_asking(*pair)]
        rng.shuffle(cands)
        positives = sum(typ is not None for _, _, typ, _ in pairs)
        for k, (a, b) in enumerate(cands[: int(round(negative_ratio * positives))]):
            pairs.append((a, b, None, f"N{k + 1}"))
        for a, b, typ, rid in pairs:
            e1, e2 = mention_text(ents[a]), mention_text(ents[b])
            t1, t2 = L.expand(ents[a]["type"], label_map), L.expand(ents[b]["type"], label_map)
            options = [f"'{e1}' {L.expand(t, label_map)} '{e2}'." for t in types] + [L.NO_RELATION.format(e1=e1, e2=e2)]
            keys = {o: (k, lab) for o, k, lab in zip(
                options, [f"'X' {L.expand(t, label_map)} 'Y'." for t in types] + [L.NO_RELATION.format(e1="X", e2="Y")],
                list(types) + ["none"])}
            gold = options[types.index(typ)] if typ else options[-1]
            if len(set(options)) != len(options):  # identical mentions on both sides: ambiguous options
                counts["pairs_ambiguous"] += 1
                continue
            head = (f"What is the relation between the {t1} entity '{e1}' and the {t2} entity '{e2}' from the medical "
                    f"text below?\nMedical text: {d['text']}")
            out.append(_choice_instance(f"{dataset}-{d['id']}-{rid}", dataset, "RE", head, options, [gold],
                                        instance_rng(seed, dataset, f"{d['id']}-{rid}"), style,
                                        extra_gold={"relation": typ or "none"}, labels=keys))
    return out, counts


def qa_instances(docs: list[dict], dataset: str, seed: int = 0, style: str = "mnlu") -> list[Instance]:
    out = []
    for d in docs:
        head = f"{d['question']}\nMedical text: {d['context']}"
        out.append(_choice_instance(f"{dataset}-{d['id']}", dataset, "QA", head, list(d["choices"]), list(d["answer"]),
                                    instance_rng(seed, dataset, d["id"]), style))
    return out


def nli_instances(docs: list[dict], dataset: str, seed: int = 0, style: str = "mnlu") -> tuple[list[Instance], int]:
    """Returns the instances and the number of pairs skipped for having no gold label ('-' in SNLI). A pair is asked
    with all three relations unless its document names its corpus's label space (`labels`: BioNLI's two)."""
    out, skipped = [], 0
    for d in docs:
        lab, space = d["label"], d.get("labels") or list(L.NLI_OPTIONS)
        if lab in ("-", "", None):
            skipped += 1
            continue
        if lab not in space or not set(space) <= set(L.NLI_OPTIONS):
            raise DataError(f"{dataset}: pair {d['id']}: label {lab!r} in the label space {space}; expected labels "
                            f"among {list(L.NLI_OPTIONS)}")
        opts = [L.NLI_OPTIONS[k] for k in L.NLI_OPTIONS if k in space]
        head = (f"What is the relation between the premise and hypothesis? Premise: {_sentence(d['premise'])}. "
                f"Hypothesis: {_sentence(d['hypothesis'])}.")
        out.append(_choice_instance(f"{dataset}-{d['id']}", dataset, "NLI", head, opts, [L.NLI_OPTIONS[lab]],
                                    instance_rng(seed, dataset, d["id"]), style,
                                    labels={v: (v, k) for k, v in L.NLI_OPTIONS.items()}))
    return out, skipped


def sts_instances(docs: list[dict], dataset: str, scale: str, seed: int = 0, style: str = "mnlu") -> list[Instance]:
    opts = L.sts_options(scale)
    out = []
    for d in docs:
        if d["label"] is None:
            raise DataError(f"{dataset}: pair {d['id']}: missing similarity score")
        score = float(d["label"])
        k = int(round(score))
        if not 0 <= k < len(opts):
            raise DataError(f"{dataset}: pair {d['id']}: score {score} outside 0..{len(opts) - 1}")
        head = (f"How similar are the two sentences below? Sentence 1: {_sentence(d['text_1'])}. "
                f"Sentence 2: {_sentence(d['text_2'])}.")
        out.append(_choice_instance(f"{dataset}-{d['id']}", dataset, "STS", head, opts, [opts[k]],
                                    instance_rng(seed, dataset, d["id"]), style, extra_gold={"score": score},
                                    labels={o: (o, str(i)) for i, o in enumerate(opts)}))
    return out


def summarization_instances(docs: list[dict], dataset: str, style: str = "mnlu") -> list[Instance]:
    out = []
    for d in docs:
        if not d.get("summary", "").strip():
            raise DataError(f"{dataset}: document {d['id']}: empty summary")
        if style == "medtuned":
            user = f"### Instruction:\n{MEDTUNED_INSTRUCTIONS['SUM'][0]}\n\n### Input:\n{d['text']}\n\n### Output:"
            msgs = _messages(user, d["summary"], system=False)
        else:
            msgs = _messages(f"Summarize the medical text below.\nMedical text: {d['text']}", d["summary"])
        out.append(Instance(id=f"{dataset}-{d['id']}", dataset=dataset, task="SUM", type="summarization", options=[],
                            messages=msgs, gold={"summary": d["summary"]}))
    return out


def ner_shots(train_docs: list[dict], dataset: str, types: Sequence[str], seed: int, label_map: dict | None,
              k: int = 2, exclude_id: str | None = None) -> list[tuple[str, str]]:
    """k in-context examples from the train split whose answers all differ (the original's n-shot NER)."""
    rng = instance_rng(seed, dataset, f"shots-{exclude_id}")
    idx = list(range(len(train_docs)))
    rng.shuffle(idx)
    shots, answers = [], set()
    for i in idx:
        d = train_docs[i]
        if d["id"] == exclude_id:
            continue
        ans, _ = span_lines(d["entities"], list(types), {t: L.expand(t, label_map) for t in types})
        if ans in answers:
            continue
        answers.add(ans)
        shots.append((d["text"], ans))
        if len(shots) == k:
            return shots
    raise DataError(f"{dataset}: the train split has fewer than {k} examples with different answers")
