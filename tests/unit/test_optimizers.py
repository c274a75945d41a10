"""models.optimizers.LazyAdam against Adam's formulas written out in numpy, row by row."""

import numpy as np
import pytest
import tensorflow as tf

from funnel.core.errors import FunnelError
from models.config import Optimizer, RankingConfig, RetrievalConfig
from models.optimizers import LAZY_ROWS, LazyAdam, make_optimizer, resolve

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-7  # Keras' defaults but the learning rate


class NumpyAdamRows:
    """Adam with per-row moments where only the rows given are updated (the lazy rule), bias
    correction by the global step, as TensorFlow Addons' LazyAdam."""

    def __init__(self, weights: np.ndarray):
        self.w, self.m, self.v, self.t = weights.astype(np.float64), np.zeros_like(weights, np.float64), \
            np.zeros_like(weights, np.float64), 0

    def step(self, rows: np.ndarray, grads: np.ndarray) -> None:
        self.t += 1
        summed: dict[int, np.ndarray] = {}
        for r, g in zip(rows, grads):
            summed[int(r)] = summed.get(int(r), 0) + g
        alpha = LR * np.sqrt(1 - B2 ** self.t) / (1 - B1 ** self.t)
        for r, g in summed.items():
            self.m[r] = B1 * self.m[r] + (1 - B1) * g
            self.v[r] = B2 * self.v[r] + (1 - B2) * g * g
            self.w[r] -= alpha * self.m[r] / (np.sqrt(self.v[r]) + EPS)


def test_sparse_gradient_moves_only_its_rows_with_duplicates_summed():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(6, 3)).astype(np.float32)
    table = tf.Variable(start)
    opt, ref = LazyAdam(LR), NumpyAdamRows(start)
    steps = [np.array([1, 4, 1]), np.array([2, 1]), np.array([4])]
    for rows in steps:
        grads = rng.normal(size=(len(rows), 3)).astype(np.float32)
        opt.apply_gradients([(tf.IndexedSlices(tf.constant(grads), tf.constant(rows)), table)])
        ref.step(rows, grads)
    np.testing.assert_allclose(table.numpy(), ref.w, rtol=1e-5, atol=1e-6)
    untouched = [0, 3, 5]
    np.testing.assert_array_equal(table.numpy()[untouched], start[untouched])  # never in a batch: never moved


def test_embedding_lookup_gradients_take_the_lazy_path_and_dense_variables_follow_adam():
    rng = np.random.default_rng(1)
    start_table = rng.normal(size=(50, 4)).astype(np.float32)
    start_w = rng.normal(size=(4,)).astype(np.float32)
    table, w = tf.Variable(start_table), tf.Variable(start_w)
    opt = LazyAdam(LR)
    ref_table, ref_w = NumpyAdamRows(start_table), NumpyAdamRows(start_w.reshape(1, -1))
    for _ in range(3):
        ids = rng.integers(0, 50, size=8)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, ids) * w)  # d/d row = w, d/d w = sum of the rows
        g_table, g_w = tape.gradient(loss, [table, w])
        assert isinstance(g_table, tf.IndexedSlices)
        rows_now, w_now = ref_table.w[ids], ref_w.w[0]
        ref_table.step(ids, np.tile(w_now, (len(ids), 1)))
        ref_w.step(np.array([0]), rows_now.sum(axis=0, keepdims=True))  # a dense variable: every entry, each step
        opt.apply_gradients([(g_table, table), (g_w, w)])
    np.testing.assert_allclose(table.numpy(), ref_table.w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w.numpy(), ref_w.w[0], rtol=1e-4, atol=1e-5)


def _schema(users: int, items: int):
    from merlin.schema import ColumnSchema, Schema, Tags

    def column(name, size, tag):
        return ColumnSchema(name, dtype=np.int64, tags=[tag, Tags.CATEGORICAL],
                            properties={"domain": {"min": 0, "max": size - 1, "name": name}})

    return Schema([column("user_id", users, Tags.USER_ID), column("item_id", items, Tags.ITEM_ID),
                   ColumnSchema("price", dtype=np.float32, tags=[Tags.CONTINUOUS])])


def test_auto_is_lazy_only_where_a_table_is_large_and_the_choice_is_validated_once():
    assert RetrievalConfig().optimizer == Optimizer.AUTO and RankingConfig().optimizer == Optimizer.AUTO
    assert RetrievalConfig(optimizer="adam").optimizer is Optimizer.ADAM
    with pytest.raises(FunnelError, match="optimizer must be one of auto, adam, lazy_adam"):
        RetrievalConfig(optimizer="sgd")
    small, hm_size = _schema(LAZY_ROWS, 5_000), _schema(1_370_000, 105_542)
    assert resolve(Optimizer.AUTO, small) is Optimizer.ADAM  # a table of exactly LAZY_ROWS rows: Adam
    assert resolve(Optimizer.AUTO, _schema(1000, LAZY_ROWS + 1)) is Optimizer.LAZY_ADAM  # the item table counts too
    assert resolve(Optimizer.ADAM, hm_size) is Optimizer.ADAM  # a choice made is kept
    assert type(make_optimizer(Optimizer.AUTO, 0.1, hm_size)) is LazyAdam
    assert type(make_optimizer(Optimizer.AUTO, 0.1, small)) is tf.keras.optimizers.Adam
    assert type(make_optimizer(Optimizer.LAZY_ADAM, 0.1, small)) is LazyAdam
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)
