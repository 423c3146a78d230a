#!/usr/bin/env bash
# The test command (README): the whole suite on CPU, with 8 virtual devices for the sharding tests, in
# MNLU_TEST_WORKERS pytest-xdist processes (default 2, CI's cores; 0 runs in this process). Each test file runs in
# one worker (--dist loadfile), so the module fixtures (SmolLM2's load, the tiny pipeline run) are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
workers="${MNLU_TEST_WORKERS:-2}"
parallel=()
if [ "$workers" != 0 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec python3 -m pytest -q -p no:cacheprovider --durations=15 ${parallel[@]+"${parallel[@]}"} tests "$@"
