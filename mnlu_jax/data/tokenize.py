"""Instances -> token ids with an assistant-only loss mask.

The trainable tokens are found by comparing token prefixes: the prompt (every message but the final assistant
answer, rendered with the generation prompt) must tokenise to a prefix of the full conversation; the tokens
after it (the answer and its end-of-turn marker) are the only ones with loss. A template for which the prompt is
not a prefix, or an example with zero trainable tokens, is an error naming the instance, never a silent all-zero
mask.

Truncation policy (counted): the answer is kept whole when it fits in `max_len - min_prompt`; otherwise its end
is cut. The prompt is cut in the middle: its first `keep_head` tokens (the instruction) and its last tokens (the
question, options and generation prompt) are kept, the middle of the medical text goes.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Iterable

import numpy as np

from mnlu_jax.data.chat import chat_ids, render, resolve_template
from mnlu_jax.data.schema import DataError, Instance


@dataclasses.dataclass
class Tokenized:
    ids: np.ndarray        # (n,) int32
    loss_mask: np.ndarray  # (n,) bool: True on assistant tokens
    truncated: bool


def tokenize_instance(inst: Instance, tokenizer, template: str, max_len: int, keep_head: int = 64,
                      min_prompt: int = 128) -> Tokenized:
    msgs = inst.messages
    if not msgs or msgs[-1]["role"] != "assistant":
        raise DataError(f"instance {inst.id}: the last message must be the assistant's answer")
    if not msgs[-1]["content"].strip():
        raise DataError(f"instance {inst.id}: empty assistant answer")
    prompt_text = render(tokenizer, msgs[:-1], template, add_generation_prompt=True, where=f"instance {inst.id}")
    full_text = render(tokenizer, msgs, template, add_generation_prompt=False, where=f"instance {inst.id}")
    prompt = chat_ids(tokenizer, prompt_text)  # with the one BOS decoding gives it too (data/chat.py)
    full = chat_ids(tokenizer, full_text)
    if full[: len(prompt)] != prompt:
        raise DataError(f"instance {inst.id}: the rendered prompt does not tokenise to a prefix of the conversation; "
                        "the chat template breaks the assistant-mask computation")
    answer = full[len(prompt):]
    if not answer:
        raise DataError(f"instance {inst.id}: zero trainable tokens after the prompt")
    truncated = False
    if len(prompt) + len(answer) > max_len:
        truncated = True
        answer = answer[: max(max_len - min(min_prompt, len(prompt)), 1)]
        room = max_len - len(answer)
        if len(prompt) > room:
            head = min(keep_head, room // 2)  # the head keeps the BOS and the instruction
            prompt = prompt[:head] + prompt[len(prompt) - (room - head):]
    ids = np.asarray(prompt + answer, np.int32)
    mask = np.zeros(len(ids), bool)
    mask[len(prompt):] = True
    return Tokenized(ids, mask, truncated)


def to_example(t: Tokenized) -> dict[str, np.ndarray]:
    """Next-token training example: inputs, targets and per-target loss weights."""
    return {"inputs": t.ids[:-1], "targets": t.ids[1:], "weights": t.loss_mask[1:].astype(np.float32)}


def tokenize_all(instances: Iterable[Instance], tokenizer, template_choice: str | None, max_len: int
                 ) -> tuple[list[dict[str, np.ndarray]], Counter]:
    template = resolve_template(tokenizer, template_choice)
    examples, truncations = [], Counter()
    for inst in instances:
        t = tokenize_instance(inst, tokenizer, template, max_len)
        truncations[inst.dataset] += t.truncated
        examples.append(to_example(t))
    return examples, truncations


def count_truncations(instances: list[Instance], tokenizer, max_len: int, template_choice: str | None = None) -> dict:
    return dict(tokenize_all(instances, tokenizer, template_choice, max_len)[1])
