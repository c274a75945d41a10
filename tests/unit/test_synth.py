import json

import numpy as np
import pandas as pd
import pytest

from funnel.data.canonical import read_dataset
from funnel.data.synth import Oracle, SynthConfig, generate
from funnel.core.errors import FunnelError


def _generate(tmp_path, base: dict, **kw):
    out = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    generate(SynthConfig(**{**base, **kw}), out)
    return out


def test_canonical_layout_and_types(synth_dir):
    ds = read_dataset(synth_dir)
    inter = ds.interactions()
    assert list(inter.columns[:3]) == ["user_id", "item_id", "timestamp"]
    assert {"price", "channel", "order_id"} <= set(inter.columns)
    assert inter["user_id"].map(type).eq(str).all()  # H&M: customer ids are strings
    assert inter["item_id"].dtype == np.int64  # article ids are integers
    assert ds.meta["id_types"] == {"user_id": "string", "item_id": "int64"}
    assert ds.meta["rows"]["interactions"] == len(inter)
    assert ds.repurchase is True
    items, users = ds.items(), ds.users()
    assert {"product_type_name", "colour_group_name", "section_name", "price", "in_stock"} <= set(items.columns)
    assert {"age", "club_member_status", "fashion_news_frequency"} <= set(users.columns)
    assert inter["item_id"].isin(items["item_id"]).all() and inter["user_id"].isin(users["user_id"]).all()
    assert items["item_id"].is_unique and users["user_id"].is_unique
    assert set(inter["channel"].unique()) <= {1, 2}


def test_deterministic_per_seed(tmp_path, small_synth):
    a, b, c = _generate(tmp_path, small_synth), _generate(tmp_path, small_synth), _generate(tmp_path, small_synth, seed=8)
    for name in ("interactions.parquet", "items.parquet", "users.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name))
    assert json.loads((a / "dataset.json").read_text())["content_checksum"] == \
        json.loads((b / "dataset.json").read_text())["content_checksum"]
    assert not pd.read_parquet(a / "interactions.parquet").equals(pd.read_parquet(c / "interactions.parquet"))


def test_size_follows_parameters(tmp_path, small_synth):
    small = read_dataset(_generate(tmp_path, small_synth, users=500)).meta["rows"]["interactions"]
    large = read_dataset(_generate(tmp_path, small_synth, users=2000)).meta["rows"]["interactions"]
    assert 3 < large / small < 5.5


def test_planted_structure(synth_dir):
    inter = read_dataset(synth_dir).interactions()
    counts = inter["item_id"].value_counts()
    # power-law popularity: the top 5% of articles hold far more than 5% of sales
    assert counts.head(int(len(counts) * 0.05)).sum() / counts.sum() > 0.2
    # repurchase habits: a sizeable share of purchases repeats an earlier one of the same user
    ordered = inter.sort_values("timestamp")
    assert ordered.duplicated(["user_id", "item_id"]).mean() > 0.1
    # weekend seasonality: more baskets on Saturdays and Sundays
    per_day = inter.drop_duplicates("order_id").groupby(inter["timestamp"].dt.dayofweek).size()
    assert per_day[[5, 6]].mean() > per_day[[0, 1, 2, 3, 4]].mean() * 1.15


def test_stock_and_launches_respected(synth_dir, small_synth):
    inter = read_dataset(synth_dir).interactions()
    truth = pd.read_parquet(synth_dir / "ground_truth" / "items.parquet")
    start = inter["timestamp"].min().normalize()
    day = ((inter["timestamp"] - start) / pd.Timedelta(days=1)).astype(int)
    fresh = pd.read_parquet(synth_dir / "ground_truth" / "fresh.parquet")["fresh"].to_numpy()
    merged = pd.DataFrame({"item_id": inter["item_id"], "day": day, "fresh": fresh}).merge(truth, on="item_id")
    new = merged[merged["fresh"]]
    assert (new["day"] < new["stockout_day"]).all(), "bought after going out of stock"
    assert (new["day"] >= new["launch_day"]).all(), "bought before launch"
    items = read_dataset(synth_dir).items().merge(truth, on="item_id")
    assert (items["in_stock"] == (items["stockout_day"] >= small_synth["days"])).all()
    assert (~items["in_stock"]).sum() > 0


def test_oracle_beats_popularity_by_far(synth_dir):
    inter = read_dataset(synth_dir).interactions()
    cut = inter["timestamp"].max().normalize() - pd.Timedelta(days=6)
    train, test = inter[inter["timestamp"] < cut], inter[inter["timestamp"] >= cut]
    truth = test.groupby("user_id")["item_id"].apply(set)
    oracle = Oracle.load(synth_dir, cut, inter["timestamp"].max() + pd.Timedelta(seconds=1))
    top = oracle.topk(truth.index.to_numpy(), 12)
    recall_oracle = np.mean([len(set(t) & s) / len(s) for t, s in zip(top, truth)])
    popular = set(train[train["timestamp"] >= cut - pd.Timedelta(days=7)]["item_id"].value_counts().index[:12])
    recall_pop = np.mean([len(popular & s) / len(s) for s in truth])
    assert recall_oracle > 3 * recall_pop
    assert recall_oracle > 0.3


def test_oracle_needs_ground_truth(tmp_path):
    with pytest.raises(FunnelError, match="ground_truth"):
        Oracle.load(tmp_path, pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-02"))


@pytest.mark.parametrize("bad", [dict(users=0), dict(items=1), dict(repurchase_rate=1.5), dict(end_date="x")])
def test_bad_parameters(bad, small_synth):
    with pytest.raises(FunnelError):
        SynthConfig(**{**small_synth, **bad})


def test_cli_synth_summary_and_atomic_output(tmp_path, cli):
    code, out, err = cli("data", "synth", "--out", tmp_path / "d", "--users", 300, "--items", 100, "--days", 20)
    assert code == 0, err
    assert "interactions" in out and "rows/s" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary leftovers


def test_hm_preset_sets_the_kaggle_shape_and_flags_still_win(tmp_path, cli):
    import json

    from funnel.data.synth_config import PRESETS, SynthConfig

    full = SynthConfig(**PRESETS["hm"])
    assert (full.users, full.items) == (1_371_980, 105_542)
    assert abs(full.expected_interactions() - 31_788_324) / 31_788_324 < 0.01  # the Kaggle file's rows
    code, _, err = cli("data", "synth", "--preset", "hm", "--users", "800", "--items", "300", "--days", "15",
                       "--out", tmp_path / "d")
    assert code == 0, err
    source = json.loads((tmp_path / "d" / "dataset.json").read_text())["source"]
    assert (source["users"], source["items"], source["days"]) == (800, 300, 15)  # flags
    assert source["activity"] == PRESETS["hm"]["activity"] and source["styles"] == 128  # the preset
