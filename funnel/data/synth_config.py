"""SynthConfig: the generator's parameters (a light module: the CLI builds its flags from it)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from funnel.core.errors import FunnelError


# Named sizes: ``funnel data synth --preset NAME`` (flags given alongside still win).
PRESETS: dict[str, dict] = {
    # the H&M Kaggle data's shape: 1,371,980 customers, 105,542 articles, 31.8M transactions over
    # 2018-09-20 .. 2020-09-22 (734 days): ~23 purchases per customer in two years
    "hm": {"users": 1_371_980, "items": 105_542, "days": 734, "activity": 0.01435, "basket_size": 2.2,
           "styles": 128},
}


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the generator. Expected interactions ~= users*days*activity*basket_size."""

    users: int = 20_000
    items: int = 10_000
    days: int = 91
    seed: int = 42
    styles: int = field(default=64, metadata={"help": "latent taste clusters"})
    activity: float = field(default=0.06, metadata={"help": "mean baskets per user per day (lognormal spread)"})
    basket_size: float = field(default=2.2, metadata={"help": "mean articles per basket"})
    repurchase_rate: float = field(default=0.15, metadata={"help": "mean share of purchases repeating an earlier one"})
    launch_share: float = field(default=0.2, metadata={"help": "share of articles launched during the period"})
    stockout_share: float = field(default=0.15, metadata={"help": "share of articles that sell out at some point"})
    end_date: str = "2020-09-22"
    # planted drift (monitoring tests): from day `shift_day` (0 = none) on, prices paid are multiplied
    # by `shift_price` and a `shift_tastes` share of fresh purchases moves to a few "hot" styles
    shift_day: int = field(default=0, metadata={"help": "planted drift from this day on (0 = none)"})
    shift_price: float = field(default=1.0, metadata={"help": "price multiplier after shift_day"})
    shift_tastes: float = field(default=0.0, metadata={
        "help": "share of fresh purchases that move to a few hot styles after shift_day"})

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 2 or self.days < 2:
            raise FunnelError("synth: need --users >= 1, --items >= 2 and --days >= 2")
        if self.styles < 1 or self.styles > self.items:
            raise FunnelError("synth: --styles must be between 1 and --items")
        if not 0 <= self.repurchase_rate < 1:
            raise FunnelError("synth: --repurchase-rate must be in [0, 1)")
        if self.activity <= 0 or self.basket_size < 1:
            raise FunnelError("synth: --activity must be > 0 and --basket-size >= 1")
        if not 0 <= self.shift_day < self.days or self.shift_price <= 0 or not 0 <= self.shift_tastes <= 1:
            raise FunnelError("synth: --shift-day in [0, days), --shift-price > 0, --shift-tastes in [0, 1]")
        try:
            dt.date.fromisoformat(self.end_date)
        except ValueError:
            raise FunnelError(f"synth: --end-date {self.end_date!r} is not a date (YYYY-MM-DD)") from None

    @property
    def start(self):
        """The first day (a pandas Timestamp)."""
        import pandas as pd  # the config module stays light: the CLI builds its flags from it

        return pd.Timestamp(self.end_date) - pd.Timedelta(days=self.days - 1)

    def expected_interactions(self) -> int:
        return int(self.users * self.days * self.activity * self.basket_size)
