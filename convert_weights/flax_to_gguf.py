"""python -m convert_weights.flax_to_gguf SRC OUT.gguf [--gguf-type f16] [--tokenizer-pre NAME]
==  mnlu-jax convert flax-to-gguf SRC OUT.gguf [...]"""

import sys

from mnlu_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["convert", "flax-to-gguf", *sys.argv[1:]]))
