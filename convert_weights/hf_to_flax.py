"""python -m convert_weights.hf_to_flax SRC OUT [--dtype ...]  ==  mnlu-jax convert hf-to-flax SRC OUT [...]"""

import sys

from mnlu_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["convert", "hf-to-flax", *sys.argv[1:]]))
