"""Data-parallel training (`--devices`, tf.distribute.MirroredStrategy) on two logical CPU devices.

The same code path mirrors over several GPUs on a CUDA host; here the one CPU is split into two
logical devices, which must happen before TensorFlow starts, hence a fresh interpreter.
MovieLens-100k is used because its `genres` list feature is what a naive batch split tears apart.
"""

import json
import os
import subprocess
import sys
import textwrap

TRAIN_ON_TWO_DEVICES = textwrap.dedent("""
    import sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from funnel.cli import main

    pre, run = sys.argv[1], sys.argv[2]
    devices = ["--devices", "/cpu:0,/cpu:1"]
    code = main(["train", "retrieval", pre, "--out", run, "--epochs", "2", "--patience", "2", "--embedding-dim", "16",
                 "--tower-dims", "32", "--learning-rate", "0.003", *devices])
    code = code or main(["train", "ranking", pre, "--run", run, "--epochs", "1", "--embedding-dim", "8",
                         "--top-dims", "16", "--candidates", "30", "--item-item", "30",
                         "--item-item-lambdas", "200", "--label-windows", "1", *devices])
    raise SystemExit(code)
""")


def test_train_mirrored_on_two_devices(ml_pre_dir, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", TRAIN_ON_TWO_DEVICES, str(ml_pre_dir), str(run)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 replicas (MirroredStrategy)" in proc.stdout

    retrieval = json.loads((run / "retrieval.json").read_text())
    ranking = json.loads((run / "ranking.json").read_text())
    assert retrieval["replicas"] == 2 and ranking["replicas"] == 2
    assert retrieval["config"]["devices"] == "/cpu:0,/cpu:1"
    losses = [h["loss"] for h in retrieval["history"]]
    assert losses[1] < losses[0]
    # learning, not plumbing: chance Recall@10 over 1,682 films is ~0.006
    assert retrieval["metrics"]["valid_recall@10"] > 0.03
    assert (run / "ranker" / "saved_model.pb").exists()


def test_unknown_device_is_a_clear_error(ml_pre_dir, tmp_path, capsys):
    from funnel.cli import main

    code = main(["train", "retrieval", str(ml_pre_dir), "--out", str(tmp_path / "run"), "--devices", "/gpu:7",
                 "--epochs", "1"])
    assert code == 2
    assert "devices: /gpu:7 not visible to TensorFlow" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
