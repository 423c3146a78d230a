"""Chat templates: the original BioMistral-NLU (zephyr-style) template, or the tokenizer's own.

The zephyr markers are plain text, not added tokens, so the vocabulary is unchanged (32000 for Mistral).
Rendered: `<|system|>\\n{content}{eos}\\n<|user|>\\n{content}{eos}\\n<|assistant|>\\n{content}{eos}\\n`;
with a generation prompt the text ends in `<|assistant|>\\n`.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

log = logging.getLogger(__name__)

ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
TEMPLATES = {"zephyr": ZEPHYR_TEMPLATE}
_WARNED_NO_TEMPLATE: weakref.WeakSet = weakref.WeakSet()  # once per tokenizer, not once per prompt


def resolve_template(tokenizer, choice: str | None) -> str:
    """`choice`: None or "tokenizer" (the tokenizer's own), "zephyr", or a path to a Jinja file."""
    if choice in (None, "", "tokenizer"):
        if not getattr(tokenizer, "chat_template", None):  # a base model's tokenizer: the paper's template
            if tokenizer not in _WARNED_NO_TEMPLATE:
                _WARNED_NO_TEMPLATE.add(tokenizer)
                log.warning("chat template 'tokenizer': %s has none; using the zephyr template (the paper's)",
                            getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__)
            return ZEPHYR_TEMPLATE
        return tokenizer.chat_template
    if choice in TEMPLATES:
        return TEMPLATES[choice]
    p = Path(choice)
    if not p.exists():
        raise ValueError(f"chat template {choice!r}: expected 'tokenizer', 'zephyr' or a path to a Jinja file")
    text = p.read_text()
    import jinja2

    try:  # a syntax error is named now, with its line, not when the first prompt is rendered
        _compile_as_transformers_does(text)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{p}:{e.lineno}: chat template does not parse ({e.message})") from e
    return text


def check_template_choice(choice: str | None) -> None:
    """What `resolve_template` would refuse, found before a model or data is loaded: an unknown name, a missing file
    or one that does not parse ("tokenizer" is checked when the tokenizer is there)."""
    if choice not in (None, "", "tokenizer") and choice not in TEMPLATES:
        resolve_template(None, choice)


def _compile_as_transformers_does(text: str) -> None:
    """Compile a template in transformers' own environment (its sandbox and extensions, such as `{% generation %}`),
    falling back to plain Jinja where that private helper has moved."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        import jinja2

        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
        return
    _compile_jinja_template(text)


def render(tokenizer, messages: list[dict], template: str, add_generation_prompt: bool, where: str = "") -> str:
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as e:  # e.g. Mistral's own template refuses a system message (raise_exception)
        roles = [m["role"] for m in messages]
        hint = " (--drop-system leaves system messages out)" if "system" in roles else ""
        raise ValueError(f"{where or 'chat template'}: the chat template refused messages with roles {roles}: "
                         f"{e}{hint}") from e


def prompt_messages(messages: list[dict], drop_system: bool = False) -> list[dict]:
    """Messages for zero-shot inference: all but a trailing assistant answer (and the system one if asked)."""
    msgs = list(messages)
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    if drop_system:
        msgs = [m for m in msgs if m["role"] != "system"]
    return msgs


_ADDS_BOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]] | None:
    """The ids the tokenizer puts before and after a text with its special tokens on (None when the plain text's ids
    are not found among them), found by tokenising one: transformers decides it from the post-processor,
    tokenizer_config.json or the tokenizer class, and the `add_bos_token` attribute is not set by every way of
    loading a tokenizer. Shared by decoding and training (`chat_ids`) and the GGUF export's add_bos/eos keys."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    ids = tokenizer("x")["input_ids"]
    start = next((i for i in range(len(ids) - len(plain) + 1) if ids[i:i + len(plain)] == plain), None)
    return None if start is None else (ids[:start], ids[start + len(plain):])


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of plain text (Mistral's and Llama 2's do, SmolLM2's does not)."""
    if tokenizer not in _ADDS_BOS:
        around = special_tokens_around(tokenizer)
        _ADDS_BOS[tokenizer] = tokenizer.bos_token_id is not None and around is not None and \
            around[0] == [tokenizer.bos_token_id]
    return _ADDS_BOS[tokenizer]


def chat_ids(tokenizer, text: str) -> list[int]:
    """Token ids of rendered chat text, starting with exactly one BOS where the tokenizer adds one to plain text.

    A template that writes `bos_token` itself (Mistral's, Llama 3's) keeps its own; one that does not (the zephyr
    template of the paper's code) gets it in front, as the original run got it from vLLM, which tokenises a
    rendered prompt with the tokenizer's special tokens. Training and decoding both tokenise through here, so a
    fine-tune sees at inference the start it was trained with (before session 22 decoding added none, and training
    added one even after a template's own)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id] + ids
    return ids
