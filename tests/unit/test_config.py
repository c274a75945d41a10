import argparse
import dataclasses
import json

import pytest

from ensemble.config import ExcludeSeen, ExportConfig
from funnel.cli.args import add_config_arguments, overrides_from_args
from funnel.core.config import as_dict, load_config
from funnel.core.errors import FunnelError
from models.config import RankingConfig, RetrievalConfig
from workflows.config import PreprocessConfig


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


def test_unknown_precision_is_refused():
    with pytest.raises(FunnelError, match="precision must be one of float32.*got 'fp8'"):
        RetrievalConfig(pre="p", out="o", precision="fp8")


def test_earlier_retriever_updates_need_an_epoch():
    assert RankingConfig(pre="p", run="r").earlier_retrievers == "updated"  # the default
    with pytest.raises(FunnelError, match="earlier_update_epochs must be >= 1"):
        RankingConfig(pre="p", run="r", earlier_update_epochs=0)


def test_new_item_slots_fit_in_the_list():
    assert ExportConfig(run="r").new_item_slots == 0  # off by default
    assert ExportConfig(run="r", k=12, new_item_slots=12).new_item_slots == 12
    for bad in (-1, 13):
        with pytest.raises(FunnelError, match=r"new_item_slots must be in \[0, k=12\]"):
            ExportConfig(run="r", k=12, new_item_slots=bad)


@pytest.mark.parametrize("make, field", [
    (lambda: ExportConfig(run="r", exclude_seen="sometimes"), "exclude_seen"),
    (lambda: ExportConfig(run="r", tf_runtime="onnx"), "tf_runtime"),
    (lambda: PreprocessConfig(data="d", out="o", split="random"), "split"),
    (lambda: PreprocessConfig(data="d", out="o", device="tpu"), "device"),
])
def test_choices_are_checked_once_when_the_config_is_built(make, field):
    with pytest.raises(FunnelError, match=f"{field} must be one of"):
        make()


def test_choice_fields_become_enums_and_read_as_text():
    cfg = ExportConfig(run="r", exclude_seen="days", index="ivf")
    assert cfg.exclude_seen is ExcludeSeen.DAYS and cfg.exclude_seen == "days" and f"{cfg.exclude_seen}" == "days"
    assert as_dict(cfg)["index"] == "ivf" and type(as_dict(cfg)["index"]) is str  # manifests hold plain text
    assert json.loads(json.dumps(as_dict(PreprocessConfig(data="d", out="o", split="user-last"))))["split"] == "user-last"


def test_every_config_field_is_a_flag_and_choices_are_listed():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ExportConfig)
    assert parser.parse_args(["--exclude-seen", "days"]).exclude_seen == "days"
    with pytest.raises(SystemExit):  # argparse refuses a value outside the choices
        parser.parse_args(["--exclude-seen", "sometimes"])
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(ExportConfig)} <= flags
