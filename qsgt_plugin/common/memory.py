"""Keep large freed blocks in the process's heap (glibc), so that they are reused, not re-faulted.

glibc serves a block above its mmap threshold (dynamic, at most 32 MB) with a fresh ``mmap``
and returns it to the system on ``free``. An evaluation batch of 1,000 CIFAR-10 images has
activations of 65 MB (1000 x 16 x 32 x 32 floats), so every layer of every batch asks the
kernel for new zeroed pages: half of the time of a W4A4 ResNet-20's evaluation on one core went
to page faults (32.9 s -> 18.0 s on 10,000 images, 5.5 million -> 0.16 million faults, the
same accuracy to the image; AMD EPYC, 2026-12-07, ``python benchmarks/allocator.py``, RESULTS.md
"Evaluation memory"). Training batches of 128 stay below the threshold and gain little.

The ``qsgt`` command, ``benchmarks/reproduce.py`` and the test suite call
:func:`keep_freed_memory` once at start; a Python user can call it as well. It changes only
where freed memory waits, never a computed value; the price is a higher resident size after
a peak (1.85 GB against 1.73 GB in that evaluation).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # free heap top kept before it is returned to the system
_M_MMAP_THRESHOLD = -3  # blocks at least this large get their own mmap


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Serve blocks up to ``limit`` bytes from the heap and keep up to ``limit`` bytes of
    free heap, for the whole process. Returns whether the C library took the settings:
    ``False`` on a platform without glibc's ``mallopt`` (macOS, Windows, musl), where
    nothing changes.

    Examples::

        >>> import qsgt_plugin
        >>> qsgt_plugin.keep_freed_memory() in (True, False)
        True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # glibc returns 1 on success; musl's stub returns 0 and changes nothing
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
