import subprocess
import sys
import time

HEAVY = ("tensorflow", "nvtabular", "cudf", "merlin", "dask", "pandas", "pyarrow")


def test_help_is_instant_and_lists_commands():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "funnel", "--help"], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    assert "data" in out.stdout and "preprocess" in out.stdout
    assert elapsed < 2.0, f"funnel --help took {elapsed:.2f}s"


def test_no_heavy_imports_at_start_up():
    code = (
        "import sys; from funnel.cli import build_parser; build_parser().format_help(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "funnel", "preprocess", str(tmp_path / "missing"), "--out", str(tmp_path / "p")],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("funnel: error: ")
    assert "missing" in out.stderr


def test_data_info(synth_dir, cli):
    code, out, _ = cli("data", "info", synth_dir)
    assert code == 0 and '"name": "synthetic"' in out


def test_preprocess_summary_table(synth_dir, tmp_path, cli):
    code, out, err = cli("preprocess", synth_dir, "--out", tmp_path / "p", "--device", "cpu")
    assert code == 0, err
    for label in ("device", "train / test rows", "users: all / train / test (cold)", "rows/s"):
        assert label in out


def test_training_progress_in_a_log_is_a_plain_line_a_minute(capsys):
    from funnel.cli.train import EpochBars

    now = [100.0]
    bars = EpochBars("two-tower", clock=lambda: now[0])
    assert not bars.terminal  # pytest captures stderr: not a terminal, so no tqdm bar
    for second, done in ((0, 0), (30, 30_000), (61, 61_000), (90, 90_000), (125, 125_000)):
        now[0] = 100.0 + second
        bars(1, done, 600_000)
    lines = capsys.readouterr().err.strip().splitlines()
    # one line a minute at most: at 61 s and 125 s (64 s after the first), none at 30 s or 90 s
    assert lines == ["two-tower epoch 1: 61,000 / 600,000 rows (10.2%)  1,000 rows/s  about 9 min left",
                     "two-tower epoch 1: 125,000 / 600,000 rows (20.8%)  1,000 rows/s  about 8 min left"]
    now[0] = 300.0
    bars(2, 10, 600_000)  # a new epoch restarts the clock: nothing until its own first minute
    assert capsys.readouterr().err == ""
