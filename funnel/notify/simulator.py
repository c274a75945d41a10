"""A push-notification simulator with known ground truth, built on the synthetic generator.

Users come from ``funnel.data.synth`` (their true style tastes and shopping activity). Each day
each user may get one push carrying the funnel's top item, and then:

- **the item**: with chance ``funnel_hit`` the funnel's top item is from one of the user's own
  styles, else from a style drawn by popularity. Its true *relevance* ``r`` is the user's taste
  weight of that style (0 for a style the user does not like); the funnel reports a *score*,
  ``r`` plus Gaussian noise (``score_noise``): policies never see ``r``.
- **opening** a push: ``sigmoid(open_base + open_relevance * r - open_fatigue * s_u * F)``, where
  ``F`` is the user's *fatigue* (pushes, decayed by ``fatigue_decay`` a day) and ``s_u`` the
  user's hidden fatigue sensitivity (lognormal, spread ``sensitivity_sd``).
- **visits**: an opened push is a visit; otherwise the user visits with chance
  ``1 - exp(-rate_u * (1 + engagement_lift * E))``: ``rate_u`` is ``visit_rate`` x the user's
  activity in the generator, ``E`` the *engagement* from recent opens (decayed by
  ``engagement_decay``). So opens raise the chance of visits in the following days.
- **purchases**: an opened push is bought with chance ``buy_given_open * r``.
- **disabling** notifications, per push: ``sigmoid(disable_base + disable_irrelevance * (1 - r)
  + disable_fatigue * s_u * F)``; a disabled user gets no more pushes (and still visits).
- **warm-up**: ``warmup_days`` days without pushes come first (organic visits only), so day 0
  starts from a lived-in history rather than from users who all look brand new.
- **churn**, per day: ``sigmoid(churn_base + churn_annoyance * A)``, ``A`` the *annoyance* from
  ignored pushes weighted by their irrelevance (decayed by ``annoyance_decay``): slower than
  disabling. A churned user never visits again.

Every random number of a day is drawn up front from ``(seed, day)`` streams in a fixed order, so
every policy run from the same seed faces the same users, items and coin flips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from funnel.core.errors import FunnelError
from funnel.notify.history import History


@dataclass(frozen=True)
class NotifyConfig:
    """Parameters of the simulator (documented in the module docstring)."""

    users: int = 2000
    days: int = 30
    seed: int = 0
    warmup_days: int = 14  # organic visits only, before day 0: every run starts from a lived-in state
    items: int = 2000  # catalogue of the synthetic generator
    styles: int = 32
    funnel_hit: float = 0.6
    score_noise: float = 0.15
    open_base: float = -2.2
    open_relevance: float = 3.5
    open_fatigue: float = 0.45
    fatigue_decay: float = 0.7
    sensitivity_sd: float = 0.8
    visit_rate: float = 2.0
    engagement_lift: float = 1.0
    engagement_decay: float = 0.8
    buy_given_open: float = 0.3
    disable_base: float = -5.5
    disable_irrelevance: float = 2.5
    disable_fatigue: float = 0.4
    churn_base: float = -6.5
    churn_annoyance: float = 0.6
    annoyance_decay: float = 0.9

    def __post_init__(self) -> None:
        if self.users < 1 or self.days < 1 or self.warmup_days < 0:
            raise FunnelError("notify simulate: need --users >= 1 and --days >= 1")
        if not 0 <= self.funnel_hit <= 1:
            raise FunnelError("notify simulate: funnel_hit must be in [0, 1]")
        for name in ("fatigue_decay", "engagement_decay", "annoyance_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise FunnelError(f"notify simulate: {name} must be in [0, 1)")

    def as_dict(self) -> dict:
        return asdict(self)

    def with_seed(self, seed: int) -> "NotifyConfig":
        return replace(self, seed=seed)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Population:
    """The users' fixed, hidden traits (ground truth)."""

    user_id: np.ndarray  # str ids from the generator
    taste: np.ndarray  # float [n, styles]: weight of each style
    style_popularity: np.ndarray  # float [styles], sums to 1
    rate: np.ndarray  # float [n]: organic visits per day before engagement
    sensitivity: np.ndarray  # float [n]: fatigue sensitivity
    style_items: np.ndarray  # item ids grouped by style, most popular first within a style
    style_offsets: np.ndarray  # style s holds style_items[style_offsets[s]:style_offsets[s + 1]]

    @classmethod
    def generate(cls, cfg: NotifyConfig) -> "Population":
        from funnel.data.synth import CHUNK_USERS, generate_chunk, make_catalogue
        from funnel.data.synth_config import SynthConfig

        synth = SynthConfig(users=cfg.users, items=cfg.items, styles=cfg.styles, days=2, seed=cfg.seed)
        cat = make_catalogue(synth)
        ids, tastes, activity = [], [], []
        for chunk in range((cfg.users + CHUNK_USERS - 1) // CHUNK_USERS):
            n = min(CHUNK_USERS, cfg.users - chunk * CHUNK_USERS)
            part = generate_chunk(synth, cat, chunk, n, 0)
            ids.append(part.params["user_id"].to_numpy())
            tastes.append(part.tastes)
            activity.append(part.params["activity"].to_numpy())
        user_id = np.concatenate(ids)
        row = pd.Series(np.arange(len(user_id)), index=user_id)
        t = pd.concat(tastes, ignore_index=True)
        taste = np.zeros((len(user_id), cfg.styles))
        taste[row[t["user_id"]].to_numpy(), t["style"].to_numpy()] = t["weight"].to_numpy()
        rng = np.random.default_rng([cfg.seed, 101])
        sensitivity = np.exp(rng.normal(-cfg.sensitivity_sd**2 / 2, cfg.sensitivity_sd, len(user_id)))
        order = np.argsort(-cat.base_weight, kind="stable")
        by_style = order[np.argsort(cat.style[order], kind="stable")]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(cat.style, minlength=cfg.styles))])
        return cls(user_id=user_id, taste=taste, style_popularity=cat.style_popularity / cat.style_popularity.sum(),
                   rate=cfg.visit_rate * np.concatenate(activity), sensitivity=sensitivity,
                   style_items=cat.item_id[by_style], style_offsets=offsets)


@dataclass
class Hidden:
    """The users' hidden dynamic state."""

    fatigue: np.ndarray
    engagement: np.ndarray
    annoyance: np.ndarray
    churned: np.ndarray

    @classmethod
    def start(cls, n: int) -> "Hidden":
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, bool))

    def take(self, index: np.ndarray) -> "Hidden":
        return Hidden(self.fatigue[index].copy(), self.engagement[index].copy(), self.annoyance[index].copy(),
                      self.churned[index].copy())


@dataclass
class Day:
    """One day's draws for every user: the item, its relevance and score, and the coin flips."""

    item_id: np.ndarray
    relevance: np.ndarray
    score: np.ndarray
    u_open: np.ndarray
    u_disable: np.ndarray
    u_visit: np.ndarray
    u_buy: np.ndarray
    u_churn: np.ndarray


@dataclass
class Outcome:
    sent: np.ndarray
    opened: np.ndarray
    active: np.ndarray
    bought: np.ndarray
    disabled: np.ndarray  # disabled notifications today
    churned: np.ndarray  # churned today


class Simulator:
    """Users, their hidden state and their observable history; :meth:`step` plays one day."""

    def __init__(self, cfg: NotifyConfig, population: Population | None = None):
        self.cfg = cfg
        self.population = population or Population.generate(cfg)
        n = len(self.population.user_id)
        self.hidden = Hidden.start(n)
        self.history = History.empty(n)
        for d in range(cfg.warmup_days):  # no pushes yet: visits, engagement and history settle
            self.step(np.zeros(n, bool), self.draw(d - cfg.warmup_days))

    def draw(self, day: int, stream: int = 0) -> Day:
        """The funnel's top item and the day's random numbers (depend on seed, day and stream only;
        warm-up days are negative)."""
        return self._draw(day + self.cfg.warmup_days, stream)

    def _draw(self, day: int, stream: int) -> Day:
        cfg, pop = self.cfg, self.population
        n = len(pop.user_id)
        rng = np.random.default_rng([cfg.seed, 7, day, stream])
        u_hit, u_taste, u_style, u_item = rng.random(n), rng.random(n), rng.random(n), rng.random(n)
        noise = rng.normal(0.0, cfg.score_noise, n)
        uniforms = rng.random((5, n))
        taste_cum = np.cumsum(pop.taste, axis=1)
        taste_cum /= taste_cum[:, -1:]
        own = np.minimum((u_taste[:, None] > taste_cum).sum(axis=1), pop.taste.shape[1] - 1)
        other = np.minimum(np.searchsorted(np.cumsum(pop.style_popularity), u_style), len(pop.style_popularity) - 1)
        style = np.where(u_hit < cfg.funnel_hit, own, other)
        sizes = np.diff(pop.style_offsets)
        pick = np.minimum((u_item ** 2 * sizes[style]).astype(np.int64), sizes[style] - 1)  # popular items first
        item = pop.style_items[pop.style_offsets[style] + pick].astype(np.int64)
        relevance = pop.taste[np.arange(n), style]
        return Day(item_id=item, relevance=relevance, score=relevance + noise, u_open=uniforms[0],
                   u_disable=uniforms[1], u_visit=uniforms[2], u_buy=uniforms[3], u_churn=uniforms[4])

    def step(self, send: np.ndarray, day: Day, users: np.ndarray | None = None) -> Outcome:
        """Play one day for ``users`` (default all) given who is pushed."""
        cfg, pop, h, hist = self.cfg, self.population, self.hidden, self.history
        idx = np.arange(len(h.fatigue)) if users is None else users
        return _play(cfg, pop, h, hist, send, day, idx)


def _play(cfg: NotifyConfig, pop: Population, h: Hidden, hist: History, send: np.ndarray, day: Day,
          idx: np.ndarray) -> Outcome:
    """One day of the dynamics; ``idx`` maps rows of the state to users of the population."""
    sent = np.asarray(send, bool) & hist.enabled
    r = day.relevance
    sens = pop.sensitivity[idx]
    p_open = _sigmoid(cfg.open_base + cfg.open_relevance * r - cfg.open_fatigue * sens * h.fatigue)
    opened = sent & ~h.churned & (day.u_open < p_open)
    p_disable = _sigmoid(cfg.disable_base + cfg.disable_irrelevance * (1 - r) + cfg.disable_fatigue * sens * h.fatigue)
    disabled = sent & ~opened & (day.u_disable < p_disable)
    visit = 1.0 - np.exp(-pop.rate[idx] * (1.0 + cfg.engagement_lift * h.engagement))
    active = ~h.churned & (opened | (day.u_visit < visit))
    bought = opened & (day.u_buy < cfg.buy_given_open * r)
    h.fatigue = cfg.fatigue_decay * h.fatigue + sent
    h.engagement = cfg.engagement_decay * h.engagement + opened
    h.annoyance = cfg.annoyance_decay * h.annoyance + (sent & ~opened) * (1.0 - r)
    churn_now = ~h.churned & (day.u_churn < _sigmoid(cfg.churn_base + cfg.churn_annoyance * h.annoyance))
    h.churned = h.churned | churn_now
    hist.update(sent, opened, active, disabled)
    return Outcome(sent=sent, opened=opened, active=active, bought=bought, disabled=disabled, churned=churn_now)


def run(cfg: NotifyConfig, policy, population: Population | None = None, record: bool = False,
        explore_seed: int | None = None) -> dict:
    """Run ``policy`` (``decide(features, enabled, day) -> P(send)``) for ``cfg.days`` days from
    the start. Returns daily totals and, with ``record``, the decision rows of enabled users
    (features, probability of sending, action, outcomes: ``log``) and every user's active days
    (``activity``: user_id, day), the two files production has."""
    sim = Simulator(cfg, population)
    n = len(sim.population.user_id)
    daily = {"sent": [], "opened": [], "active": [], "enabled": [], "bought": [], "churned": []}
    rows, activity = [], []
    coin = np.random.default_rng([cfg.seed, 11] if explore_seed is None else [explore_seed, 11])
    for d in range(cfg.days):
        day = sim.draw(d)
        feats = sim.history.features(day.score)
        enabled = sim.history.enabled.copy()
        p_send = np.where(enabled, np.clip(policy.decide(feats, enabled, d), 0.0, 1.0), 0.0)
        send = coin.random(n) < p_send
        out = sim.step(send, day)
        for key in ("sent", "opened", "active", "bought"):
            daily[key].append(int(getattr(out, key).sum()))
        daily["enabled"].append(int(sim.history.enabled.sum()))
        daily["churned"].append(int(sim.hidden.churned.sum()))
        if record:
            rows.append(_rows(sim.population.user_id, d, day, feats, enabled, p_send, out))
            activity.append(pd.DataFrame({"user_id": sim.population.user_id[out.active], "day": d}))
    totals = {k: np.asarray(v) for k, v in daily.items()}
    result = {"daily": totals, "users": n, "days": cfg.days}
    if record:
        result["log"] = pd.concat(rows, ignore_index=True)
        result["activity"] = pd.concat(activity, ignore_index=True)
    return result


def _rows(user_id, d, day: Day, feats, enabled, p_send, out: Outcome) -> pd.DataFrame:
    from funnel.notify.history import FEATURES

    frame = pd.DataFrame(feats[enabled], columns=list(FEATURES))
    sent = out.sent[enabled]
    p = p_send[enabled]
    frame.insert(0, "user_id", user_id[enabled])
    frame.insert(1, "day", d)
    frame.insert(2, "item_id", day.item_id[enabled])
    frame["send"] = sent
    frame["propensity"] = np.where(sent, p, 1.0 - p)  # chance of the action taken
    frame["opened"] = out.opened[enabled]
    frame["disabled"] = out.disabled[enabled]
    frame["active"] = out.active[enabled]
    return frame


def summary(result: dict) -> dict:
    """The reported figures of one run."""
    d, n, days = result["daily"], result["users"], result["days"]
    sent = int(d["sent"].sum())
    return {
        "sends_per_user_day": sent / (n * days),
        "open_rate": float(d["opened"].sum() / sent) if sent else 0.0,
        "active_days_per_user": float(d["active"].sum() / n),
        "disable_rate": float(1.0 - d["enabled"][-1] / n),
        "churn_rate": float(d["churned"][-1] / n),
        "purchases_per_user": float(d["bought"].sum() / n),
        "daily_active_users": (d["active"] / n).round(5).tolist(),
    }
