"""Shared helpers for the benchmarks: a machine description and atomic JSON results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

# MNLU_BENCH_RESULTS redirects results (e.g. to the folder a remote GPU run sends back).
RESULTS = Path(os.environ.get("MNLU_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        import jax

        info["jax"] = jax.__version__
        info["jax_devices"] = [d.device_kind for d in jax.devices()]
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def median_seconds(f, *args, calls: int = 10) -> float:
    """Median wall time of `calls` calls of a jitted `f(*args)` after one warm-up call (compilation), each waited
    for on the device."""
    import jax

    jax.block_until_ready(f(*args))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    print(json.dumps(payload, indent=2))
    return path


def measured(cmd: list[str]) -> tuple[float, float, float]:
    """Run `cmd` as a child process; return (wall seconds, peak RSS GiB, peak anonymous RSS GiB) of that child.
    Peak RSS counts the pages of memory-mapped input files that were read (page cache the kernel can take back);
    the anonymous part, sampled from /proc every 20 ms, is the memory the command itself holds."""
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        anon_kb = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(OSError):  # a process that has exited has no RssAnon line
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        anon_kb = max(anon_kb, int(line.split()[1]))
            time.sleep(0.02)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 2**20, anon_kb / 2**20
