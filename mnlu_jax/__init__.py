"""mnlu-jax: BioMistral-NLU in JAX/Flax.

Data flow (one module per stage): convert (weights/) -> build data (data/) -> train (train/)
-> merge (merge/) -> decode (decode/) -> parse and score (evaluate/).
"""

__version__ = "0.1.0"
