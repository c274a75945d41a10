"""`funnel monitor` on planted drift from the synthetic generator: it flags exactly what moved."""

from __future__ import annotations

import json

import pytest

from funnel.data.synth import SynthConfig, generate
from workflows.preprocess import PreprocessConfig, preprocess

BASE = dict(users=3000, items=600, days=42, seed=7)


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    def build(name: str, **shift):
        root = tmp_path_factory.mktemp(name)
        generate(SynthConfig(**BASE, **shift), root / "data")
        preprocess(PreprocessConfig(data=str(root / "data"), out=str(root / "pre"), device="cpu"))
        return root
    return build


def test_no_drift_no_alert(make, cli):
    root = make("steady")
    code, out, err = cli("monitor", "--reference", root / "pre", "--current", root / "data", "--out", root / "report")
    assert code == 0, err
    report = json.loads((root / "report" / "monitor.json").read_text())
    assert report["drifted"] == [] and report["window"]["current_rows"] > 0
    assert (root / "report" / "psi.png").stat().st_size > 1000


def test_price_shift_flags_price_only(make, cli):
    root = make("prices", shift_day=35, shift_price=1.5)
    code, out, err = cli("monitor", "--reference", root / "pre", "--current", root / "data", "--out", root / "report")
    assert code == 3 and "price" in err
    report = json.loads((root / "report" / "monitor.json").read_text())
    assert report["drifted"] == ["price"]
    assert "price | numeric" in (root / "report" / "monitor.md").read_text()
    assert (root / "report" / "dist-price.png").exists()


def test_taste_shift_flags_item_attributes_not_prices_or_buyers(make, cli):
    root = make("tastes", shift_day=35, shift_tastes=0.6)
    code, _, _ = cli("monitor", "--reference", root / "pre", "--current", root / "data", "--out", root / "report")
    assert code == 3
    drifted = json.loads((root / "report" / "monitor.json").read_text())["drifted"]
    assert "item.product_type_name" in drifted
    assert all(name.startswith("item.") for name in drifted)


def test_bad_inputs_are_named(tmp_path, cli):
    code, _, err = cli("monitor", "--reference", tmp_path, "--current", tmp_path, "--out", tmp_path / "r")
    assert code == 2 and "not a preprocessing output" in err
