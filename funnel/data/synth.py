"""The built-in default data: an H&M-shaped generator with planted structure.

What is planted (and written to ``ground_truth/`` so an oracle can be scored):

- *styles*: latent taste clusters. Every article belongs to one style; a style fixes the
  section, favours a few product types and colours, a price level, a season and an age
  profile. Customers like one to three styles (sparse weights), chosen by their age.
- *power-law popularity*: within a style, article weights fall off as rank^-0.9, and
  styles themselves differ in size and popularity.
- *seasonality*: each style peaks on its own day of the year; more baskets on weekends.
- *launches and stock*: some articles launch during the period (with a novelty boost
  that decays over two weeks), some go out of stock (never bought after that day);
  ``items.parquet`` says which are in stock at the end.
- *repurchase habits*: each customer has a propensity to buy again something bought in
  an earlier basket, favouring recent purchases.

Generation streams customers in fixed-size chunks (bounded memory, deterministic per
seed) and writes ``interactions.parquet`` row group by row group.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from funnel.core.errors import FunnelError
from funnel.core.fsutil import sha256_text
from funnel.core.topk import top_k_positions
from funnel.data import canonical
from funnel.data.canonical import INTERACTIONS
from funnel.data.synth_config import SynthConfig

GENERATOR_VERSION = 1
CHUNK_USERS = 20_000  # fixed: output depends on the seed only, never on memory
RECENCY_POWER = 2.0  # repurchase picks earlier fresh purchase k = f-1-floor(f*U**RECENCY_POWER)
NOVELTY_DAYS = 14.0
NOVELTY_BOOST = 2.0

SECTIONS = ["Womens Everyday", "Divided", "Menswear", "Kids", "Baby", "Sport", "Lingerie", "Accessories"]
PRODUCT_TYPES = [
    "Trousers", "Dress", "Sweater", "T-shirt", "Top", "Blouse", "Jacket", "Shorts", "Shirt",
    "Vest top", "Underwear bottom", "Skirt", "Hoodie", "Bra", "Socks", "Leggings/Tights",
    "Cardigan", "Hat/beanie", "Swimwear bottom", "Coat",
]
COLOURS = [
    "Black", "White", "Dark Blue", "Grey", "Light Pink", "Beige", "Blue", "Light Beige",
    "Off White", "Red", "Green", "Yellow",
]
CLUB_STATUS = ["ACTIVE", "PRE-CREATE", "LEFT CLUB"]
NEWS_FREQUENCY = ["Regularly", "Monthly", "NONE"]


@dataclass
class Catalogue:
    """Articles and the hidden parameters that drive their sales."""

    item_id: np.ndarray  # int64 H&M-style article ids, sorted by style
    style: np.ndarray  # int32, non-decreasing
    base_weight: np.ndarray  # float64 popularity within the style
    season_amp: np.ndarray
    season_phase: np.ndarray  # day of year of the peak
    launch_day: np.ndarray  # int32, -1 = on sale before the period starts
    stockout_day: np.ndarray  # int32, first day not on sale; >= days means in stock at the end
    style_offsets: np.ndarray  # items of style s are [offsets[s], offsets[s+1])
    style_age: np.ndarray  # mean customer age per style
    style_popularity: np.ndarray
    features: pd.DataFrame  # the public items.parquet

    def daily_weights(self, day: int, day_of_year: int) -> np.ndarray:
        """Unnormalised purchase weight of every article on a day of the period."""
        season = np.exp(self.season_amp * np.cos(2 * np.pi * (day_of_year - self.season_phase) / 365.0))
        age = day - self.launch_day
        novelty = 1.0 + NOVELTY_BOOST * np.exp(-np.maximum(age, 0) / NOVELTY_DAYS) * (self.launch_day >= 0)
        available = (self.launch_day <= day) & (day < self.stockout_day)
        return self.base_weight * season * novelty * available

    def style_cdf(self, weights: np.ndarray) -> np.ndarray:
        """Per-style cumulative distribution, offset by style index: style s covers [s, s+1]."""
        n_styles = len(self.style_offsets) - 1
        sums = np.add.reduceat(weights, self.style_offsets[:-1])
        sums = np.where(sums > 0, sums, 1.0)
        cum = np.cumsum(weights)
        before = np.concatenate([[0.0], cum[self.style_offsets[1:-1] - 1]])
        within = (cum - np.repeat(before, np.diff(self.style_offsets))) / np.repeat(sums, np.diff(self.style_offsets))
        assert n_styles == len(sums)
        return self.style + np.minimum(within, 1.0)


def make_catalogue(cfg: SynthConfig) -> Catalogue:
    """Draw styles and articles (deterministic per seed)."""
    rng = np.random.default_rng([cfg.seed, 1])
    n_styles = cfg.styles
    style_section = rng.integers(0, len(SECTIONS), n_styles)
    style_types = np.stack([rng.choice(len(PRODUCT_TYPES), 3, replace=False) for _ in range(n_styles)])
    style_colours = np.stack([rng.choice(len(COLOURS), 3, replace=False) for _ in range(n_styles)])
    style_price = np.exp(rng.normal(np.log(0.025), 0.5, n_styles))
    style_phase = rng.uniform(0, 365, n_styles)
    style_amp = rng.uniform(0.0, 1.0, n_styles)
    style_age = rng.uniform(20, 60, n_styles)
    # Style sizes and popularity: Zipf-like over a random order.
    size_weight = 1.0 / np.arange(1, n_styles + 1) ** 0.6
    rng.shuffle(size_weight)
    counts = np.maximum(1, np.floor(size_weight / size_weight.sum() * cfg.items)).astype(np.int64)
    if counts.sum() <= cfg.items:
        counts[np.argmax(counts)] += cfg.items - counts.sum()
    else:  # small catalogues: an even split
        counts = np.full(n_styles, cfg.items // n_styles)
        counts[: cfg.items - counts.sum()] += 1
    style_popularity = 1.0 / np.arange(1, n_styles + 1) ** 0.8
    rng.shuffle(style_popularity)

    style = np.repeat(np.arange(n_styles, dtype=np.int32), counts)
    n = cfg.items
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rank_in_style = np.concatenate([rng.permutation(c) + 1 for c in counts])
    base_weight = rank_in_style ** -0.9
    launch_day = np.where(rng.random(n) < cfg.launch_share, rng.integers(0, cfg.days, n), -1).astype(np.int32)
    sells_out = rng.random(n) < cfg.stockout_share
    stockout_day = np.where(
        sells_out, np.maximum(launch_day, 0) + rng.integers(7, cfg.days + 30, n), np.iinfo(np.int32).max
    ).astype(np.int32)

    favoured = rng.random(n) < 0.8
    type_idx = np.where(favoured, style_types[style, rng.integers(0, 3, n)], rng.integers(0, len(PRODUCT_TYPES), n))
    colour_idx = np.where(favoured, style_colours[style, rng.integers(0, 3, n)], rng.integers(0, len(COLOURS), n))
    price = np.round(style_price[style] * np.exp(rng.normal(0, 0.3, n)), 4)
    product_code = 100_000 + rng.permutation(n)
    item_id = product_code.astype(np.int64) * 1000 + colour_idx
    features = pd.DataFrame(
        {
            "item_id": item_id,
            "product_code": product_code.astype(np.int64),
            "product_type_name": np.array(PRODUCT_TYPES)[type_idx],
            "colour_group_name": np.array(COLOURS)[colour_idx],
            "section_name": np.array(SECTIONS)[style_section[style]],
            "price": price.astype(np.float32),
            "in_stock": stockout_day >= cfg.days,
        }
    )
    return Catalogue(
        item_id=item_id, style=style, base_weight=base_weight, season_amp=style_amp[style],
        season_phase=style_phase[style], launch_day=launch_day, stockout_day=stockout_day,
        style_offsets=offsets, style_age=style_age, style_popularity=style_popularity, features=features,
    )


def _user_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """H&M-like string customer ids (hex), unique within the chunk by construction."""
    raw = rng.integers(0, 2**62, n, dtype=np.int64)
    return np.array([f"{v:016x}{i:08x}" for i, v in enumerate(raw)], dtype=object)


@dataclass
class UserChunk:
    features: pd.DataFrame
    tastes: pd.DataFrame  # user_id, style, weight (ground truth)
    params: pd.DataFrame  # user_id, repurchase_propensity, activity (ground truth)
    interactions: pd.DataFrame
    fresh: np.ndarray  # ground truth: True where the purchase was drawn from tastes


def generate_chunk(cfg: SynthConfig, cat: Catalogue, chunk: int, n_users: int, first_order: int) -> UserChunk:
    """Customers ``chunk*CHUNK_USERS ...`` and all their baskets over the period."""
    rng = np.random.default_rng([cfg.seed, 2, chunk])
    n_styles = len(cat.style_offsets) - 1
    ids = np.array([f"{chunk:04x}{u}" for u in _user_ids(rng, n_users)], dtype=object)

    age = np.clip(np.where(rng.random(n_users) < 0.55, rng.normal(25, 4, n_users), rng.normal(50, 10, n_users)), 16, 95)
    age = np.round(age).astype(np.int32)
    activity = cfg.activity * np.exp(rng.normal(-0.5, 1.0, n_users))  # lognormal, mean ~= cfg.activity
    repurchase = rng.beta(2.0, 2.0 * (1 - cfg.repurchase_rate) / max(cfg.repurchase_rate, 1e-6), n_users)
    repurchase = np.where(cfg.repurchase_rate > 0, repurchase, 0.0)
    online = rng.beta(3.0, 2.0, n_users)
    club = np.where(activity > cfg.activity, 0, rng.choice([0, 1, 2], n_users, p=[0.6, 0.3, 0.1]))
    news = np.where(activity > cfg.activity * 1.5, 0, rng.choice([0, 1, 2], n_users, p=[0.3, 0.1, 0.6]))

    # Tastes: 1-3 styles per customer, by age affinity x style popularity, Dirichlet weights.
    k = np.minimum(1 + rng.binomial(2, 0.35, n_users), n_styles)
    prior = np.exp(-((age[:, None] - cat.style_age[None, :]) ** 2) / (2 * 12.0**2)) * cat.style_popularity[None, :]
    gumbel = np.log(prior) - np.log(-np.log(rng.random(prior.shape)))
    top = np.argsort(-gumbel, axis=1)[:, :3]
    w = rng.dirichlet(np.ones(3), n_users) * (np.arange(3)[None, :] < k[:, None])
    w = w / w.sum(axis=1, keepdims=True)
    taste_cum = np.cumsum(w, axis=1)

    # Baskets: Poisson count, days weighted by weekday, a time of day each.
    day_of_week = (cfg.start.dayofweek + np.arange(cfg.days)) % 7
    day_weight = np.where(day_of_week >= 5, 1.4, 1.0)
    day_weight = day_weight / day_weight.mean()
    n_baskets = rng.poisson(activity * cfg.days)
    basket_user = np.repeat(np.arange(n_users), n_baskets)
    basket_day = rng.choice(cfg.days, len(basket_user), p=day_weight / day_weight.sum())
    basket_second = rng.integers(8 * 3600, 22 * 3600, len(basket_user))
    order = np.lexsort((basket_second, basket_day, basket_user))
    basket_user, basket_day, basket_second = basket_user[order], basket_day[order], basket_second[order]
    basket_size = 1 + rng.poisson(cfg.basket_size - 1, len(basket_user))
    basket_channel = np.where(rng.random(len(basket_user)) < online[basket_user], 2, 1).astype(np.int8)

    ev_basket = np.repeat(np.arange(len(basket_user)), basket_size)
    ev_user = basket_user[ev_basket]
    ev_day = basket_day[ev_basket]
    n_ev = len(ev_basket)
    is_rep = rng.random(n_ev) < repurchase[ev_user]

    # A repurchase needs a fresh purchase in an earlier basket of the same customer.
    first_basket_of_user = np.concatenate([[0], np.cumsum(n_baskets)[:-1]])
    is_first_basket = ev_basket == first_basket_of_user[ev_user]
    is_rep &= ~is_first_basket
    fresh = ~is_rep
    fresh_per_basket = np.bincount(ev_basket, weights=fresh, minlength=len(basket_user)).astype(np.int64)
    # fresh events before each basket (chunk-wide), plus one slot past the end for users without baskets
    cum_fresh_basket = np.concatenate([np.cumsum(fresh_per_basket) - fresh_per_basket, [fresh_per_basket.sum()]])
    user_fresh_start = cum_fresh_basket[first_basket_of_user]
    fresh_before = cum_fresh_basket[ev_basket] - user_fresh_start[ev_user]
    is_rep &= fresh_before > 0
    fresh = ~is_rep

    # Fresh purchases: a style from the customer's tastes, an article from that style's daily distribution.
    items_idx = np.full(n_ev, -1, dtype=np.int64)
    f_idx = np.flatnonzero(fresh)
    u_draw = rng.random(len(f_idx))
    slot = (u_draw[:, None] > taste_cum[ev_user[f_idx]]).sum(axis=1)
    f_style = top[ev_user[f_idx], np.minimum(slot, 2)]
    f_day = ev_day[f_idx]
    if cfg.shift_day and cfg.shift_tastes > 0:  # planted taste drift: a few styles become the fashion
        hot = np.arange(max(1, cfg.styles // 8))
        moved = (f_day >= cfg.shift_day) & (rng.random(len(f_idx)) < cfg.shift_tastes)
        f_style = np.where(moved, hot[rng.integers(0, len(hot), len(f_idx))], f_style)
    f_u = rng.random(len(f_idx))
    day_of_year = (cfg.start.dayofyear + np.arange(cfg.days)) % 365
    by_day = np.argsort(f_day, kind="stable")
    bounds = np.searchsorted(f_day[by_day], np.arange(cfg.days + 1))
    for d in range(cfg.days):
        sel = by_day[bounds[d] : bounds[d + 1]]
        if len(sel) == 0:
            continue
        weights = cat.daily_weights(d, int(day_of_year[d]))
        cdf = cat.style_cdf(weights)
        style_has_stock = np.add.reduceat(weights, cat.style_offsets[:-1]) > 0
        styles = f_style[sel]
        # A style with nothing on sale that day: fall back to the customer's best style with stock.
        styles = np.where(style_has_stock[styles], styles, np.argmax(style_has_stock))
        pos = np.searchsorted(cdf, styles + np.clip(f_u[sel], 1e-12, 1 - 1e-12), side="left")
        items_idx[f_idx[sel]] = np.clip(pos, cat.style_offsets[styles], cat.style_offsets[styles + 1] - 1)

    # Repurchases: one of the customer's fresh purchases from earlier baskets, recent ones favoured.
    fresh_order = np.flatnonzero(fresh)  # fresh events in (user, time) order
    r_idx = np.flatnonzero(is_rep)
    if len(r_idx):
        f_before = fresh_before[r_idx]
        back = np.floor(f_before * rng.random(len(r_idx)) ** RECENCY_POWER).astype(np.int64)
        k_pick = f_before - 1 - back
        items_idx[r_idx] = items_idx[fresh_order[user_fresh_start[ev_user[r_idx]] + k_pick]]

    price = cat.features["price"].to_numpy()[items_idx] * np.where(rng.random(n_ev) < 0.1, 0.7, 1.0)
    if cfg.shift_day and cfg.shift_price != 1.0:  # planted price drift
        price = price * np.where(ev_day >= cfg.shift_day, cfg.shift_price, 1.0)
    timestamp = (
        cfg.start.to_datetime64()
        + ev_day.astype("timedelta64[D]").astype("timedelta64[s]")
        + basket_second[ev_basket].astype("timedelta64[s]")
    )
    interactions = pd.DataFrame(
        {
            "user_id": ids[ev_user],
            "item_id": cat.item_id[items_idx],
            "timestamp": timestamp.astype("datetime64[ns]"),
            "price": price.astype(np.float32),
            "channel": basket_channel[ev_basket],
            "order_id": (first_order + ev_basket).astype(np.int64),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": ids,
            "age": age,
            "club_member_status": np.array(CLUB_STATUS)[club],
            "fashion_news_frequency": np.array(NEWS_FREQUENCY)[news],
            "postal_code": np.array([f"p{v:03d}" for v in rng.integers(0, 400, n_users)], dtype=object),
        }
    )
    rows = np.repeat(np.arange(n_users), 3)
    cols = np.tile(np.arange(3), n_users)
    keep = w[rows, cols] > 0
    tastes = pd.DataFrame(
        {"user_id": ids[rows[keep]], "style": top[rows, cols][keep].astype(np.int32), "weight": w[rows, cols][keep]}
    )
    params = pd.DataFrame({"user_id": ids, "repurchase_propensity": repurchase, "activity": activity})
    return UserChunk(users, tastes, params, interactions, fresh)


def stock_history(cfg: SynthConfig, cat: Catalogue) -> pd.DataFrame:
    """Stock changes: articles launched during the period are off sale until their launch day;
    articles that sell out go off sale on their stock-out day (both at midnight)."""
    day = pd.Timedelta(days=1)
    later = cat.launch_day > 0
    sold_out = cat.stockout_day < cfg.days
    frames = [
        pd.DataFrame({"item_id": cat.item_id[later], "timestamp": cfg.start, "in_stock": False}),
        pd.DataFrame({"item_id": cat.item_id[later], "timestamp": cfg.start + cat.launch_day[later] * day,
                      "in_stock": True}),
        pd.DataFrame({"item_id": cat.item_id[sold_out], "timestamp": cfg.start + cat.stockout_day[sold_out] * day,
                      "in_stock": False}),
    ]
    return pd.concat(frames, ignore_index=True).sort_values(["timestamp", "item_id"], ignore_index=True)


def generate(cfg: SynthConfig, out: Path, progress: Callable[[int], None] | None = None) -> dict:
    """Write the synthetic dataset (canonical files + ``ground_truth/``) into ``out``."""
    cat = make_catalogue(cfg)
    gt = out / "ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}

    def append(name: str, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if name not in writers:
            writers[name] = pq.ParquetWriter(out / name, table.schema)
        writers[name].write_table(table)

    first_order = 0
    n_chunks = (cfg.users + CHUNK_USERS - 1) // CHUNK_USERS
    try:
        for chunk in range(n_chunks):
            n_users = min(CHUNK_USERS, cfg.users - chunk * CHUNK_USERS)
            part = generate_chunk(cfg, cat, chunk, n_users, first_order)
            first_order = int(part.interactions["order_id"].max()) + 1 if len(part.interactions) else first_order
            append(canonical.INTERACTIONS, part.interactions)
            append("users.tmp.parquet", part.features)
            append("ground_truth/user_tastes.parquet", part.tastes)
            append("ground_truth/user_params.parquet", part.params)
            append("ground_truth/fresh.parquet", pd.DataFrame({"fresh": part.fresh}))
            if progress:
                progress(len(part.interactions))
    finally:
        for writer in writers.values():
            writer.close()
    if canonical.INTERACTIONS not in writers or pq.ParquetFile(out / canonical.INTERACTIONS).metadata.num_rows == 0:
        raise FunnelError("synth: these settings produced no interactions; raise --users, --days or --activity")
    users = pd.read_parquet(out / "users.tmp.parquet")
    (out / "users.tmp.parquet").unlink()
    pd.DataFrame(
        {
            "item_id": cat.item_id, "style": cat.style, "base_weight": cat.base_weight,
            "season_amp": cat.season_amp, "season_phase": cat.season_phase,
            "launch_day": cat.launch_day, "stockout_day": cat.stockout_day,
        }
    ).to_parquet(gt / "items.parquet", index=False)
    params = {"generator_version": GENERATOR_VERSION, "config": asdict(cfg), "start": str(cfg.start.date()),
              "chunk_users": CHUNK_USERS, "recency_power": RECENCY_POWER}
    (gt / "generator.json").write_text(json.dumps(params, indent=2) + "\n")
    return canonical.write_dataset(
        out, name="synthetic", interactions=None, items=cat.features, users=users, repurchase=True,
        stock=stock_history(cfg, cat),
        source={"kind": "synth", **asdict(cfg), "generator_version": GENERATOR_VERSION},
        source_checksum=sha256_text(json.dumps(params, sort_keys=True)),
        extra={"ground_truth": "ground_truth/"},
    )


# --------------------------------------------------------------------------- oracle
@dataclass
class Oracle:
    """The Bayes-optimal ranker for a window ``[start, end)``, from the generator's hidden truth.

    Scores are each user's true expected purchase weights: tastes x the styles' average daily
    article distribution over the window, mixed with the repurchase distribution over the
    user's fresh purchases before ``start``. Ranking by them gives the oracle Recall@k.
    """

    item_ids: np.ndarray
    phi: np.ndarray  # (styles, items) mean daily distribution over the window
    tastes: pd.DataFrame  # user_id, style, weight
    propensity: pd.Series  # user_id -> repurchase propensity
    history: pd.DataFrame  # fresh purchases before start: user_id, item_pos, prob

    @classmethod
    def load(cls, dataset_dir: str | Path, start: pd.Timestamp, end: pd.Timestamp) -> "Oracle":
        dataset_dir = Path(dataset_dir)
        gt = dataset_dir / "ground_truth"
        if not (gt / "generator.json").exists():
            raise FunnelError(f"{dataset_dir}: no ground_truth/ (only `funnel data synth` writes one)")
        params = json.loads((gt / "generator.json").read_text())
        cfg = SynthConfig(**params["config"])
        cat = make_catalogue(cfg)
        first = (pd.Timestamp(start).normalize() - cfg.start).days
        last = int(np.ceil((pd.Timestamp(end) - cfg.start) / pd.Timedelta(days=1)))
        days = range(max(first, 0), min(last, cfg.days))
        phi = np.zeros((len(cat.style_offsets) - 1, len(cat.item_id)))
        cols = np.arange(len(cat.item_id))
        for d in days:
            wgt = cat.daily_weights(d, int((cfg.start.dayofyear + d) % 365))
            sums = np.add.reduceat(wgt, cat.style_offsets[:-1])
            phi[cat.style, cols] += wgt / np.where(sums > 0, sums, 1.0)[cat.style]
        phi /= max(len(days), 1)

        inter = pd.read_parquet(dataset_dir / INTERACTIONS, columns=["user_id", "item_id", "timestamp"])
        inter["fresh"] = pd.read_parquet(gt / "fresh.parquet")["fresh"].to_numpy()
        hist = inter[inter["fresh"] & (inter["timestamp"] < pd.Timestamp(start))]
        hist = hist.sort_values(["user_id", "timestamp"], kind="stable")
        f = hist.groupby("user_id")["item_id"].transform("size").to_numpy()
        back = f - 1 - hist.groupby("user_id").cumcount().to_numpy()  # 0 = most recent
        p = 1.0 / params["recency_power"]  # P(back = j) = ((j+1)/f)^p - (j/f)^p
        history = pd.DataFrame(
            {
                "user_id": hist["user_id"].to_numpy(),
                "item_pos": pd.Index(cat.item_id).get_indexer(hist["item_id"]),
                "prob": ((back + 1) / f) ** p - (back / f) ** p,
            }
        )
        return cls(
            item_ids=cat.item_id,
            phi=phi,
            tastes=pd.read_parquet(gt / "user_tastes.parquet"),
            propensity=pd.read_parquet(gt / "user_params.parquet").set_index("user_id")["repurchase_propensity"],
            history=history,
        )

    def scores(self, user_ids: list | np.ndarray) -> np.ndarray:
        """Dense (len(user_ids), n_items) expected purchase weights; pass batches of users."""
        users = pd.Index(np.asarray(user_ids, dtype=object))
        theta = np.zeros((len(users), self.phi.shape[0]))
        tastes = self.tastes[self.tastes["user_id"].isin(users)]
        theta[users.get_indexer(tastes["user_id"]), tastes["style"].to_numpy()] = tastes["weight"].to_numpy()
        rep = np.zeros((len(users), self.phi.shape[1]))
        hist = self.history[self.history["user_id"].isin(users)]
        np.add.at(rep, (users.get_indexer(hist["user_id"]), hist["item_pos"].to_numpy()), hist["prob"].to_numpy())
        r = np.where(rep.sum(axis=1) > 0, self.propensity.reindex(users).fillna(0).to_numpy(), 0.0)
        return (1 - r)[:, None] * (theta @ self.phi) + r[:, None] * rep

    def topk(self, user_ids: list | np.ndarray, k: int) -> np.ndarray:
        """Raw item ids of each user's k highest-scoring articles, best first."""
        return self.item_ids[top_k_positions(self.scores(user_ids), k)]
