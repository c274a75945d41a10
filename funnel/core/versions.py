"""Versions of the packages a trained model or an export depends on (written into manifests)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("funnel", "merlin-models", "merlin-core", "merlin-systems", "nvtabular", "tensorflow-cpu", "tensorflow",
            "numpy", "pandas")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """``{package: version}`` for the installed ones among ``packages``."""
    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
