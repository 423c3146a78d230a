"""Model merging: per-tensor math (math.py), an in-memory pytree API (pytree.py), a streaming driver for
checkpoints on disk (streaming.py) and merge statistics (stats.py)."""

from mnlu_jax.merge.math import METHODS, MergeSpec, merge_tensor, tensor_key
from mnlu_jax.merge.pytree import merge_pytrees

__all__ = ["METHODS", "MergeSpec", "merge_tensor", "tensor_key", "merge_pytrees"]
