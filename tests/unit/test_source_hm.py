"""`funnel data hm` on small files written in exactly the Kaggle format."""

import pandas as pd
import pytest

from funnel.data import hm
from funnel.data.canonical import read_dataset

CUSTOMERS = [
    "00000dbacae5abe5e23885899a1fa44253a17956c6d1c3d25f88aa139fdfc657",
    "0000423b00ade91418cceaf3b26c6af3dd342b51fd051eec9c12fb36984420fa",
    "000058a12d5b43e67d225668fa1f8d618c13dc232df0cad8ffe7ad4a1091e318",
]


@pytest.fixture
def kaggle(tmp_path):
    tx = pd.DataFrame(
        {
            "t_dat": ["2020-09-01", "2020-09-01", "2020-09-01", "2020-09-02", "2020-09-02", "2020-09-20"],
            "customer_id": [CUSTOMERS[0], CUSTOMERS[0], CUSTOMERS[0], CUSTOMERS[1], CUSTOMERS[1], CUSTOMERS[2]],
            "article_id": ["0663713001", "0663713001", "0541518023", "0505221004", "0685687003", "0663713001"],
            "price": [0.0508, 0.0508, 0.0305, 0.0152, 0.0169, 0.0491],
            "sales_channel_id": [2, 2, 2, 1, 1, 2],
        }
    )
    tx.to_csv(tmp_path / "transactions_train.csv", index=False)
    pd.DataFrame(
        {
            "article_id": ["0663713001", "0541518023", "0505221004", "0685687003", "0700000001"],
            "product_code": [663713, 541518, 505221, 685687, 700000],
            "prod_name": ["Atlanta Push Body Harlow", "Rae Push (Melbourne) 2p", "Inca Jumper", "W YODA KNIT", "X"],
            "product_type_name": ["Underwear body", "Bra", "Sweater", "Sweater", "Trousers"],
            "colour_group_name": ["Black", "Light Pink", "Black", "Dark Blue", "Beige"],
            "section_name": ["Womens Lingerie", "Womens Lingerie", "Divided", "Womens Everyday", "Divided"],
        }
    ).to_csv(tmp_path / "articles.csv", index=False)
    pd.DataFrame(
        {
            "customer_id": CUSTOMERS + ["ffff" * 16],
            "FN": [None, 1.0, None, None],
            "Active": [None, 1.0, None, None],
            "club_member_status": ["ACTIVE", "ACTIVE", "PRE-CREATE", "ACTIVE"],
            "fashion_news_frequency": ["NONE", "Regularly", "NONE", "NONE"],
            "age": [49, 25, 24, None],
            "postal_code": ["52043ee2162cf5aa7ee79974281641c6f11a68d276429a91f8ca0d4b6efa8100"] * 4,
        }
    ).to_csv(tmp_path / "customers.csv", index=False)
    return tmp_path


def test_convert(kaggle, tmp_path, cli):
    code, out, err = cli("data", "hm", "--kaggle-dir", kaggle, "--out", tmp_path / "hm")
    assert code == 0, err
    ds = read_dataset(tmp_path / "hm")
    inter = ds.interactions().sort_values(["timestamp", "user_id", "item_id"]).reset_index(drop=True)
    assert len(inter) == 5  # the same-day repeat became quantity 2
    first = inter.iloc[0]
    assert first["user_id"] == CUSTOMERS[0] and first["item_id"] == 541518023
    repeat = inter[inter["item_id"] == 663713001].iloc[0]
    assert repeat["quantity"] == 2 and repeat["channel"] == 2
    assert inter["item_id"].dtype == "int64"  # leading zeros of the Kaggle file are not part of the id
    assert inter.groupby(["user_id", "timestamp"])["order_id"].nunique().eq(1).all()
    assert inter["order_id"].nunique() == 3
    assert ds.meta["id_types"] == {"user_id": "string", "item_id": "int64"}
    assert ds.repurchase and len(ds.users()) == 4 and len(ds.items()) == 5
    assert ds.items().set_index("item_id").loc[663713001, "section_name"] == "Womens Lingerie"


def test_sample_users_is_reproducible(kaggle, tmp_path):
    a = hm.sample_customers(pd.read_csv(kaggle / "customers.csv"), 2, seed=3)
    b = hm.sample_customers(pd.read_csv(kaggle / "customers.csv"), 2, seed=3)
    assert a["customer_id"].tolist() == b["customer_id"].tolist() and len(a) == 2


def test_sample_users_filters_transactions(kaggle, tmp_path, cli):
    code, _, err = cli("data", "hm", "--kaggle-dir", kaggle, "--out", tmp_path / "s", "--sample-users", 2, "--seed", 3)
    assert code == 0, err
    ds = read_dataset(tmp_path / "s")
    assert set(ds.interactions()["user_id"]) <= set(ds.users()["user_id"]) and len(ds.users()) == 2


def test_small_blocks_give_the_same_result(kaggle, tmp_path, monkeypatch):
    from funnel.core.fsutil import atomic_output_dir

    with atomic_output_dir(tmp_path / "a") as out:
        hm.build(kaggle, out)
    monkeypatch.setattr(hm, "BLOCK_BYTES", 300)  # many blocks: repeats straddle block borders
    with atomic_output_dir(tmp_path / "b") as out:
        hm.build(kaggle, out)
    key = ["timestamp", "user_id", "item_id"]
    a = read_dataset(tmp_path / "a").interactions().sort_values(key).reset_index(drop=True)
    b = read_dataset(tmp_path / "b").interactions().sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_bad_date(kaggle, tmp_path, cli):
    text = (kaggle / "transactions_train.csv").read_text().replace("2020-09-20", "20/09/2020")
    (kaggle / "transactions_train.csv").write_text(text)
    code, _, err = cli("data", "hm", "--kaggle-dir", kaggle, "--out", tmp_path / "x")
    assert code == 2 and "transactions_train.csv" in err and "'t_dat'" in err and "20/09/2020" in err
    assert not (tmp_path / "x").exists()


def test_bad_number(kaggle, tmp_path, cli):
    text = (kaggle / "transactions_train.csv").read_text().replace("0.0305", "cheap")
    (kaggle / "transactions_train.csv").write_text(text)
    code, _, err = cli("data", "hm", "--kaggle-dir", kaggle, "--out", tmp_path / "x")
    assert code == 2 and "'price'" in err and err.count("\n") == 1


def test_missing_column_and_file(kaggle, tmp_path, cli):
    frame = pd.read_csv(kaggle / "transactions_train.csv").drop(columns=["sales_channel_id"])
    frame.to_csv(kaggle / "transactions_train.csv", index=False)
    code, _, err = cli("data", "hm", "--kaggle-dir", kaggle, "--out", tmp_path / "x")
    assert code == 2 and "'sales_channel_id'" in err
    (kaggle / "articles.csv").unlink()
    code, _, err = cli("data", "hm", "--kaggle-dir", kaggle, "--out", tmp_path / "x")
    assert code == 2 and "articles.csv" in err and "not found" in err
