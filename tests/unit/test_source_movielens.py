"""`funnel data movielens-100k`: the real ml-100k (from the recbole wheel) and the GroupLens layout."""

import zipfile

import pandas as pd

from funnel.data import movielens
from funnel.data.canonical import read_dataset


def test_real_movielens_100k(ml100k_source, tmp_path, cli):
    code, out, err = cli("data", "movielens-100k", "--source", ml100k_source, "--out", tmp_path / "ml")
    assert code == 0, err
    ds = read_dataset(tmp_path / "ml")
    assert ds.meta["rows"] == {"interactions": 100_000, "items": 1682, "users": 943}
    assert ds.repurchase is False
    inter = ds.interactions()
    assert inter["user_id"].dtype == "int64" and inter["item_id"].dtype == "int64"
    assert inter["timestamp"].min() >= pd.Timestamp("1997-09-01") and inter["timestamp"].max() < pd.Timestamp("1998-05-01")
    items = ds.items().set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story" and "Animation" in list(items.loc[1, "genres"])
    assert {"age", "gender", "occupation"} <= set(ds.users().columns)


def _grouplens(folder):
    folder.mkdir()
    (folder / "u.data").write_text("1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250960\n")
    genre_flags = "|".join(["0"] * 18 + ["1"])
    (folder / "u.item").write_text(
        f"10|Film A (1995)|01-Jan-1995||http://x|{genre_flags}\n20|Film B (1996)|01-Jan-1996||http://y|{genre_flags}\n"
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


def test_grouplens_folder_and_zip(tmp_path):
    folder = _grouplens(tmp_path / "ml-100k")
    ratings, items, users, _ = movielens.load(folder)
    assert len(ratings) == 3 and items.set_index("item_id").loc[10, "genres"] == ["Western"]
    with zipfile.ZipFile(tmp_path / "ml-100k.zip", "w") as zf:
        for name in ("u.data", "u.item", "u.user"):
            zf.write(folder / name, f"ml-100k/{name}")
    ratings2, _, _, _ = movielens.load(tmp_path / "ml-100k.zip")
    pd.testing.assert_frame_equal(ratings, ratings2)


def test_not_found_says_where_to_get_it(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FUNNEL_ML100K", raising=False)
    code, _, err = cli("data", "movielens-100k", "--out", tmp_path / "x")
    assert code == 2 and "grouplens" in err.lower() and "recbole" in err
