"""`funnel data csv`: column mapping, side tables, and every bad input the issue names."""

import pandas as pd
import pytest

from funnel.data.canonical import read_dataset


@pytest.fixture
def files(tmp_path):
    inter = pd.DataFrame(
        {
            "uid": ["u1", "u1", "u2", "u3", "u3"],
            "sku": [10, 11, 10, 12, 10],
            "when": ["2024-01-01 10:00", "2024-01-02", "2024-01-02", "2024-01-03", "2024-01-04"],
            "qty": [1, 2, 1, 1, 3],
        }
    )
    inter.to_csv(tmp_path / "events.csv", index=False)
    pd.DataFrame({"sku": [10, 11, 12, 13], "colour": ["red", "blue", "red", "green"]}).to_parquet(tmp_path / "items.parquet")
    pd.DataFrame({"customer": ["u1", "u2"], "age": [30, 40]}).to_csv(tmp_path / "users.csv", index=False)
    return tmp_path


def _args(files, **over):
    base = {
        "--interactions": files / "events.csv", "--user-col": "uid", "--item-col": "sku", "--time-col": "when",
        "--items": files / "items.parquet", "--item-key": "sku", "--users": files / "users.csv",
        "--user-key": "customer", "--out": files / "out",
    }
    base.update(over)
    args = ["data", "csv"]
    for k, v in base.items():
        if v is not None:
            args += [k, str(v)]
    return args


def test_mapping_and_side_tables(files, cli):
    code, out, err = cli(*_args(files), "--repurchase")
    assert code == 0, err
    ds = read_dataset(files / "out")
    inter = ds.interactions()
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "qty"]
    assert inter["item_id"].dtype == "int64" and inter["user_id"].tolist()[:2] == ["u1", "u1"]
    assert inter["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 10:00")
    assert ds.repurchase is True
    items = ds.items().set_index("item_id")
    assert items.loc[13, "colour"] == "green"  # catalogue items without sales are kept
    users = ds.users().set_index("user_id")
    assert users.loc["u1", "age"] == 30 and pd.isna(users.loc["u3", "age"])  # u3 added, features null
    assert ds.meta["source_checksum"].startswith("sha256:")


def test_parquet_input_and_no_time_column(files, cli):
    pd.read_csv(files / "events.csv").to_parquet(files / "events.parquet")
    code, _, err = cli(*_args(files, **{"--interactions": files / "events.parquet", "--time-col": None,
                                        "--items": None, "--users": None}))
    assert code == 0, err
    inter = read_dataset(files / "out").interactions()
    assert inter["timestamp"].is_monotonic_increasing  # file order becomes the sequence


def _expect_error(cli, args, *fragments):
    code, out, err = cli(*args)
    assert code == 2
    assert err.startswith("funnel: error: ") and err.count("\n") == 1, err  # one line, no traceback
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_missing_file(files, cli):
    _expect_error(cli, _args(files, **{"--interactions": files / "nope.csv"}), "nope.csv", "not found")


def test_missing_column(files, cli):
    _expect_error(cli, _args(files, **{"--user-col": "user"}), "events.csv", "'user'", "missing")


def test_missing_key_in_items(files, cli):
    _expect_error(cli, _args(files, **{"--item-key": "article"}), "items.parquet", "'article'")


def test_empty_file(files, cli):
    (files / "events.csv").write_text("")
    _expect_error(cli, _args(files), "events.csv", "empty")


def test_header_only(files, cli):
    (files / "events.csv").write_text("uid,sku,when\n")
    _expect_error(cli, _args(files), "events.csv", "no rows")


def test_all_null_ids(files, cli):
    (files / "events.csv").write_text("uid,sku,when\n,1,2024-01-01\n,2,2024-01-02\n")
    _expect_error(cli, _args(files), "events.csv", "'uid'", "null")


def test_unparseable_timestamps(files, cli):
    (files / "events.csv").write_text("uid,sku,when\na,1,2024-01-01\nb,2,yesterday\n")
    _expect_error(cli, _args(files), "events.csv", "'when'", "yesterday")


def test_wrong_id_type(files, cli):
    (files / "events.csv").write_text("uid,sku,when\na,1.5,2024-01-01\nb,2,2024-01-02\n")
    _expect_error(cli, _args(files), "events.csv", "'sku'", "non-integer")


def test_duplicate_rows(files, cli):
    (files / "events.csv").write_text("uid,sku,when\na,1,2024-01-01\na,1,2024-01-01\nb,2,2024-01-02\n")
    _expect_error(cli, _args(files), "events.csv", "duplicate", "--drop-duplicates")
    code, _, err = cli(*_args(files), "--drop-duplicates")
    assert code == 0, err
    assert len(read_dataset(files / "out").interactions()) == 2


def test_failed_run_leaves_previous_output_intact(files, cli):
    assert cli(*_args(files))[0] == 0
    before = (files / "out" / "interactions.parquet").read_bytes()
    (files / "events.csv").write_text("uid,sku,when\na,1,not-a-date\n")
    assert cli(*_args(files))[0] == 2
    assert (files / "out" / "interactions.parquet").read_bytes() == before
    assert [p.name for p in files.iterdir() if p.name.startswith(".out")] == []


def test_missing_and_malformed_ids_are_counted_with_the_first_line(files, cli):
    (files / "events.csv").write_text("uid,sku,when\na,10,2024-01-01\nb,,2024-01-02\nc,1e3,2024-01-03\n"
                                      ",11,2024-01-04\nd,21.5,2024-01-05\ne,12,2024-01-06\n")
    _expect_error(cli, _args(files), "events.csv", "4 row(s)", "first: line 3", "--drop-invalid")
    assert not (files / "out").exists()
    code, _, err = cli(*_args(files), "--drop-invalid")
    assert code == 0, err
    assert "dropped 4 row(s)" in err
    rows = read_dataset(files / "out").interactions()
    assert sorted(rows["user_id"]) == ["a", "e"] and sorted(rows["item_id"]) == [10, 12]


def test_id_text_is_kept_unless_every_id_is_a_plain_integer(files, cli):
    (files / "events.csv").write_text("uid,sku,when\n007,0108775015,2024-01-01\n8, 0108775044 ,2024-01-02\n")
    code, _, err = cli(*_args(files, **{"--items": None, "--users": None}))
    assert code == 0, err
    rows = read_dataset(files / "out").interactions()
    assert list(rows["user_id"]) == ["007", "8"]  # zero padding is part of the id: text
    assert list(rows["item_id"]) == ["0108775015", "0108775044"]
    (files / "events.csv").write_text("uid,sku,when\n7,15,2024-01-01\n-8,+16,2024-01-02\n")
    assert cli(*_args(files, **{"--items": None, "--users": None}))[0] == 0
    rows = read_dataset(files / "out").interactions()
    assert rows["user_id"].dtype == "int64" and list(rows["item_id"]) == [15, 16]


def test_partitioned_parquet_folder_as_input(files, cli):
    events = pd.read_csv(files / "events.csv")
    folder = files / "events_by_day"
    for day, part in events.assign(day=events["when"].str[:10]).groupby("day"):
        (folder / f"day={day}").mkdir(parents=True)
        part.drop(columns=["day"]).to_parquet(folder / f"day={day}" / "part-0.parquet", index=False)
    code, _, err = cli(*_args(files, **{"--interactions": folder, "--items": None, "--users": None}))
    assert code == 0, err
    ds = read_dataset(files / "out")
    inter = ds.interactions().sort_values(["timestamp", "user_id"]).reset_index(drop=True)
    assert len(inter) == len(events) and "day" in inter.columns  # the partition key is a column
    assert inter["item_id"].dtype == "int64" and sorted(inter["user_id"]) == sorted(events["uid"])
    assert ds.meta["source_checksum"].startswith("sha256:")
    (files / "empty_folder").mkdir()
    code, _, err = cli(*_args(files, **{"--interactions": files / "empty_folder", "--items": None, "--users": None,
                                        "--out": files / "out2"}))
    assert code != 0 and "has no .parquet files" in err and not (files / "out2").exists()
