"""PredictionLogger: sampling, asynchronous parquet partitions, bounded buffer, flush on close."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.prediction_log import PredictionLogger, read_logs


def _answer(users: int, k: int = 3) -> dict[str, np.ndarray]:
    ids = np.array([[f"i{u}-{j}".encode() for j in range(k)] for u in range(users)], dtype=object)
    return {"item_ids": ids, "scores": np.full((users, k), 0.5, np.float32),
            "sources": np.full((users, k), b"retrieval", dtype=object),
            "candidate_ids": np.concatenate([ids, np.full((users, 1), b"", dtype=object)], axis=1),
            "candidate_sources": np.full((users, k + 1), b"trending", dtype=object),
            "candidate_scores": np.full((users, k + 1), 0.25, np.float32)}


def test_everything_logged_at_full_sampling_and_flushed_on_close(tmp_path):
    log = PredictionLogger(tmp_path, sample=1.0, model_version="v1", flush_records=64, flush_seconds=60)
    for r in range(50):
        users = np.array([f"u{r}-{i}".encode() for i in range(7)], dtype=object)
        assert log.log_batch(f"req-{r}", users, _answer(7)) == 7
    log.close()
    frame = read_logs(tmp_path)
    assert len(frame) == 350 == log.logged and log.dropped == 0 and log.files >= 5
    row = frame.sort_values("user_id").iloc[0]
    assert row["model_version"] == "v1" and list(row["items"]) == ["i0-0", "i0-1", "i0-2"]
    assert len(row["candidates"]) == 3 and set(row["candidate_sources"]) == {"trending"}  # padding dropped
    assert frame["request_id"].nunique() == 50 and (tmp_path / f"date={row['date']}").is_dir()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_sampling_rate(tmp_path):
    log = PredictionLogger(tmp_path, sample=0.05, seed=0, flush_seconds=0.1)
    users = np.array([f"u{i}".encode() for i in range(20_000)], dtype=object)
    queued = log.log_batch("r", users, _answer(20_000, k=1))
    log.close()
    assert 850 < queued < 1150 and len(read_logs(tmp_path)) == queued


def test_a_full_buffer_drops_and_counts_instead_of_blocking(tmp_path):
    log = PredictionLogger(tmp_path, sample=1.0, max_buffer=10, flush_records=10**6, flush_seconds=3600)
    log._stop.set()  # writer idle: nothing drains the queue while we fill it
    log._writer.join()
    users = np.array([f"u{i}".encode() for i in range(25)], dtype=object)
    assert log.log_batch("r", users, _answer(25)) == 10 and log.dropped == 15


def test_bad_sample_rate(tmp_path):
    with pytest.raises(ValueError, match="sample"):
        PredictionLogger(tmp_path, sample=1.5)


def test_candidate_scores_and_tiers_stay_aligned_with_candidates(tmp_path):
    log = PredictionLogger(tmp_path, sample=1.0, flush_seconds=60)
    answer = _answer(2)
    answer["candidate_scores"][0, 1] = np.nan  # a candidate the draw could not pick
    answer["candidate_tiers"] = np.array([[0, 0, 1, np.nan], [0, 1, 1, np.nan]], np.float32)
    answer["latency_ms"] = np.array([1.5, 2.5])
    log.log_batch("r", np.array([b"a", b"b"], dtype=object), answer, temperature=0.5)
    log.close()
    frame = read_logs(tmp_path).sort_values("user_id")
    first = frame.iloc[0]
    assert len(first["candidate_scores"]) == len(first["candidates"]) == len(first["candidate_tiers"]) == 3
    assert np.isnan(first["candidate_scores"][1]) and list(first["candidate_tiers"]) == [0, 0, 1]
    assert frame["latency_ms"].tolist() == [1.5, 2.5] and frame["temperature"].tolist() == [0.5, 0.5]

