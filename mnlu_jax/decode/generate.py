"""`mnlu-jax generate`: prompts JSONL -> predictions JSONL, resumable, with a tokens/s progress bar.

Each input line is a JSON object with an `id` and either `prompt` (raw text, tokenised with the tokenizer's special
tokens, BOS for Mistral and Llama, as vLLM tokenizes a plain prompt) or `messages` (chat; a trailing assistant
message, the gold answer, is removed before rendering, and the rendered text is tokenised as it is). The
output line is the input object plus `prediction`, `finish_reason` and `num_generated_tokens`, and
`prompt_tokens_dropped` where the prompt was longer than the largest bucket and was cut (`DecodeConfig.
prompt_overflow`: "middle", the default, keeps the first and last halves, so the chat header and instruction and the
options and generation prompt stay and the text between loses its middle; "left" keeps the end; "error" refuses).
Lines are appended and flushed as each prompt finishes; on restart, ids already in the output are skipped (a torn
last line, a crash mid-write, is written again; any other unreadable line is an error naming it). What made the
output (model, dtype, stop ids, token limits, overflow policy, chat template) is kept beside it in `<out>.run.json`:
a restart with any of these changed, or with an input that lacks ids the output has or gives them other prompts, is
refused rather than mixing two runs in one file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mnlu_jax.config import changed_settings, write_text_atomic
from mnlu_jax.data.chat import (adds_bos, chat_ids, check_template_choice, prompt_messages, render,
                                resolve_template)
from mnlu_jax.data.schema import check_messages, iter_jsonl
from mnlu_jax.decode.engine import PROMPT_OVERFLOW, DecodeConfig, Generator, cast_params
from mnlu_jax.locks import exclusive
from mnlu_jax.weights.convert import load_model, load_tokenizer

log = logging.getLogger(__name__)


def read_jsonl(path: str | Path) -> list[dict]:
    return [rec for _, rec in iter_jsonl(path)]


def done_records(path: Path) -> dict[str, dict]:
    """Records already written, by id. Only the last line may be torn (a crash mid-write: no newline after it, and
    not JSON); it is cut off the file. Anything else that is not a record with an id, or an id written twice, is an
    error naming the line: resuming past it would drop or duplicate predictions."""
    if not path.exists():
        return {}
    done: dict[str, dict] = {}
    where: dict[str, int] = {}
    data = path.read_bytes()
    lines = data.decode("utf-8").splitlines(keepends=True)
    torn = False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines) and not line.endswith("\n"):
                torn = True
                break
            raise ValueError(f"{path}:{n}: not JSON ({e.msg}), and not a torn last line; fix or delete the line, "
                             "or delete the file to decode everything again") from e
        if not isinstance(rec, dict) or "id" not in rec or "prediction" not in rec:
            raise ValueError(f"{path}:{n}: expected a prediction record (a JSON object with 'id' and 'prediction'); "
                             "is this file an input rather than an output?")
        key = str(rec["id"])
        if key in done:
            raise ValueError(f"{path}:{n}: id {key!r} again (first on line {where[key]})")
        done[key], where[key] = rec, n
    # Only the end of the file is mended, in place (it was rewritten whole on every resume): a torn line is cut off,
    # a whole record that lost its newline gets it, so that the next append starts a line of its own.
    if data and not data.endswith(b"\n"):
        if torn:
            os.truncate(path, data.rfind(b"\n") + 1)
        else:
            with open(path, "ab") as f:
                f.write(b"\n")
    return done


def check_run(out_path: Path, identity: dict[str, Any]) -> None:
    """Refuse to append to an output that another kind of run wrote (`<out>.run.json` records what wrote it); record
    this run's identity where there is none yet."""
    meta = out_path.with_name(out_path.name + ".run.json")
    if meta.exists():
        try:
            before = json.loads(meta.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta}: not JSON ({e}); delete it to resume {out_path.name} as this run") from e
        before.setdefault("prompt_overflow", "left")  # what cut long prompts before the record named it
        changed = changed_settings(before, identity, keys=identity)
        if changed:
            raise ValueError(f"{out_path}: written by another run ({'; '.join(changed)}); write to another output, "
                             "or delete it and its .run.json to start again")
        return
    write_text_atomic(meta, json.dumps(identity, indent=2))


def fit_prompt(ids: list[int], limit: int, policy: str, where: str) -> tuple[list[int], int]:
    """`ids` cut to `limit` tokens by `policy` (see the module docstring), and how many tokens were dropped."""
    n = len(ids)
    if n <= limit:
        return ids, 0
    if policy == "error":
        raise ValueError(f"{where}: prompt of {n} tokens is longer than the largest bucket ({limit}); add a larger "
                         "bucket, or let long prompts be cut (prompt overflow 'middle' or 'left')")
    if policy == "left":
        return ids[n - limit:], n - limit
    if policy != "middle":
        raise ValueError(f"prompt_overflow {policy!r}: expected one of {PROMPT_OVERFLOW}")
    head = limit // 2
    return ids[:head] + ids[n - (limit - head):], n - limit


def encode_records(records: list[dict], tokenizer, template: str | None, drop_system: bool, max_prompt: int,
                   source: str = "input", overflow: str = "middle") -> tuple[list[list[int]], list[int]]:
    """Token ids of each record's prompt, cut to `max_prompt` by the `overflow` policy, and the number of tokens
    cut from each."""
    tpl = resolve_template(tokenizer, template)
    out, dropped = [], []
    for n, rec in enumerate(records, 1):
        where = f"{source}: record {n} (id {rec.get('id')!r})"
        if "messages" in rec:
            check_messages(rec["messages"], where)
            text = render(tokenizer, prompt_messages(rec["messages"], drop_system), tpl, add_generation_prompt=True,
                          where=where)
            ids = chat_ids(tokenizer, text)  # one BOS where the tokenizer adds one, as training had (data/chat.py)
        elif "prompt" in rec:
            # with the tokenizer's special tokens (Mistral's and Llama's BOS), as vLLM's generate() and transformers'
            # pipelines tokenize a plain prompt; a rendered chat template writes its own
            if not isinstance(rec["prompt"], str):
                raise ValueError(f"{where}: prompt: expected text, got {type(rec['prompt']).__name__}")
            ids = tokenizer(rec["prompt"])["input_ids"]
        else:
            raise ValueError(f"{where} has neither 'messages' nor 'prompt'")
        if not ids:
            raise ValueError(f"{where}: the prompt has no tokens")
        ids, cut = fit_prompt(ids, max_prompt, overflow, where)
        out.append(ids)
        dropped.append(cut)
    return out, dropped


def generation_config_eos(model_dir: str | Path) -> tuple[int, ...]:
    """EOS ids of `generation_config.json` in `model_dir` (none if there is no such file). transformers' generate()
    and vLLM stop on these, and they can list more than config.json does (Llama 3 Instruct: `<|eot_id|>`)."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: expected a JSON object with an optional eos_token_id: {e}") from e
    ids = [] if eos is None else [eos] if isinstance(eos, int) else eos
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"{path}: eos_token_id must be an int or a list of ints, got {eos!r}")
    return tuple(ids)


def make_generator(params, config, tokenizer, decode: DecodeConfig, model_dir: str | Path | None = None) -> Generator:
    """A Generator whose padding is the tokenizer's pad id and whose stop ids, unless `decode.stop_ids` names
    them, are those of config.json and of `model_dir`'s generation_config.json; the tokenizer's EOS always stops."""
    stop = tuple(decode.stop_ids)
    if not stop:  # a GGUF path has no generation_config.json beside it: generation_config_eos gives ()
        extra = generation_config_eos(model_dir) if model_dir is not None else ()
        stop = config.eos_ids + tuple(i for i in extra if i not in config.eos_ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
        stop = stop + (tokenizer.eos_token_id,)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Generator(params, config, dataclasses.replace(decode, stop_ids=stop, pad_id=pad))


def load_generator(model: Any, decode: DecodeConfig, dtype: str = "float32", tokenizer=None, config=None):
    """(Generator, tokenizer) for `model`: a checkpoint path (ours, HF directory or GGUF file; the tokenizer and
    generation_config.json come from it unless tokenizer= is given) or a params pytree (then pass config= and
    tokenizer=)."""
    tok_src = None
    if isinstance(model, (str, Path)):
        params, config, tok_src = load_model(model)
        tokenizer = tokenizer or load_tokenizer(tok_src)
    else:
        params = model
        if config is None or tokenizer is None:
            raise ValueError("passing params needs config= and tokenizer=")
    generator = make_generator(cast_params(params, dtype), config.replace(compute_dtype=dtype), tokenizer, decode,
                               model_dir=tok_src)
    return generator, tokenizer


def run_generate(model: Any, input_path: str | Path, out_path: str | Path, decode: DecodeConfig,
                 chat_template: str | None = None, dtype: str = "float32", drop_system: bool = False,
                 tokenizer=None, config=None, progress: bool = True, generator: Generator | None = None,
                 model_name: str | None = None) -> dict:
    """Generate for every record not yet in `out_path`. `model` is a path or a params pytree (then pass config=
    and tokenizer=; pass generator= to reuse compiled steps across files). `model_name` names the model in the
    output's run record where `model` is not a path (default: "params")."""
    out_path, input_path = Path(out_path), Path(input_path)
    # checked before a model is loaded: the output is appended to, so the input must not be it
    if out_path.is_dir():
        raise ValueError(f"--out {out_path}: a directory; expected the .jsonl file to write predictions to")
    if out_path.exists() and input_path.exists() and out_path.samefile(input_path):
        raise ValueError(f"--out {out_path} is the input file; write predictions to another file")
    check_template_choice(chat_template)
    records = read_jsonl(input_path)
    if not records:
        raise ValueError(f"--input {input_path}: no records (an empty file); expected one JSON object per line with "
                         "`messages` or `prompt`")
    ids = [str(r.get("id", i)) for i, r in enumerate(records)]
    first: dict[str, int] = {}
    for k, i in enumerate(ids):
        if i in first:
            raise ValueError(f"{input_path}: record {k + 1} has the id {i!r} of record {first[i] + 1}; ids must be "
                             "unique (the output is resumed by id)")
        first[i] = k
    if generator is None:
        generator, tokenizer = load_generator(model, decode, dtype, tokenizer, config)
    elif tokenizer is None:
        raise ValueError("passing generator= needs tokenizer=")
    gen = generator
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if model_name is None:
        model_name = str(Path(model).resolve()) if isinstance(model, (str, Path)) else "params"
    # what decides the tokens; batch size, buckets' spacing, layer loop and prefix cache do not (tests/test_decode.py)
    identity = {"model": model_name, "dtype": dtype, "max_new_tokens": gen.dc.max_new_tokens,
                "max_prompt_tokens": max(gen.dc.buckets), "prompt_overflow": gen.dc.prompt_overflow,
                "stop_ids": list(gen.dc.stop_ids), "chat_template": chat_template, "drop_system": drop_system}
    if any("messages" not in r and "prompt" in r for r in records):
        # plain prompts got no BOS before session 22; a record without this key is of that kind
        identity["plain_prompts"] = "with the tokenizer's special tokens"
    if adds_bos(tokenizer) and any("messages" in r for r in records):
        # chat prompts of a BOS-adding tokenizer (Mistral) start with one BOS since session 22, none before
        identity["chat_prompt_bos"] = "one"
    with exclusive(out_path.with_name(out_path.name + ".lock"), str(out_path)):  # mnlu_jax/locks.py
        return _resume_into(out_path, input_path, records, ids, identity, gen, tokenizer, chat_template, drop_system,
                            progress)


def _resume_into(out_path: Path, input_path: Path, records: list[dict], ids: list[str], identity: dict, gen,
                 tokenizer, chat_template, drop_system: bool, progress: bool) -> dict:
    """Append a prediction for every record `out_path` does not hold yet (the output checked against this run and
    this input first)."""
    check_run(out_path, identity)
    seen = done_records(out_path)
    strays = sorted(set(seen) - set(ids))
    # an output record carries its input's fields: a prompt that has changed since is another input
    changed = [i for r, i in zip(records, ids) if i in seen
               and any(seen[i].get(k) != r.get(k) for k in ("messages", "prompt"))]
    if strays or changed:
        raise ValueError(f"{out_path}: holds " + (f"{len(strays)} ids that {input_path} does not (e.g. {strays[:3]})"
                                                   if strays else f"other prompts for {len(changed)} ids of "
                                                   f"{input_path} (e.g. {changed[:3]})") +
                         ": the output of another input; write to another output")
    for r, i in zip(records, ids):
        r["id"] = i
    todo = [r for r, i in zip(records, ids) if i not in seen]
    stats = {"total": len(records), "skipped": len(records) - len(todo), "generated_tokens": 0, "seconds": 0.0,
             "prompts_cut": 0}
    if not todo:
        return stats
    limit = max(gen.dc.buckets)
    prompts, dropped = encode_records(todo, tokenizer, chat_template, drop_system, limit, str(input_path),
                                      gen.dc.prompt_overflow)
    cut = [r["id"] for r, d in zip(todo, dropped) if d]
    if cut:
        stats["prompts_cut"] = len(cut)
        log.warning("%s: %d of %d prompts longer than %d tokens cut (prompt overflow %r; their records say how many "
                    "tokens as prompt_tokens_dropped): %s%s", input_path, len(cut), len(todo), limit,
                    gen.dc.prompt_overflow, ", ".join(cut[:5]), ", ..." if len(cut) > 5 else "")
    before = dict(gen.stats)
    bar = tqdm(total=len(todo), desc=f"generate {Path(input_path).stem}", unit="prompt", disable=not progress)
    with open(out_path, "a") as f:
        for res in gen.stream(prompts):
            rec = dict(todo[res.index])
            rec["prediction"] = tokenizer.decode(res.tokens, skip_special_tokens=True)
            rec["finish_reason"] = res.finish_reason
            rec["num_generated_tokens"] = len(res.tokens)
            if dropped[res.index]:
                rec["prompt_tokens_dropped"] = dropped[res.index]
            f.write(json.dumps(rec) + "\n")
            f.flush()
            bar.update(1)
            elapsed = max(bar.format_dict["elapsed"], 1e-9)
            bar.set_postfix(tok_s=f"{(gen.stats['generated_tokens'] - before['generated_tokens']) / elapsed:.1f}")
    bar.close()
    delta = {k: gen.stats[k] - before[k] for k in ("generated_tokens", "seconds", "prefill_tokens", "head_tokens_reused")}
    stats.update(delta, compiled=sorted(gen.compiled_shapes), prefill_calls=gen.stats["prefill_calls"],
                 chunk_calls=gen.stats["chunk_calls"])
    return stats
