"""Shared fixtures: small real data (the synthetic generator with a fixed seed, ml-100k)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*in CPU mode.*")

SMALL = dict(users=1500, items=400, days=35, seed=7)


# The test files that take longest (seconds of the slowest tests in CI's --durations, 2-core box), in
# that order. pytest-xdist's loadfile hands out files with the most tests first, which left these
# few-test, many-minute files for the end while the other worker idled: they go out first instead
# (longest processing time first), and the many short files fill in behind them.
LONGEST_FILES = ["test_notebooks.py", "test_training.py", "test_triton_serving.py", "test_served_evaluation.py",
                 "test_no_look_ahead.py", "test_multi_device.py", "test_export.py", "test_train_evaluate_cli.py",
                 "test_reliability.py", "test_experiments.py", "test_online_features.py"]


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with :data:`LONGEST_FILES` handed out first (the controller's hook)."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongestFirst(LoadFileScheduling):
        ordered = False

        def _assign_work_unit(self, node):
            if not self.ordered:  # once, before the first file goes out: a stable sort by the list
                self.ordered = True
                rank = {name: i for i, name in enumerate(LONGEST_FILES)}
                units = sorted(self.workqueue.items(), key=lambda unit: rank.get(Path(unit[0]).name, len(rank)))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "gpu" in parts:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def small_synth() -> dict:
    """The generator parameters of the small test dataset (feast installs a top-level `tests`
    package into site-packages, so test modules must not import `tests.conftest`)."""
    return dict(SMALL)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset (fixed seed), generated once per test session."""
    from funnel.data.synth import SynthConfig, generate
    from funnel.core.fsutil import atomic_output_dir

    out = tmp_path_factory.mktemp("synth") / "data"
    with atomic_output_dir(out) as tmp:
        generate(SynthConfig(**SMALL), tmp)
    return out


@pytest.fixture(scope="session")
def pre_dir(synth_dir, tmp_path_factory) -> Path:
    """The small synthetic dataset preprocessed once (time split, CPU, single process)."""
    from workflows.preprocess import PreprocessConfig, preprocess

    out = tmp_path_factory.mktemp("pre") / "pre"
    preprocess(PreprocessConfig(data=str(synth_dir), out=str(out), device="cpu"))
    return out


@pytest.fixture(scope="session")
def ml100k_source() -> Path:
    """The real MovieLens-100k files (unpacked by `make ml-100k` from the recbole wheel)."""
    path = Path(os.environ.get("FUNNEL_ML100K", ".cache/ml-100k"))
    if not (path / "ml-100k.inter").exists():
        pytest.fail(f"MovieLens-100k not found at {path}: run `make ml-100k` (the README's `make test` does)")
    return path


@pytest.fixture(scope="session")
def ml_pre_dir(ml100k_source, tmp_path_factory) -> Path:
    """MovieLens-100k as a canonical dataset, preprocessed once (user-last split, CPU)."""
    from funnel.cli import main

    work = tmp_path_factory.mktemp("ml")
    assert main(["data", "movielens-100k", "--source", str(ml100k_source), "--out", str(work / "data")]) == 0
    assert main(["preprocess", str(work / "data"), "--out", str(work / "pre"), "--split", "user-last",
                 "--device", "cpu"]) == 0
    return work / "pre"


@pytest.fixture
def cli(capsys):
    """Run the funnel CLI in-process; return (exit code, stdout, stderr)."""
    from funnel.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


TINY_TRAIN = dict(epochs=3, batch_size=256, embedding_dim=16, tower_dims=[32], valid_users=500, patience=3)
# two label periods (the default is four): the earlier-period path runs, at half the cost
TINY_RANKER = dict(candidates=50, embedding_dim=16, top_dims=[32], epochs=2, batch_size=256, label_windows=2)


@pytest.fixture(scope="session")
def train_small():
    """Train the small run's models: ``train_small(pre, out, ranker=True)`` (one home for their configs)."""
    from models.config import RankingConfig, RetrievalConfig
    from models.ranking import train as train_ranker
    from models.retrieval import train as train_retriever

    def run(pre: Path, out: Path, ranker: bool = True) -> Path:
        train_retriever(RetrievalConfig(pre=str(pre), out=str(out), **TINY_TRAIN))
        if ranker:
            train_ranker(RankingConfig(pre=str(pre), run=str(out), **TINY_RANKER))
        return out

    return run


@pytest.fixture(scope="session")
def retrieval_run(pre_dir, tmp_path_factory, train_small) -> Path:
    """A two-tower model trained for a few epochs on the small synthetic data."""
    return train_small(pre_dir, tmp_path_factory.mktemp("run") / "run", ranker=False)


@pytest.fixture(scope="session")
def ranked_run(pre_dir, retrieval_run) -> Path:
    """The small run with a DLRM ranker trained on top of the retriever."""
    from models.config import RankingConfig
    from models.ranking import train

    train(RankingConfig(pre=str(pre_dir), run=str(retrieval_run), **TINY_RANKER))
    return retrieval_run


@pytest.fixture(scope="session")
def ranker_run(ranked_run, tmp_path_factory) -> Path:
    """The small run with its DLRM switched on, as if the gate had said yes: the gate of a run this
    small decides on a few dozen users and usually keeps the blend order, but the serving tests
    exercise the ranker's path (its inputs, its own Triton model)."""
    import json
    import shutil

    run = tmp_path_factory.mktemp("ranker-on") / "run"
    shutil.copytree(ranked_run, run)
    ranking = json.loads((run / "ranking.json").read_text())
    ranking["blend"]["with_ranker"] = {"weights": {"ranker_score": 1.0}}  # the order is the ranker's own
    (run / "ranking.json").write_text(json.dumps({**ranking, "use_ranker": True}))
    return run
