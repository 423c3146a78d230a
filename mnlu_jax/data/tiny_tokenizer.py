"""A small byte-level BPE tokenizer trained on local text, for the tiny random model (tests and fast demo).

Byte-level, so every string tokenises (no unknown tokens) and the chat template's prompt is a token prefix
of the conversation. Special tokens: <unk>=0 (also padding), <s>=1, </s>=2, as in Mistral's vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mnlu_jax.data.chat import ZEPHYR_TEMPLATE


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512, out_dir: str | Path | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")
    fast.chat_template = ZEPHYR_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def instance_texts(instances) -> list[str]:
    return [m["content"] for i in instances for m in i.messages] + ["<|system|>\n<|user|>\n<|assistant|>\n"]
