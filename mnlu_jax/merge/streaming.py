"""Streaming merge of checkpoints on disk: tensor by tensor, memory-mapped in, sharded safetensors out.

Peak memory is a small multiple of the largest tensor (its fp32 copies for base and models, plus the
result), so two 7B bf16 models merge on a 24 GiB machine. Inputs are HF directories (safetensors, or
anything `TensorSource` reads) or our Orbax checkpoints, read through `NamedTensors` (weights/named_tensors.py):
safetensors and GGUF tensor by tensor, Orbax one stacked parameter at a time (tensors are visited in that
order, so each is restored once).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mnlu_jax.merge.chat_template import resolve_chat_template, set_chat_template
from mnlu_jax.merge.math import (MergeSpec, check_model_count, exclude_pattern, keys_for, merge_compiled,
                                 nonfinite_error)
from mnlu_jax.merge.settings import Schedule
from mnlu_jax.merge.vocabulary import TokenizerSettings, VocabularyPlan, plan_vocabulary
from mnlu_jax.weights.convert import (TOKENIZER_FILES, _dtype_name, atomic_dir, has_tokenizer_files, np_dtype,
                                     same_source, source_name)
from mnlu_jax.weights.named_tensors import NamedTensors, ordered
from mnlu_jax.weights.safetensors_io import write_sharded

VOCAB_TENSORS = re.compile(r"(embed_tokens\.weight|lm_head\.weight)$")
VOCAB_POLICIES = ("error", "pad_mean", "truncate")
# Config fields that must agree for a merge to make sense (dtype may differ).
ARCH_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "tie_word_embeddings")


def check_compatible(base: NamedTensors, models: list[NamedTensors], vocab_policy: str,
                     vocabulary_aligned: bool = False) -> dict[str, int]:
    """Raise on architecture, name or shape mismatches; return the target row count of vocab tensors
    (`vocabulary_aligned`: their rows are moved to one tokenizer's ids, so their counts may differ)."""
    if vocab_policy not in VOCAB_POLICIES:
        raise ValueError(f"vocab policy {vocab_policy!r}: expected one of {VOCAB_POLICIES}")
    check_architectures(base, models, ARCH_FIELDS)
    names = set(base.names())
    for m in models:
        mn = set(m.names())
        if mn != names:
            raise ValueError(f"{m.path}: tensor names differ from base: missing {sorted(names - mn)[:5]}, "
                             f"extra {sorted(mn - names)[:5]}")
    rows: dict[str, int] = {}
    for name in sorted(names):
        shapes = [base.shape(name)] + [m.shape(name) for m in models]
        if len(set(shapes)) == 1:
            continue
        if VOCAB_TENSORS.search(name) and len({s[1:] for s in shapes}) == 1:
            if vocabulary_aligned:
                continue
            if vocab_policy == "error":
                raise ValueError(
                    f"{name}: vocabulary sizes differ ({', '.join(str(s[0]) for s in shapes)} rows for base and "
                    "models); choose vocab_policy=pad_mean (MergeLM: new rows = mean of the others) or truncate")
            rows[name] = max(s[0] for s in shapes) if vocab_policy == "pad_mean" else min(s[0] for s in shapes)
            continue
        raise ValueError(f"{name}: shapes differ: base {shapes[0]}, models {shapes[1:]}")
    return rows


def check_architectures(reference: NamedTensors, others: list[NamedTensors], fields: tuple[str, ...]) -> None:
    """The config `fields` of each of `others` equal `reference`'s, else an error naming the model and fields."""
    ref = reference.config.to_hf_dict()
    for m in others:
        cfg = m.config.to_hf_dict()
        diff = [f"{k}: {ref.get(k)!r} vs {cfg.get(k)!r}" for k in fields if ref.get(k) != cfg.get(k)]
        if diff:
            raise ValueError(f"{m.path}: architecture differs from {reference.path}'s: " + "; ".join(diff))


def tokenizer_checkpoint(base: NamedTensors, models: list[NamedTensors], rows: dict[str, int]) -> NamedTensors:
    """Whose tokenizer goes with the merge: the base's, unless the vocabulary policy gave the merge another model's
    row count (pad_mean to a fine-tune that added tokens, such as chat markers: the base's tokenizer knows none of
    them, so the new rows could never be produced or read), then the first model with that many rows."""
    if not rows:
        return base
    name, want = next(iter(rows.items()))
    if base.shape(name)[0] == want:
        return base
    return next(m for m in models if m.shape(name)[0] == want)


def _fit_rows(a: np.ndarray, rows: int | None) -> np.ndarray:
    if rows is None or a.shape[0] == rows:
        return a
    if a.shape[0] > rows:
        return a[:rows]
    mean = np.asarray(a, np.float32).mean(0, keepdims=True).astype(a.dtype)
    return np.concatenate([a, np.repeat(mean, rows - a.shape[0], axis=0)])


def _is_float(dt) -> bool:
    return np.issubdtype(dt, np.floating) or np.dtype(dt).name == "bfloat16"


@dataclasses.dataclass(frozen=True)
class MergeGroup:
    """Tensors merged alike: from one base and the same models, by one spec and schedule (a whole-model merge is
    one group; a merge by slices, one per slice). A model that is the base itself has a zero delta, so its reads
    and masks are skipped (`live` are the models read) unless the method combines the models' own values."""
    base: NamedTensors
    models: tuple[NamedTensors, ...]
    spec: MergeSpec
    schedule: Schedule | None
    live: tuple[int, ...]
    same: tuple[int, ...]

    @staticmethod
    def make(base: NamedTensors, models: list[NamedTensors], spec: MergeSpec, schedule: Schedule | None,
             num_layers: int) -> MergeGroup:
        n_all = len(models)
        if spec.weights is not None and len(spec.weights) != n_all:
            raise ValueError(f"{len(spec.weights)} weights for {n_all} models")
        for name, values in spec.per_model:
            if len(values) != n_all:
                raise ValueError(f"per_model.{name}: {len(values)} values for {n_all} models")
        # (linear and Karcher combine raw weights, Model Stock counts every model and its angle to the others, and
        # NuSLERP and Multi-SLERP without the base interpolate the models themselves)
        same = [i for i, m in enumerate(models) if not spec.raw and same_source(m.path, base.path)]
        live = [i for i in range(n_all) if i not in same] or [0]
        same = [i for i in same if i not in live]
        check_model_count(spec, len(live))
        if schedule is not None:
            schedule = dataclasses.replace(schedule, num_layers=num_layers)
            if schedule.weights is not None and len(schedule.weights) != n_all:
                raise ValueError(f"{len(schedule.weights)} weights for {n_all} models")
        return MergeGroup(base, tuple(models), spec, schedule, tuple(live), tuple(same))

    def spec_for(self, name: str, position: float | None = None) -> MergeSpec:
        """The spec of the tensor `name` (at `position` on the gradients; None: its layer's), for the live
        models."""
        s = self.spec if self.schedule is None else self.schedule.spec_for(self.spec, name, position)
        if self.same:
            w = list(s.weights) if s.weights else [1.0] * len(self.models)
            s = dataclasses.replace(s.select_models(list(self.live)), weights=tuple(w[i] for i in self.live),
                                    elided_weight=s.elided_weight + sum(w[i] for i in self.same))
        return s


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its name, the group that merges it, the base's and each model's name for it, and its
    place on the group's gradients (None: its layer's among the base's)."""
    out: str
    group: int
    base: str
    models: tuple[str, ...]
    position: float | None = None


def merge_checkpoints(base: str | Path, models: list[str | Path], spec: MergeSpec, out: str | Path,
                      dtype: str | None = None, exclude: str | None = None, vocab_policy: str = "error",
                      max_shard_bytes: int = 2 * 2**30, progress: bool = True,
                      schedule: Schedule | None = None, mergekit_config: dict | None = None,
                      tokenizer: TokenizerSettings | None = None) -> Path:
    """Merge checkpoints tensor by tensor into an HF directory at `out` (written atomically). `schedule` varies
    numeric parameters by tensor (merge/settings.py: mergekit's gradients and filters). `mergekit_config`, the
    mergekit config the merge was read from, is written beside it as mergekit_config.yml and quoted in its card.
    `tokenizer.source` ("base", "union" or a model directory) gives the merge that tokenizer and moves every
    model's vocabulary rows to its token ids first (merge/vocabulary.py); None merges the rows as they are.
    `tokenizer.chat_template` is the written tokenizer's template (merge/chat_template.py)."""
    pattern = exclude_pattern(exclude)
    b = NamedTensors(base)
    ms = [NamedTensors(m) for m in models]
    if not ms:
        raise ValueError("merge needs at least one model besides the base")
    tokenizer = tokenizer or TokenizerSettings()
    vocabulary = None
    if tokenizer.source is not None:
        if vocab_policy != "error":
            raise ValueError(f"vocab_policy {vocab_policy!r} and tokenizer_source {tokenizer.source!r}: choose one "
                             "(the tokenizer source aligns the vocabularies itself)")
        check_compatible(b, ms, "error", vocabulary_aligned=True)
        vocabulary = plan_vocabulary(tokenizer, b, ms)
        rows = {n: vocabulary.size for n in b.names() if VOCAB_TENSORS.search(n)}
    else:
        rows = check_compatible(b, ms, vocab_policy)
    tok = None if vocabulary is not None else tokenizer_checkpoint(b, ms, rows)
    template = merge_chat_template(tokenizer, [b, *ms], vocabulary, tok)
    group = MergeGroup.make(b, ms, spec, schedule, b.config.num_hidden_layers)
    plan = [PlannedTensor(n, 0, n, (n,) * len(ms)) for n in ordered(b.names(), b.config)]

    def finish(tmp: Path, specs: list) -> None:
        cfg = b.config.to_hf_dict()
        cfg["torch_dtype"] = _dtype_name(specs[0][2])
        if rows:
            cfg["vocab_size"] = next(iter(rows.values()))
        write_config_and_tokenizer(tmp, cfg, vocabulary, tok, template)
        tokenizer_from = tokenizer.source if tok is None else (None if tok.dir is None else source_name(tok.path))
        record = {"base": source_name(base), "models": [source_name(m) for m in models],
                  **spec_record(spec, group.schedule), "exclude": exclude, "vocab_policy": vocab_policy,
                  "tokenizer_from": tokenizer_from}
        (tmp / "merge_config.json").write_text(json.dumps(record, indent=2))
        (tmp / "README.md").write_text(model_card(record, Path(out).name, write_mergekit_config(tmp, mergekit_config)))

    return write_merge(out, [group], plan, finish, dtype=dtype, pattern=pattern, rows=rows,
                       max_shard_bytes=max_shard_bytes, progress=progress, desc=f"merge ({spec.method})",
                       vocabulary=vocabulary)


def write_merge(out: str | Path, groups: list[MergeGroup], plan: list[PlannedTensor], finish, *, dtype: str | None,
                pattern, rows: dict[str, int], max_shard_bytes: int, progress: bool, desc: str,
                vocabulary: VocabularyPlan | None = None) -> Path:
    """Merge the `plan`'s tensors, in order, into sharded safetensors in `out` (atomically: a temporary directory
    renamed once `finish(directory, specs)` has written the rest). Every tensor's parameters resolve, and are
    valid, before anything is written; a tensor matching `pattern` keeps its base value; `rows` are the vocabulary
    tensors' row counts where the models' differ, and `vocabulary`, if given, moves those tensors' rows to the
    merge's token ids (merge/vocabulary.py) instead of padding or cutting them."""
    target = np_dtype(dtype)
    specs = []
    for p in plan:
        base = groups[p.group].base
        shape = base.shape(p.base)
        if p.out in rows:
            shape = (rows[p.out],) + tuple(shape[1:])
        specs.append((p.out, tuple(shape), target or base.dtype(p.base)))
    out_dtype_of = {n: dt for n, _, dt in specs}
    by_out = {p.out: p for p in plan}
    for p in plan:
        g = groups[p.group]
        g.spec_for(p.out, p.position)
        if vocabulary is not None and p.out in rows:
            vocabulary.check_inputs([g.base.path, *(g.models[i].path for i in g.live)], p.out)
    with atomic_dir(out) as tmp, tqdm(total=len(plan), desc=desc, unit="tensor", disable=not progress) as bar:
        def produce(name: str) -> np.ndarray:
            p = by_out[name]
            g = groups[p.group]
            r = rows.get(name)
            live = [(g.models[i], p.models[i]) for i in g.live]  # (an elided model is the base: not read again)
            if vocabulary is not None and r is not None:  # the inputs aligned together (absent tokens' rows)
                bt, *aligned = vocabulary.align([g.base.get(p.base), *(m.get(n) for m, n in live)],
                                     [g.base.path, *(m.path for m, _ in live)], g.base.path)
                models_in = lambda: aligned  # noqa: E731
            else:
                bt = _fit_rows(g.base.get(p.base), r)
                models_in = lambda: [_fit_rows(m.get(n), r) for m, n in live]  # noqa: E731
            odt = out_dtype_of[name]
            if (pattern and pattern.search(name)) or not _is_float(bt.dtype):
                res = np.asarray(bt).astype(odt)
            else:
                mts = tuple(models_in())
                tensor_spec = g.spec_for(name, p.position)
                keys = keys_for(tensor_spec, name, len(g.models))
                # (one device: NumPy may sort DELLA's rows)
                res, finite = merge_compiled(bt, mts, None if keys is None else keys[np.asarray(g.live)], tensor_spec,
                                             odt, host_ranks=True)
                if not finite:  # before the shard holding it is written: nothing half-made is left
                    raise nonfinite_error(name, tensor_spec)
                res = np.asarray(res)
            bar.update(1)
            return res

        write_sharded(tmp, specs, produce, max_shard_bytes=max_shard_bytes)
        finish(tmp, specs)
    return Path(out)


def spec_record(spec: MergeSpec, schedule: Schedule | None) -> dict:
    """The settings of a merge as merge_config.json records them: the method's, and the varying ones."""
    return {"method": spec.method, "drop_rate": spec.drop_rate, "rescale": spec.rescales,
            "rescale_norm": spec.rescale_norm, "normalize": spec.normalizes, "apply": spec.apply,
            "lambda": spec.lam, "weights": spec.weights,
            **({"per_model": dict(spec.per_model)} if spec.per_model else {}),
            "epsilon": spec.epsilon, "gamma": spec.gamma,
            "t": spec.t, "filter_wise": spec.filter_wise, "seed": spec.seed,
            **({"select_topk": spec.select_topk} if spec.method == "sce" else {}),
            **({"max_iter": spec.max_iter, "tol": spec.tol} if spec.method == "karcher" else {}),
            **({k: getattr(spec, k) for k in ("nuslerp_flatten", "nuslerp_row_wise", "nuslerp_base")}
               if spec.method == "nuslerp" else {}),
            **({k: getattr(spec, k) for k in ("multislerp_base", "multislerp_eps")}
               if spec.method == "multislerp" else {}),
            **({k: getattr(spec, k) for k in ("ram_epsilon", "ram_r", "ram_alpha")}
               if spec.method in ("ram", "ramplus_tl") else {}),
            **({"varying": schedule.record()} if schedule is not None else {})}


def write_config_and_tokenizer(directory: Path, cfg: dict, vocabulary, source: NamedTensors | None,
                               chat_template: str | None = None) -> None:
    """config.json and the tokenizer of a merge: the one its vocabulary was aligned to (merge/vocabulary.py; the
    config's vocab_size its row count), else `source`'s files; with `chat_template` (the text) as its template."""
    if vocabulary is not None:
        cfg = dict(cfg, vocab_size=vocabulary.size)
        if chat_template is not None:  # (the plan's own tokenizer object: set before its one save)
            vocabulary.tokenizer.chat_template = chat_template
        vocabulary.tokenizer.save_pretrained(directory)
    elif source is not None:
        copy_tokenizer(source, directory)
        if chat_template is not None:
            set_chat_template(directory, chat_template)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))


def merge_chat_template(tokenizer: TokenizerSettings, models: list[NamedTensors], vocabulary,
                        source: NamedTensors | None) -> str | None:
    """The text of the merge's `chat_template` (None: none asked for, or `auto` found none), resolved before the
    merge, which must write a tokenizer to carry it: the vocabulary plan's, or `source`'s files."""
    if tokenizer.chat_template is None:
        return None
    if vocabulary is None and (source is None or source.dir is None or not has_tokenizer_files(source.dir)):
        raise ValueError(f"chat_template {tokenizer.chat_template!r}: the merge writes no tokenizer to carry it ("
                         f"{'no model' if source is None else source.path} has no tokenizer files beside its weights)")
    return resolve_chat_template(tokenizer.chat_template, models)


def copy_tokenizer(source: NamedTensors, directory: Path) -> None:
    """The tokenizer files of `source`'s directory (if it has one) into `directory`."""
    if source.dir is not None:
        for f in TOKENIZER_FILES:
            if (source.dir / f).exists():
                shutil.copy2(source.dir / f, directory / f)


def write_mergekit_config(directory: Path, mergekit_config: dict | None) -> str | None:
    """The mergekit config a merge was read from, as given, written beside it as mergekit_config.yml (as
    mergekit-yaml does); its YAML text, for the model card."""
    if mergekit_config is None:
        return None
    import yaml

    text = yaml.safe_dump(mergekit_config, sort_keys=False)
    (directory / "mergekit_config.yml").write_text(text)
    return text


METHOD_PAPERS = {"dare": "https://arxiv.org/abs/2311.03099", "dare_ties": "https://arxiv.org/abs/2311.03099",
                 "dare_linear": "https://arxiv.org/abs/2311.03099", "della_linear": "https://arxiv.org/abs/2406.11617",
                 "ties": "https://arxiv.org/abs/2306.01708", "della": "https://arxiv.org/abs/2406.11617",
                 "breadcrumbs": "https://arxiv.org/abs/2312.06795", "breadcrumbs_ties": "https://arxiv.org/abs/2312.06795",
                 "task_arithmetic": "https://arxiv.org/abs/2212.04089", "model_stock": "https://arxiv.org/abs/2403.19522",
                 "slerp": "https://en.wikipedia.org/wiki/Slerp", "sce": "https://arxiv.org/abs/2408.07990",
                 "karcher": "https://arxiv.org/abs/2603.04972",
                 "multislerp": "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
                 "nearswap": "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
                 "ram": "https://arxiv.org/abs/2601.13572", "ramplus_tl": "https://arxiv.org/abs/2601.13572"}


def model_card(record: dict, name: str, mergekit_yaml: str | None = None) -> str:
    """A Hugging Face model card for the merge (what mergekit writes beside its merges): front matter naming the
    base, then the method, the models and the settings, so that the merge says what it is when uploaded."""
    method = record["method"]
    paper = METHOD_PAPERS.get(method)
    shown = f"[{method}]({paper})" if paper else method
    # as given: the base listed among the models counts in an average (the paper's [base, fine-tune] DARE merge)
    models = [f"`{m}`" + (" (the base)" if m == record["base"] else "") for m in record["models"]]
    settings = {k: v for k, v in record.items() if k not in ("base", "models") and v is not None}
    return card_frame(record["base"], name, [
        f"A merge made with mnlu-jax (`mnlu-jax merge`) by the {shown} method, with "
        f"`{record['base']}` as the base.", "", "## Models merged", "", *[f"- {m}" for m in models], "",
        "## Settings (as in merge_config.json)", "", "```json", json.dumps(settings, indent=2), "```", ""],
        mergekit_yaml)


def card_frame(base: str, name: str, body: list[str], mergekit_yaml: str | None) -> str:
    """A model card: front matter naming the base (so the Hub links an uploaded merge to it), the title, `body`'s
    lines, and the mergekit configuration it was made from, if any."""
    return "\n".join([
        "---", "base_model:", f"- {base}", "library_name: transformers", "tags:", "- merge", "- mnlu-jax",
        "---", f"# {name}", "", *body,
        *(["## Configuration", "", "The mergekit configuration it was made from (`mergekit_config.yml`):", "",
           "```yaml", mergekit_yaml.rstrip("\n"), "```", ""] if mergekit_yaml else [])])
