"""MovieLens-100k (real ratings as interactions): ``funnel data movielens-100k``.

Reads either the GroupLens release (``ml-100k/`` with u.data, u.item, u.user, or its zip)
or the RecBole atomic files (``ml-100k.inter/.item/.user``) that the ``recbole`` wheel ships.
Nothing is downloaded at run time; ``find_source`` says where it looked.
"""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from funnel.data import canonical
from funnel.core.errors import DataError
from funnel.core.fsutil import sha256_files

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
HELP = (
    "MovieLens-100k not found. Pass --source with the GroupLens ml-100k folder or ml-100k.zip "
    "(from grouplens.org/datasets/movielens/100k), or a folder with RecBole's ml-100k.inter/.item/.user "
    "(the recbole==1.2.1 wheel ships them under recbole/dataset_example/ml-100k; `make ml-100k` unpacks it "
    "to .cache/ml-100k), or set FUNNEL_ML100K."
)


def candidate_dirs() -> list[Path]:
    """Places searched when no --source is given, in order."""
    found = []
    if os.environ.get("FUNNEL_ML100K"):
        found.append(Path(os.environ["FUNNEL_ML100K"]))
    spec = importlib.util.find_spec("recbole")  # locates the package without importing it
    if spec and spec.submodule_search_locations:
        found.append(Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k")
    found += [Path(".cache/ml-100k"), Path.home() / ".cache" / "funnel" / "ml-100k"]
    return found


def find_source(source: Path | None) -> Path:
    if source is not None:
        if not Path(source).exists():
            raise DataError(f"{source}: MovieLens-100k source not found")
        return Path(source)
    for path in candidate_dirs():
        if (path / "u.data").exists() or (path / "ml-100k.inter").exists() or (path / "ml-100k.zip").exists():
            return path
    raise DataError(HELP)


def _read_grouplens(read: "callable") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ratings = pd.read_csv(io.BytesIO(read("u.data")), sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    item_cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url"] + GENRES
    items = pd.read_csv(io.BytesIO(read("u.item")), sep="|", names=item_cols, encoding="latin-1")
    flags = items[GENRES].to_numpy().astype(bool)
    items["genres"] = [list(np.array(GENRES)[row]) for row in flags]
    items["release_year"] = pd.to_datetime(items["release_date"], errors="coerce").dt.year.astype("Int64")
    items = items[["item_id", "title", "release_year", "genres"]]
    users = pd.read_csv(io.BytesIO(read("u.user")), sep="|", names=["user_id", "age", "gender", "occupation", "zip_code"])
    return ratings, items, users


def _read_recbole(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def atomic(name: str) -> pd.DataFrame:
        frame = pd.read_csv(folder / name, sep="\t", encoding="latin-1")
        frame.columns = [c.split(":")[0] for c in frame.columns]
        return frame

    ratings = atomic("ml-100k.inter")
    items = atomic("ml-100k.item").rename(columns={"movie_title": "title", "class": "genres"})
    items["genres"] = items["genres"].fillna("").str.split(" ").map(lambda g: [x for x in g if x])
    items["release_year"] = pd.to_numeric(items["release_year"], errors="coerce").astype("Int64")
    items = items[["item_id", "title", "release_year", "genres"]]
    users = atomic("ml-100k.user")
    return ratings, items, users


def load(source: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[Path]]:
    path = find_source(source)
    if path.is_file() and path.suffix == ".zip" or (path / "ml-100k.zip").exists():
        zpath = path if path.is_file() else path / "ml-100k.zip"
        with zipfile.ZipFile(zpath) as zf:
            prefix = next((n[: -len("u.data")] for n in zf.namelist() if n.endswith("u.data")), None)
            if prefix is None:
                raise DataError(f"{zpath}: no u.data inside; not the ml-100k archive")
            ratings, items, users = _read_grouplens(lambda n: zf.read(prefix + n))
        files = [zpath]
    elif (path / "u.data").exists():
        ratings, items, users = _read_grouplens(lambda n: (path / n).read_bytes())
        files = [path / n for n in ("u.data", "u.item", "u.user")]
    elif (path / "ml-100k.inter").exists():
        ratings, items, users = _read_recbole(path)
        files = [path / n for n in ("ml-100k.inter", "ml-100k.item", "ml-100k.user")]
    else:
        raise DataError(f"{path}: neither u.data nor ml-100k.inter found; {HELP}")
    ratings["timestamp"] = pd.to_datetime(ratings["timestamp"].astype("int64"), unit="s")
    ratings["rating"] = ratings["rating"].astype(np.float32)
    return ratings[["user_id", "item_id", "timestamp", "rating"]], items, users, files


def build(out: Path, source: Path | None = None) -> dict:
    ratings, items, users, files = load(source)
    return canonical.write_dataset(
        out, name="movielens-100k", interactions=ratings, items=items, users=users, repurchase=False,
        source={"kind": "movielens-100k", "files": [str(p) for p in files]},
        source_checksum=sha256_files(files),
    )
