"""Generated text -> structured predictions. Parsers never raise, whatever the string; each returns whether the
output was parseable so that unparseable outputs can be counted and reported."""

from __future__ import annotations

import re

_LETTER = re.compile(r"\(([A-Z])\)")
SPAN_SEP = re.compile(r"\s*\.\.\.\s*|\s*…\s*")


def option_letter(option: str) -> str:
    m = _LETTER.match(option or "")
    return m.group(1) if m else ""


def parse_spans(text: str, names: list[str]) -> tuple[dict[str, list[str]], bool]:
    """`Name: s1 ... s2` lines -> {name: [spans]} for the given names (lines are matched by their name prefix,
    so reordered or missing lines are fine). Parseable when at least one line names a label."""
    out: dict[str, list[str]] = {n: [] for n in names}
    found = False
    try:
        by_len = sorted(names, key=len, reverse=True)  # "Cell line" before "Cell"
        for raw in str(text).splitlines():
            line = raw.strip().lstrip("-*• ").strip()
            for n in by_len:
                if line.lower().startswith(n.lower() + ":"):
                    found = True
                    body = line[len(n) + 1:].strip()
                    if body and body.lower().rstrip(".") != "none":
                        out[n] += [s.strip() for s in SPAN_SEP.split(body) if s.strip()]
                    break
    except Exception:  # noqa: BLE001 - a parser must never raise
        return {n: [] for n in names}, False
    return out, found or str(text).strip().lower().rstrip(".") == "none"


def letters_in_text_order(text: str) -> list[str]:
    try:
        return _LETTER.findall(str(text))
    except Exception:  # noqa: BLE001
        return []


def first_option_in_option_order(text: str, options: list[str]) -> int | None:
    """The paper's rule: the first option (A, B, ...) whose `(X)` appears anywhere in the text."""
    try:
        for i, o in enumerate(options):
            letter = option_letter(o)
            if letter and f"({letter})" in str(text):
                return i
    except Exception:  # noqa: BLE001
        pass
    return None


def first_option_in_text(text: str, options: list[str]) -> int | None:
    """The official rule: the option named first in the text, by its letter, else by its wording."""
    try:
        letters = [option_letter(o) for o in options]
        for l in letters_in_text_order(text):
            if l in letters:
                return letters.index(l)
        low = str(text).lower()
        hits = []
        for i, o in enumerate(options):  # whole-word match of the option's wording ("no" is not in "nonsense")
            m = re.search(r"(?<!\w)" + re.escape(o.split(") ", 1)[-1].lower().rstrip(".")) + r"(?!\w)", low)
            if m:
                hits.append((m.start(), i))
        if hits:
            return min(hits)[1]
    except Exception:  # noqa: BLE001
        pass
    return None


def options_in_text(text: str, options: list[str]) -> list[int]:
    """Multi-label: every option whose `(X)` appears."""
    try:
        present = set(letters_in_text_order(text))
        return [i for i, o in enumerate(options) if option_letter(o) in present]
    except Exception:  # noqa: BLE001
        return []
