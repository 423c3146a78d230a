"""benchmarks/train.py's products_alone: it must find every matrix product of the train step, the fused loss's
chunk loop counted once per chunk, or the floor it reports for the step (README, "Training on this CPU") is wrong."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.train import products_alone  # noqa: E402

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, sliding_window=None)


def expected_gflop(batch: int, seq: int, head_positions: int) -> float:
    """Forward + backward (3x the forward's products) of every layer, causal attention over one block of queries
    (seq <= 32: the blocked path's smallest block) and the LM head on `head_positions` positions."""
    d, f, h, g, v, layers = 32, 64, 4, 2, 96, 2
    hd = d // h
    tokens = batch * seq
    projections = 2 * tokens * (d * h * hd + 2 * d * g * hd + h * hd * d + 3 * d * f)
    attention = 2 * 2 * batch * h * seq * seq * hd  # scores and probabilities x values
    return 3 * (layers * (projections + attention) + 2 * head_positions * d * v) / 1e9


def test_products_alone_counts_every_product_and_loss_chunk():
    batch, seq = 2, 16
    one_piece = products_alone(TINY, batch, seq, loss_chunk=0, repeats=1)
    chunked = products_alone(TINY, batch, seq, loss_chunk=4, repeats=1)  # 4 chunks cover all 16 positions
    assert one_piece["loss_chunks"] == 1 and chunked["loss_chunks"] == 4
    assert np.isclose(one_piece["gflop"], expected_gflop(batch, seq, batch * seq), rtol=1e-9)
    assert np.isclose(chunked["gflop"], one_piece["gflop"], rtol=1e-9)
    assert one_piece["seconds"] > 0 and one_piece["products"] >= 3 * 7 * TINY["num_hidden_layers"]


def test_products_alone_skips_chunks_without_answers():
    batch, seq = 2, 16
    weights = np.zeros((batch, seq), np.float32)
    weights[0, 2:5] = 1.0  # answers only in the first chunk of 4 positions of one row
    weights[1, 1] = 1.0
    sft = products_alone(TINY, batch, seq, loss_chunk=4, weights=weights, repeats=1)
    assert sft["loss_chunks"] == 1
    assert np.isclose(sft["gflop"], expected_gflop(batch, seq, batch * 4), rtol=1e-9)


def test_products_alone_on_one_core_counts_the_same_products():
    """The one-core floor runs in a child process pinned to one CPU (set before its JAX starts its threads)."""
    weights = np.ones((2, 16), np.float32)
    pinned = products_alone(TINY, 2, 16, loss_chunk=4, weights=weights, repeats=1, one_core=True)
    here = products_alone(TINY, 2, 16, loss_chunk=4, weights=weights, repeats=1)
    assert pinned["cpus"] == 1
    assert (pinned["gflop"], pinned["products"], pinned["loss_chunks"]) == \
        (here["gflop"], here["products"], here["loss_chunks"])
