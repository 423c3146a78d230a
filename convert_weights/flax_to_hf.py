"""python -m convert_weights.flax_to_hf SRC OUT [--shard-size 5GB] [--dtype ...]  ==  mnlu-jax convert flax-to-hf"""

import sys

from mnlu_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["convert", "flax-to-hf", *sys.argv[1:]]))
