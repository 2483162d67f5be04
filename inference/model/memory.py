"""Handing freed heap back to the operating system."""

from __future__ import annotations

import contextlib
import ctypes
import sys


def give_back_freed_memory() -> None:
    """Return freed heap to the operating system (glibc keeps it for reuse otherwise).

    Loading converts and packs tensor by tensor; glibc keeps what those
    transients freed in its arenas, where RSS still counts it (measured: about
    0.6x the packed weights after fbgemm's packing). A no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
