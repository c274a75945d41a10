"""Optimizers of both trainers: Keras' Adam, or LazyAdam for large embedding tables.

Keras' Adam (2.12) turns an embedding table's sparse gradient into dense work: every step it
decays both moment estimates of *every* row and moves every row. Its cost per step grows with
the table, not with the batch: with H&M's 1.37M customers x 64 it took 2.2 s per 1,024-row step
on 2 cores against LazyAdam's 33.5 ms (``bench/optimizer.py``), about 19 hours for one epoch of
31.2M rows.

``LazyAdam`` (as in TensorFlow Addons) updates only the rows a batch touches: their moments decay
and their weights move, all other rows stay as they are until they next appear. Dense variables
(the towers' MLPs) get Adam's update unchanged. Its cost per step is independent of the table
size, and for a row seen at every step it is Adam exactly.

``auto`` (the default) picks LazyAdam where an embedding table has more than ``LAZY_ROWS`` rows,
and Keras' Adam on smaller data, where the quality figures (bench/quality.py) were measured with it.
"""

from __future__ import annotations

import tensorflow as tf
from merlin.schema import Schema, Tags

from models.config import Optimizer

LAZY_ROWS = 100_000  # a table this big costs Adam about 0.1 s a step on 2 cores: more than the rest of a step


@tf.keras.utils.register_keras_serializable(package="funnel")
class LazyAdam(tf.keras.optimizers.Adam):
    """Adam whose update of a sparse gradient (``tf.IndexedSlices``: an embedding lookup's) touches
    only the gradient's rows; repeated rows are summed first. Dense gradients: Keras' Adam."""

    def __init__(self, learning_rate=0.001, name="LazyAdam", **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("LazyAdam does not support amsgrad")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        rows, position = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * grad
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(grad)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


def resolve(choice: Optimizer, schema: Schema) -> Optimizer:
    """``auto`` decided for a model over ``schema``: lazy_adam where its largest categorical column
    (an embedding table) has more than ``LAZY_ROWS`` rows; any other choice as given."""
    choice = Optimizer(choice)
    if choice != Optimizer.AUTO:
        return choice
    rows = [int(col.int_domain.max) + 1 for col in schema.select_by_tag(Tags.CATEGORICAL)
            if col.int_domain is not None and col.int_domain.max is not None]
    return Optimizer.LAZY_ADAM if max(rows, default=0) > LAZY_ROWS else Optimizer.ADAM


def make_optimizer(choice: Optimizer, learning_rate: float, schema: Schema) -> tf.keras.optimizers.Optimizer:
    """A fresh optimizer for a model over ``schema`` (``auto`` decided by :func:`resolve`)."""
    choice = resolve(choice, schema)
    return LazyAdam(learning_rate) if choice == Optimizer.LAZY_ADAM else tf.keras.optimizers.Adam(learning_rate)
