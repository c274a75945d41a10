"""Giving freed memory back to the operating system between the big steps of a long run."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def release_free_memory() -> bool:
    """Collect garbage, then ask glibc's allocator to return free heap pages (``malloc_trim``).

    Freed pandas/numpy buffers often stay in the process's heap, so a step that follows a large
    one starts from the earlier step's peak; trimming lets the next step reuse the pages the
    system has. Returns whether anything was trimmed (False where the C library has no
    ``malloc_trim``, e.g. musl or macOS: then this is only a garbage collection).
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    return bool(trim(0)) if trim is not None else False
