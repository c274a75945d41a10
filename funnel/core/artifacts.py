"""Where each stage's artifacts live, and their manifests read with one clear error each.

A preprocessing output ``PRE`` holds ``preprocess.json``; a training run ``RUN`` holds
``retrieval.json`` (and ``ranking.json`` once a ranker is trained); an export ``REPO`` is a
Triton model repository whose ensemble lives in ``REPO/funnel/1/ensemble`` with
``export.json``. Every reader here names the path and the command that makes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from funnel.core.errors import FunnelError

PREPROCESS_MANIFEST = "preprocess.json"
RETRIEVAL_MANIFEST = "retrieval.json"
RANKING_MANIFEST = "ranking.json"
VALIDATED_TOWERS = "validated"  # a retrieval run's early-stopped towers, where the served ones were refit
EXPORT_MANIFEST = "export.json"
MODEL_NAME = "funnel"  # the Triton model of an export
MODEL_VERSION = 1


def _read(path: Path, what: str, how: str) -> dict[str, Any]:
    if not path.exists():
        raise FunnelError(f"{path.parent}: not {what} (no {path.name}; {how})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FunnelError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest as indented JSON (timestamps and paths as text)."""
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def read_preprocess_manifest(pre: str | Path) -> dict[str, Any]:
    return _read(Path(pre) / PREPROCESS_MANIFEST, "a preprocessing output", "run `funnel preprocess` first")


def read_retrieval_manifest(run: str | Path) -> dict[str, Any]:
    return _read(Path(run) / RETRIEVAL_MANIFEST, "a training run", "run `funnel train retrieval`")


def read_ranking_manifest(run: str | Path) -> dict[str, Any] | None:
    """The ranker's manifest, or None when the run has no trained ranker."""
    run = Path(run)
    if not (run / "ranker").exists():
        return None
    return _read(run / RANKING_MANIFEST, "a ranked run", "run `funnel train ranking`")


def run_pre_dir(run: str | Path, retrieval: dict[str, Any] | None = None) -> Path:
    """The preprocessing output a run was trained on (it must still exist)."""
    retrieval = retrieval or read_retrieval_manifest(run)
    pre = Path(retrieval["data"]["pre"])
    if not (pre / PREPROCESS_MANIFEST).exists():
        raise FunnelError(f"{pre}: the run's preprocessing output is gone (needed for its tables)")
    return pre


def ensemble_dir(repo: str | Path) -> Path:
    """The ensemble directory inside an exported Triton repository."""
    return Path(repo) / MODEL_NAME / str(MODEL_VERSION) / "ensemble"


def read_export_manifest(repo: str | Path) -> dict[str, Any]:
    path = ensemble_dir(repo) / EXPORT_MANIFEST
    if not path.exists():
        raise FunnelError(f"{repo}: not a funnel export (no {path.relative_to(repo)}; run `funnel export`)")
    return _read(path, "a funnel export", "run `funnel export`")
