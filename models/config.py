"""Typed training configs: one dataclass per model, defaults < YAML < command line (funnel.core.config)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from funnel.core.config import Choice, coerce_choices
from funnel.core.errors import FunnelError


ITEM_ID_DROPOUT = 0.1  # where the data has new items; on MovieLens-100k (no stock history) it cost Recall


class Precision(Choice):
    """Keras dtype policies: float32, mixed_float16 (GPUs) or mixed_bfloat16 (CPUs/GPUs with bf16)."""

    FLOAT32 = "float32"
    MIXED_FLOAT16 = "mixed_float16"
    MIXED_BFLOAT16 = "mixed_bfloat16"


class Optimizer(Choice):
    """``adam``: Keras' Adam (its cost per step grows with the embedding tables: it moves every row);
    ``lazy_adam``: only the rows a batch touches (models.optimizers); ``auto``: lazy_adam where an
    embedding table has more than ``models.optimizers.LAZY_ROWS`` rows, else adam."""

    AUTO = "auto"
    ADAM = "adam"
    LAZY_ADAM = "lazy_adam"


class EarlierRetrievers(Choice):
    """Where the ranker's earlier label periods get their candidates. ``updated``: the earliest
    period's two-tower is trained on everything before it, and each later period's is the one before
    it trained ``earlier_update_epochs`` more epochs on everything before that period (one full
    training and short updates, as a served retriever is refreshed); ``each``: every period's trained
    from scratch on everything before it (``label_windows - 1`` full trainings); ``one``: a single
    two-tower trained before the earliest period for all of them (its candidates and scores the
    staler the later the period, unlike serving's). No period's retriever ever saw that period."""

    UPDATED = "updated"
    EACH = "each"
    ONE = "one"


OPTIMIZER_HELP = ("adam moves every embedding row at every step (its step cost grows with the number of users); "
                  "lazy_adam only the rows in the batch; auto: lazy_adam where a table has more than 100,000 rows")


@dataclass
class RetrievalConfig:
    """Two-tower training settings (defaults tuned on the synthetic default and MovieLens-100k)."""

    pre: str = field(default="", metadata={"help": "preprocessing output directory"})
    out: str = field(default="", metadata={"help": "run directory to write"})
    embedding_dim: int = field(default=64, metadata={"help": "output embedding size of both towers"})
    tower_dims: list[int] = field(default_factory=lambda: [128], metadata={"help": "hidden MLP widths per tower"})
    batch_size: int = 1024
    learning_rate: float = 3e-3
    optimizer: Optimizer = field(default=Optimizer.AUTO, metadata={"help": OPTIMIZER_HELP})
    epochs: int = 20
    patience: int = field(default=3, metadata={"help": "epochs without validation gain before stopping"})
    logq: bool = field(default=True, metadata={"help": "popularity (logQ) correction of in-batch negatives"})
    logq_reg: float = 1.0
    temperature: float = 1.0
    item_id_dropout: float | None = field(default=None, metadata={
        "help": "share of training rows whose item id and codes the item tower sees as unknown, so it also "
                "learns to place items from their features (how new, never-bought articles get scored); "
                f"default: {ITEM_ID_DROPOUT} where the dataset has a stock history (it has new items), 0 without"})
    valid_days: int = field(default=7, metadata={"help": "time splits: last days of train held out for validation"})
    windows_back: int = field(default=0, metadata={
        "help": "train as if the training split ended this many validation-sized windows earlier "
                "(the ranker's retriever for its earlier label windows)"})
    refit: bool = field(default=True, metadata={
        "help": "after early stopping, train the served towers again from scratch on every training row "
                "(the validation period too) for the best epoch's count; the early-stopped towers are kept "
                "for the ranker's latest label period, which they never saw"})
    valid_k: int = 10
    valid_users: int = field(default=2000, metadata={"help": "users sampled for validation recall"})
    seed: int = 0
    threads: int = field(default=0, metadata={"help": "TensorFlow threads (0 = one per core)"})
    devices: str = field(default="auto", metadata={"help": "auto (every visible GPU, mirrored when several), one, "
                                                       "or a list such as /gpu:0,/gpu:1; batch_size is per device"})
    precision: Precision = field(default=Precision.FLOAT32, metadata={"help": "Keras dtype policy"})

    def __post_init__(self) -> None:
        coerce_choices(self)
        if self.epochs < 1 or self.batch_size < 2 or self.embedding_dim < 1 or self.learning_rate <= 0:
            raise FunnelError("retrieval: epochs >= 1, batch_size >= 2, embedding_dim >= 1, learning_rate > 0")
        if self.patience < 1 or self.valid_k < 1 or self.valid_users < 1 or self.windows_back < 0:
            raise FunnelError("retrieval: patience, valid_k and valid_users >= 1, windows_back >= 0")
        if self.item_id_dropout is not None and not 0.0 <= self.item_id_dropout < 1.0:
            raise FunnelError(f"retrieval: item_id_dropout must be in [0, 1), got {self.item_id_dropout}")

    def require_paths(self) -> None:
        if not self.pre or not self.out:
            raise FunnelError("retrieval: need a preprocessing directory and --out")

    def resolved(self, has_stock_history: bool) -> "RetrievalConfig":
        """This config with ``item_id_dropout`` decided: as given, else ``ITEM_ID_DROPOUT`` where the
        data has a stock history (new items exist and only their features can place them), else 0."""
        if self.item_id_dropout is not None:
            return self
        return replace(self, item_id_dropout=ITEM_ID_DROPOUT if has_stock_history else 0.0)


@dataclass
class RankingConfig:
    """DLRM ranker settings: labelled candidates from the retriever's unseen period."""

    pre: str = field(default="", metadata={"help": "preprocessing output directory"})
    run: str = field(default="", metadata={"help": "run directory holding the retriever"})
    candidates: int = field(default=100, metadata={"help": "retriever top-N per user"})
    item_item: int = field(default=100, metadata={"help": "item-item (EASE) top-N per user (0: no item-item source)"})
    item_item_lambdas: list[float] = field(default_factory=lambda: [10.0, 50.0, 200.0, 500.0, 2000.0], metadata={
        "help": "EASE regularisation values tried (the best on the label period is kept)"})
    item_item_recencies: list[float] = field(default_factory=lambda: [0.0, 5.0, 10.0, 20.0, 50.0], metadata={
        "help": "item-item recency weightings tried with each lambda: a user's n-th latest item weighs "
                "exp(-n / r); 0 = all alike"})
    item_item_sequences: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 1.0], metadata={
        "help": "weights of the item-item source's 'bought next' term tried with each lambda (how often an item "
                "followed another within a few of a user's purchases, scaled to the EASE weights); 0 = EASE alone"})
    item_item_neighbours: int = field(default=200, metadata={"help": "item-item weights kept per item"})
    item_item_max_items: int = field(default=10_000, metadata={
        "help": "EASE over the most-bought items only (a dense items x items inverse: cost grows with the cube)"})
    new_items: int = field(default=20, metadata={
        "help": "new items per user: never bought before the label period, on sale at its start for at most 28 "
                "days by the stock history (none without one), best two-tower score first (0: no new-item source)"})
    hard_negatives: int = field(default=8, metadata={"help": "hard negatives (unbought candidates) per positive"})
    random_negatives: int = field(default=2, metadata={"help": "popularity-sampled negatives per positive"})
    max_users: int = field(default=50_000, metadata={"help": "label-period users sampled for training, per window"})
    label_windows: int = field(default=4, metadata={
        "help": "label periods the ranker learns from: the retriever's validation period and this many minus one "
                "earlier ones (time: same length; user-last: earlier baskets), each with candidates and features "
                "as of its start from a retriever that never saw it (see earlier_retrievers)"})
    earlier_retrievers: EarlierRetrievers = field(default=EarlierRetrievers.UPDATED, metadata={
        "help": "updated: the earliest earlier label period's two-tower trained on everything before it, each later "
                "period's the one before it trained earlier_update_epochs more epochs on everything before that "
                "period; each: every period's trained from scratch (label_windows - 1 full trainings); one: a single "
                "two-tower trained before the earliest for all of them (staler candidates)"})
    earlier_update_epochs: int = field(default=1, metadata={
        "help": "with earlier_retrievers=updated: epochs each later period's two-tower trains on from the one before"})
    shortlist: int = field(default=0, metadata={
        "help": "the ranker scores each user's N best candidates by the blend of the sources' scores and orders "
                "those; the rest follow in blend order (0: it scores every candidate). Serving cost grows with N; "
                "ranking.json records the gate users' recall at 25, 50, 100 and all"})
    embedding_dim: int = 32
    top_dims: list[int] = field(default_factory=lambda: [128, 64])
    batch_size: int = 1024
    learning_rate: float = 1e-3
    optimizer: Optimizer = field(default=Optimizer.AUTO, metadata={"help": OPTIMIZER_HELP})
    epochs: int = 3
    valid_share: float = field(default=0.2, metadata={
        "help": "share of label users held out: half choose the epoch, the other half decide the gate"})
    valid_k: int = field(default=12, metadata={"help": "k of the held-out recall that picks the epoch"})
    seed: int = 0
    threads: int = 0
    devices: str = field(default="auto", metadata={"help": "auto (every visible GPU, mirrored when several), one, "
                                                       "or a list such as /gpu:0,/gpu:1; batch_size is per device"})
    precision: Precision = field(default=Precision.FLOAT32, metadata={"help": "Keras dtype policy"})

    def __post_init__(self) -> None:
        coerce_choices(self)
        if self.candidates < 1 or self.epochs < 1 or self.hard_negatives < 0 or self.random_negatives < 0:
            raise FunnelError("ranking: candidates >= 1, epochs >= 1, negatives >= 0")
        if self.item_item < 0 or self.item_item_neighbours < 1 or self.item_item_max_items < 2 or not self.item_item_lambdas \
                or min(self.item_item_lambdas) <= 0 or not self.item_item_recencies or min(self.item_item_recencies) < 0 \
                or not self.item_item_sequences or min(self.item_item_sequences) < 0:
            raise FunnelError("ranking: item_item >= 0, item_item_neighbours >= 1, item_item_max_items >= 2, "
                              "item_item_lambdas > 0, item_item_recencies >= 0, item_item_sequences >= 0")
        if self.label_windows < 1 or self.earlier_update_epochs < 1:
            raise FunnelError("ranking: label_windows and earlier_update_epochs must be >= 1")
        if self.new_items < 0 or self.shortlist < 0:
            raise FunnelError("ranking: new_items and shortlist must be >= 0")
        if not 0 < self.valid_share < 1:
            raise FunnelError("ranking: valid_share must be in (0, 1)")

    def require_paths(self) -> None:
        if not self.pre or not self.run:
            raise FunnelError("ranking: need a preprocessing directory and --run")
