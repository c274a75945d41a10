import argparse

import pytest

from funnel.core.errors import FunnelError
from funnel.cli.args import add_config_arguments, overrides_from_args
from funnel.core.config import load_config
from models.config import RetrievalConfig


def test_yaml_then_cli_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("epochs: 3\ntower_dims: [256, 128]\nlogq: false\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RetrievalConfig)
    args = parser.parse_args(["--epochs", "5", "--learning-rate", "0.01"])
    cfg = load_config(RetrievalConfig, str(tmp_path / "run.yaml"), overrides_from_args(args, RetrievalConfig))
    assert cfg.epochs == 5  # the flag beats the file
    assert cfg.tower_dims == [256, 128] and cfg.logq is False  # from the file
    assert cfg.learning_rate == 0.01 and cfg.batch_size == RetrievalConfig().batch_size  # flag / default


def test_every_field_has_a_flag():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RetrievalConfig)
    args = parser.parse_args(["--no-logq", "--tower-dims", "32", "16"])
    assert args.logq is False and args.tower_dims == [32, 16]


def test_bad_yaml(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 3\nepoch: 4\n")
    with pytest.raises(FunnelError, match="unknown field"):
        load_config(RetrievalConfig, str(tmp_path / "a.yaml"), {})
    (tmp_path / "b.yaml").write_text("epochs: [\n")
    with pytest.raises(FunnelError, match="not valid YAML"):
        load_config(RetrievalConfig, str(tmp_path / "b.yaml"), {})
    with pytest.raises(FunnelError, match="not found"):
        load_config(RetrievalConfig, str(tmp_path / "missing.yaml"), {})
