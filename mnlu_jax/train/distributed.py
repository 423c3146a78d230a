"""Multi-host setup: `jax.distributed.initialize` for TPU pods, SLURM GPU clusters or an explicit coordinator.

- TPU VM pods: `jax.distributed.initialize()` reads the TPU metadata itself.
- SLURM: coordinator = first host of SLURM_JOB_NODELIST (port MNLU_COORDINATOR_PORT, default 12355), process id
  SLURM_PROCID, count SLURM_NTASKS (jax's own SLURM cluster detection does the same).
- explicit: MNLU_COORDINATOR=host:port, MNLU_NUM_PROCESSES, MNLU_PROCESS_ID (used by launch/local_multiprocess.sh;
  on CPU also set MNLU_CPU_COLLECTIVES=gloo).
"""

from __future__ import annotations

import os

import jax


def initialize(mode: str = "auto") -> None:
    if mode == "none":
        return
    if os.environ.get("MNLU_CPU_COLLECTIVES"):
        jax.config.update("jax_cpu_collectives_implementation", os.environ["MNLU_CPU_COLLECTIVES"])
    if "MNLU_COORDINATOR" in os.environ:
        coordinator = os.environ["MNLU_COORDINATOR"]
        if coordinator.rpartition(":")[0] == "" or not coordinator.rpartition(":")[2].isdigit():
            raise ValueError(f"MNLU_COORDINATOR={coordinator!r}: expected host:port (e.g. 127.0.0.1:12355)")
        count, index = _env_int("MNLU_NUM_PROCESSES", 1), _env_int("MNLU_PROCESS_ID", 0)
        if index >= count:
            raise ValueError(f"MNLU_PROCESS_ID={index}: expected 0 .. MNLU_NUM_PROCESSES - 1 = {count - 1}")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=count, process_id=index)
        return
    if mode == "explicit":
        raise ValueError("distributed=explicit needs MNLU_COORDINATOR, MNLU_NUM_PROCESSES and MNLU_PROCESS_ID")
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES") or \
            os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # jax detects SLURM and TPU pods from the environment


def _env_int(name: str, least: int) -> int:
    """An integer environment variable the explicit mode needs, named when it is missing or malformed."""
    value = os.environ.get(name)
    if value is None or not value.strip().isdigit() or int(value) < least:
        raise ValueError(f"MNLU_COORDINATOR is set, so {name} must be an integer >= {least}; got {value!r} "
                         "(launch/local_multiprocess.sh sets all three)")
    return int(value)
