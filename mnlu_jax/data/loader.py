"""The training data pipeline (grain): deterministic shuffle, first-fit packing, per-process batch slices.

Packing happens on the *global* stream (identical in every process), and each process then takes its rows of
each global batch, so the global batches are the same on 1 process x 4 devices and 2 processes x 2 devices.
The iterator's state (a small dict) is saved with every checkpoint and restores the exact next batch.
Packed features: inputs/targets/weights plus `*_segment_ids` (0 = padding) and `*_positions` per segment.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset


def make_dataset(examples: list[dict[str, np.ndarray]], seq_len: int, global_batch: int, seed: int,
                 epochs: int | None, process_index: int = 0, process_count: int = 1, num_packing_bins: int | None = None):
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    too_long = [i for i, e in enumerate(examples) if len(e["inputs"]) > seq_len]
    if too_long:
        raise ValueError(f"{len(too_long)} examples are longer than seq_len={seq_len} (first: #{too_long[0]}); "
                         "tokenize with max_len <= seq_len + 1")
    ds = grain.MapDataset.source(examples)
    ds = ds.repeat(epochs) if epochs is not None else ds.repeat(None)
    ds = ds.shuffle(seed=seed)
    it = ds.to_iter_dataset()
    it = FirstFitPackIterDataset(it, length_struct={"inputs": seq_len, "targets": seq_len, "weights": seq_len},
                                 num_packing_bins=num_packing_bins or global_batch, seed=seed, shuffle_bins=False)
    it = it.batch(global_batch, drop_remainder=True)
    per = global_batch // process_count

    def local(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        sl = slice(process_index * per, (process_index + 1) * per)
        return {"inputs": batch["inputs"][sl], "targets": batch["targets"][sl], "weights": batch["weights"][sl],
                "segment_ids": batch["inputs_segment_ids"][sl], "positions": batch["inputs_positions"][sl]}

    return it.map(local)


def count_batches(examples: list[dict[str, np.ndarray]], seq_len: int, global_batch: int, seed: int, epochs: int) -> int:
    """How many global batches `epochs` passes yield (runs the packer once; cheap for token lists)."""
    return sum(1 for _ in make_dataset(examples, seq_len, global_batch, seed, epochs))
