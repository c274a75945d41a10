"""File-system helpers: atomic output directories and checksums."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only if the block succeeds.

    The temporary directory lives next to ``final`` (same file system, so the swap is a
    rename). On any exception it is removed and a previous ``final`` stays untouched.
    """
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_files(paths: list[Path], chunk: int = 1 << 20) -> str:
    """Return ``sha256:<hex>`` over the bytes of ``paths`` in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def sha256_text(text: str) -> str:
    """Return ``sha256:<hex>`` of a string (used for generator parameters)."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
