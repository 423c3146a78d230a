"""The chat template a merge's tokenizer is written with: mergekit's `chat_template` (and our MergeConfig's).

- `auto`: the template most of the merge's models have (each model once, the base first; a tie goes to the first
  of them, where mergekit's order is that of a set); none of them has one: the written tokenizer keeps its own.
- `chatml`, `llama3`, `mistral`: templates written here that render what mergekit 0.1.5's files of those names
  render (tested against them, messages by messages). mergekit's `llama3` puts a newline after each `<|eot_id|>`,
  which Meta's own template does not; `auto` or the model's own template gives Meta's.
- `zephyr`: the original BioMistral-NLU template (data/chat.py).
- a path to a Jinja file, or the template itself (text with `{`), checked to parse in transformers' environment.
mergekit's `alpaca` and `exaone` are refused by name: their renders carry stray whitespace (a response heading run
into the last instruction; indentation in every turn) that is not reproduced here, so a merge would silently get a
different template; give the template text or file instead.
"""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

CHATML = ("{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{% for message in messages %}"
          "{% if loop.first %}{{ bos_token }}{% endif %}"
          "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
          " + '<|eot_id|>\\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# a system message goes before the first instruction; turns must alternate user, assistant, ...
MISTRAL = ("{% if messages and messages[0]['role'] == 'system' %}"
           "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
           "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
           "{{ bos_token }}"
           "{% for message in turns %}"
           "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('mistral template: after an optional system message the roles must alternate user, "
           "assistant, user, ...') }}"
           "{% elif message['role'] == 'user' %}"
           "{% set text = system + '\\n\\n' + message['content'] if loop.first and system is not none "
           "else message['content'] %}"
           "{{ ' [INST] ' + text + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
           "{% else %}{{ raise_exception('mistral template: only user and assistant roles, and one system message "
           "first') }}"
           "{% endif %}"
           "{% endfor %}")
NAMED = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL}
REFUSED = ("alpaca", "exaone")


def resolve_chat_template(choice: str, models: list) -> str | None:
    """The template text `choice` names (see the module docstring); `models` (NamedTensors, the base first) are
    read for `auto`. None: `auto` found no template. Errors say what was expected."""
    from mnlu_jax.data.chat import TEMPLATES, _compile_as_transformers_does

    if not isinstance(choice, str) or not choice.strip():
        raise ValueError(f"chat_template {choice!r}: expected auto, a template name "
                         f"({', '.join([*NAMED, *TEMPLATES])}), a Jinja file or the template's text")
    if choice == "auto":
        return _most_common(models)
    if choice in NAMED:
        return NAMED[choice]
    if choice in TEMPLATES:
        return TEMPLATES[choice]
    if choice in REFUSED:
        raise ValueError(f"chat_template {choice!r}: mergekit's {choice} template renders with stray whitespace that "
                         "mnlu-jax does not reproduce; give the template as a Jinja file or text (or auto)")
    if "\n" not in choice and len(choice) < 4096 and Path(choice).is_file():
        where, text = choice, Path(choice).read_text(encoding="utf-8")
    elif "{" in choice:
        where, text = "chat_template", choice
    else:
        raise ValueError(f"chat_template {choice!r}: not a template name ({', '.join(['auto', *NAMED, *TEMPLATES])}), "
                         "an existing Jinja file, or template text (which has '{')")
    import jinja2

    try:
        _compile_as_transformers_does(text)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{where}:{e.lineno}: the chat template does not parse ({e.message})") from None
    return text


def _most_common(models: list) -> str | None:
    """The template most of `models`' tokenizers have (stripped, as mergekit compares them); None if none has
    one. A tokenizer that does not load is passed over with a warning, as in mergekit."""
    from mnlu_jax.weights.convert import load_tokenizer, source_key

    distinct: dict[str, object] = {}  # each checkpoint once, in order
    for m in models:
        distinct.setdefault(source_key(m.path), m)
    found = []
    for model in distinct.values():
        if model.tokenizer_source is None:
            continue
        try:
            template = load_tokenizer(model.tokenizer_source).chat_template
        except (OSError, ValueError) as e:
            warnings.warn(f"chat_template auto: {model.path}: its tokenizer did not load ({e}); passed over",
                          stacklevel=2)
            continue
        if isinstance(template, dict):
            template = template.get("default")
        if template:
            found.append(template.strip())
    return collections.Counter(found).most_common(1)[0][0] if found else None


def set_chat_template(directory: Path, template: str) -> None:
    """Give the tokenizer written in `directory` the template (saved as transformers saves one)."""
    from mnlu_jax.weights.convert import load_tokenizer

    tokenizer = load_tokenizer(directory)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(directory)
