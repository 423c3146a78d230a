#!/usr/bin/env bash
# The test command (README): the whole suite on CPU, with 8 virtual devices for the sharding tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
exec python3 -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
