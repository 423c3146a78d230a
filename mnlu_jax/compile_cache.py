"""A persistent XLA compilation cache for the `mnlu-jax` console script.

The decoder compiles one executable per (stage, batch, cache length) it meets, and on CPU the default
feature-major layer loop unrolls every layer, so compilation is a large share of a short evaluation: the demo's
zero-shot evaluation of SmolLM2 (15 sets, ~10 prompts each, 48 new tokens) took 177 s of generation with a cold
cache and 118 s with a warm one (2-core CPU). The pipeline evaluates the base, the fine-tune and the merge with the
same shapes, and reruns of any command hit the cache too. JAX keys entries on the compiled program and the
backend, so a stale entry is never used.

Where: `$MNLU_JAX_COMPILATION_CACHE` if set (`off`, `0` or empty turn it off); else a `JAX_COMPILATION_CACHE_DIR`
the user set is left to JAX; else `$XDG_CACHE_HOME/mnlu_jax/xla` (default `~/.cache/mnlu_jax/xla`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "MNLU_JAX_COMPILATION_CACHE"
OFF = ("", "0", "off", "false", "no")


def cache_dir() -> Path | None:
    """The directory the console script will use, or None when the cache is off or JAX's own setting applies."""
    if ENV in os.environ:
        value = os.environ[ENV].strip()
        return None if value.lower() in OFF else Path(value).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None  # JAX reads it itself
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnlu_jax" / "xla"


def enable_compilation_cache(path: Path | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at `path` (default: `cache_dir()`). Returns the directory used, or
    None. A directory that cannot be created is reported on stderr and the run goes on without the cache.

    Before jax is imported this only sets `JAX_COMPILATION_CACHE_DIR` (which jax reads on import, and which child
    processes inherit), so commands that never touch jax (build-data, score) do not pay for importing it."""
    path = cache_dir() if path is None else Path(path)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"mnlu-jax: compilation cache off ({ENV}={path}: {e})", file=sys.stderr)
        return None
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_compilation_cache_dir", str(path))
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    return path
