"""``release_free_memory`` returns freed heap pages to the system (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes.util
import platform

import numpy as np
import pytest

from funnel.core.memory import release_free_memory


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(platform.system() != "Linux" or not ctypes.util.find_library("c"),
                    reason="measures RSS through /proc and glibc's malloc_trim (Linux only)")
def test_freed_holes_in_the_heap_go_back_to_the_system():
    arrays = [np.ones(2000) for _ in range(30_000)]  # 16 KB each, ~480 MB from the malloc heap
    keep = arrays[::50]  # every 50th stays, so the freed ones are holes, not the heap's top
    del arrays
    held = _rss_mib()
    release_free_memory()
    assert _rss_mib() < held - 300, "the freed arrays' pages stayed in the process"
    assert len(keep) == 600
