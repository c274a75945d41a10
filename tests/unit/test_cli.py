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
