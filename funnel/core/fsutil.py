"""File-system helpers: atomic output directories and checksums."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from funnel.core import stop


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only if the block succeeds.

    The temporary directory lives next to ``final`` (same file system, so the swap is a
    rename) and carries the writer's pid in its name. On any exception (SIGTERM included: the
    CLI turns it into one, and ``funnel.core.stop`` is checked once more before the rename) it is
    removed and a previous ``final`` stays untouched; what a killed writer (``kill -9``, power
    loss) left behind is removed by the next writer.
    """
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        stop.raise_if_requested()  # a SIGTERM swallowed on the way (e.g. in a destructor) still stops it
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(final: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID`` siblings of ``final`` whose writer is dead.

    Temporaries of a live process (another export running now) are left alone. Returns what was
    removed.
    """
    final = Path(final)
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(?:tmp|old)-(\d+)(?:-.*)?$")
    removed = []
    if not final.parent.is_dir():
        return removed
    for path in final.parent.iterdir():
        match = pattern.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


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
