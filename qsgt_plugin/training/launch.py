"""``qsgt train --nproc N``: check everything, hold the run's lock, and run torchrun.

The launcher validates the recipe, the data and the run directory before any process starts,
so a user error prints once. It holds the run directory's lock for its ranks, and it ties their
lives to its own: torchrun is killed by the kernel when the launcher dies (even by SIGKILL), and
each rank exits when its parent (torchrun) is gone (:func:`watch_parent`). A user error inside a
rank reaches the launcher through a file and is printed as one line, without torchrun's
failure report.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ERROR_FILE_ENV", "launch", "report_rank_error", "watch_parent"]

ERROR_FILE_ENV = "QSGT_ERROR_FILE"
_PR_SET_PDEATHSIG = 1
# torchrun's own report of a failed worker starts with a line from its elastic package.
_TORCHRUN_REPORT = (
    b"torch/distributed/elastic/",
    b"torch.distributed.elastic",
    b"ChildFailedError",
)


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGKILL when the launcher dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def watch_parent(interval: float = 0.5) -> None:
    """Exit this process (a rank) as soon as its parent process is gone."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(interval)

    threading.Thread(target=watch, name="qsgt-watch-parent", daemon=True).start()


def report_rank_error(message: str) -> bool:
    """Hand a rank's user error to the launcher; False when not started by one."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return False
    try:  # the first rank to fail tells the story
        with open(path, "x") as f:
            f.write(message)
    except FileExistsError:
        pass
    return True


def launch(argv: Sequence[str], nproc: int, lock_env: dict[str, str]) -> tuple[int, str | None]:
    """Run ``qsgt`` with ``argv`` (``--nproc`` removed) under torchrun with ``nproc`` ranks.

    Returns torchrun's exit status and the user error a rank reported, if any.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "qsgt_plugin.cli",
        *argv,
    ]
    with tempfile.TemporaryDirectory(prefix="qsgt-launch-") as tmp:
        error_file = Path(tmp) / "error"
        env = {**os.environ, **lock_env, ERROR_FILE_ENV: str(error_file)}
        # torchrun sets 1 thread per rank and prints a banner about it unless this is set
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        proc = subprocess.Popen(
            command, env=env, stderr=subprocess.PIPE, preexec_fn=_die_with_parent
        )
        held = _relay(proc)
        status = proc.wait()
        error = error_file.read_text() if error_file.exists() else None
        if error is None and held:
            sys.stderr.buffer.write(held)
            sys.stderr.flush()
        return status, error


def _relay(proc: subprocess.Popen) -> bytes:
    """Pass torchrun's stderr through live; hold back its failure report (returned)."""
    held = bytearray()
    pending = b""
    fd = proc.stderr.fileno()
    while chunk := os.read(fd, 65536):
        if held:
            held += chunk
            continue
        pending += chunk
        cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
        complete, pending = pending[:cut], pending[cut:]
        for marker in _TORCHRUN_REPORT:
            at = complete.find(marker)
            if at >= 0:
                start = complete.rfind(b"\n", 0, at) + 1
                held += complete[start:] + pending
                complete, pending = complete[:start], b""
                break
        sys.stderr.buffer.write(complete)
        sys.stderr.flush()
    sys.stderr.buffer.write(pending)
    return bytes(held)
