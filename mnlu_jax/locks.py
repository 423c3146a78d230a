"""One writer per output: an exclusive advisory lock beside what a command appends to or resumes.

`generate` appends records to its output, `train` writes checkpoints and logs under its `output_dir` and `pipeline`
runs every stage under its own; two runs on the same output (another shell, or every worker of a pod launched with
a single-process command) would interleave and repeat records or race on checkpoints. The lock is `flock` on a
sidecar file: the kernel releases it when the process ends, however it ends, so a killed run leaves nothing to
clean up. The file stays (unlinking a lock file others may have opened breaks the exclusion) and names the last
holder. On a filesystem without locks (NFS mounted `nolock`) the run goes on with a warning, unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive(lock_path: str | Path, what: str) -> Iterator[None]:
    """Hold `lock_path` for the block; if another process holds it, a ValueError names `what`, the holder's pid and
    host, and the lock file."""
    lock_path = Path(lock_path)
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ValueError(f"{what}: being written by {holder} (lock {lock_path}); wait for it to finish, or "
                             "write to another output") from None
        except OSError as e:  # a filesystem without locks (NFS mounted nolock): go on, as before locks existed
            log.warning("%s: cannot lock (%s); another run on the same output would not be refused", lock_path, e)
            yield
            return
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
