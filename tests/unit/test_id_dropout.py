"""models.tf_helpers.IdDropout: the item tower's training-time id dropout (cold items)."""

import numpy as np
import pytest
import tensorflow as tf

from funnel.core.errors import FunnelError
from models.tf_helpers import IdDropout
from workflows import OOV_INDEX


def _batch(n: int = 20_000) -> dict:
    return {"item_id": tf.constant(np.arange(10, 10 + n, dtype=np.int64).reshape(-1, 1)),
            "product_code": tf.constant(np.arange(5, 5 + n, dtype=np.int32).reshape(-1, 1)),
            "price": tf.constant(np.linspace(0, 1, n, dtype=np.float32).reshape(-1, 1))}


def test_training_hides_about_rate_of_the_rows_ids_and_codes_together_and_nothing_else():
    tf.random.set_seed(0)
    batch = _batch()
    out = IdDropout(["item_id", "product_code"], 0.25, OOV_INDEX)(batch, training=True)
    ids, before = out["item_id"].numpy(), batch["item_id"].numpy()
    dropped = ids != before
    assert ids.shape == before.shape and out["product_code"].dtype == tf.int32
    assert np.all(ids[dropped] == OOV_INDEX)  # a dropped row reads as unknown, never as another item
    assert abs(dropped.mean() - 0.25) < 0.02  # 20,000 draws: the binomial s.e. is 0.003
    codes = out["product_code"].numpy()
    np.testing.assert_array_equal(codes != batch["product_code"].numpy(), dropped)  # the same rows: a new item has neither
    assert np.all(codes[dropped] == OOV_INDEX)
    np.testing.assert_array_equal(out["price"].numpy(), batch["price"].numpy())


def test_inference_and_rate_zero_leave_the_ids_alone():
    batch = _batch(100)
    for layer, training in ((IdDropout(["item_id"], 0.5, OOV_INDEX), False), (IdDropout(["item_id"], 0.0, OOV_INDEX), True)):
        out = layer(batch, training=training)
        np.testing.assert_array_equal(out["item_id"].numpy(), batch["item_id"].numpy())


def test_config_round_trip_and_bad_rate():
    layer = IdDropout(["item_id", "product_code"], 0.1, OOV_INDEX)
    again = IdDropout.from_config(layer.get_config())
    assert (again.columns, again.rate, again.oov_index) == (["item_id", "product_code"], 0.1, OOV_INDEX)
    assert tf.keras.utils.get_registered_object("funnel>IdDropout") is IdDropout  # load_tower finds it
    for rate in (-0.1, 1.0):
        with pytest.raises(FunnelError, match="dropout rate"):
            IdDropout(["item_id"], rate, OOV_INDEX)
    with pytest.raises(FunnelError, match="at least one column"):
        IdDropout([], 0.1, OOV_INDEX)


def test_item_id_dropout_is_on_by_default_only_where_the_data_has_new_items():
    from models.config import ITEM_ID_DROPOUT, RetrievalConfig

    assert ITEM_ID_DROPOUT > 0
    assert RetrievalConfig().item_id_dropout is None  # decided by the data
    assert RetrievalConfig().resolved(has_stock_history=True).item_id_dropout == ITEM_ID_DROPOUT
    assert RetrievalConfig().resolved(has_stock_history=False).item_id_dropout == 0.0
    assert RetrievalConfig(item_id_dropout=0.3).resolved(has_stock_history=False).item_id_dropout == 0.3
    assert RetrievalConfig(item_id_dropout=0.0).resolved(has_stock_history=True).item_id_dropout == 0.0
    with pytest.raises(FunnelError, match="item_id_dropout"):
        RetrievalConfig(item_id_dropout=1.0)
