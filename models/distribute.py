"""Data-parallel training over several devices with ``tf.distribute.MirroredStrategy``.

merlin-models 23.12 does not train under a strategy as shipped (NVIDIA-Merlin/models #744,
#764); three small, local workarounds make it work without touching the library:

1. ``BaseModel`` creates a bool flag variable with ``synchronization=NONE``, which a
   strategy refuses to mirror: inside :func:`scope` such variables are created as
   sync-on-read copies (one per replica, read from the first).
2. ``train_compute_metrics`` wraps the metric update in a ``tf.cond``; a cross-replica
   merge inside a cond is not supported: :func:`prepare` makes the model compute its
   (compile-time, loss-only) metrics every step instead.
3. Keras splits each global batch across replicas tensor by tensor, which tears the
   ``(values, offsets)`` pair of list features (e.g. genres) apart: :func:`fit_epochs`
   feeds every replica whole batches of ``batch_size`` rows from the merlin Loader through
   ``distribute_datasets_from_function``.

``batch_size`` is per replica, so in-batch negatives are the same as on one device and a
step processes ``replicas x batch_size`` rows.
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import merlin.models.tf as mm
import tensorflow as tf

from funnel.core.errors import FunnelError


def choose_strategy(devices: str):
    """``auto``: every visible GPU (mirrored when there are several), else the default device;
    ``one``: the default device only; or a comma-separated device list such as ``/gpu:0,/gpu:1``."""

    if devices == "one":
        return tf.distribute.get_strategy()
    if devices == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return tf.distribute.get_strategy()
    names = [d.strip() for d in devices.split(",") if d.strip()]
    known = {_short_name(d.name) for d in tf.config.list_logical_devices()}
    missing = [d for d in names if _short_name(d) not in known]
    if missing or not names:
        raise FunnelError(f"devices: {', '.join(missing) or repr(devices)} not visible to TensorFlow "
                          f"(visible: {', '.join(sorted(known)) or 'none'}; or use auto / one)")
    if len(names) == 1:
        return tf.distribute.OneDeviceStrategy(names[0])
    return tf.distribute.MirroredStrategy(names)


def _short_name(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:CPU:0', '/device:CPU:0', '/cpu:0' -> 'cpu:0'."""
    return device.lower().rsplit("device:", 1)[-1].lstrip("/")


def replicas(strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def _sync_on_read_for_unsynchronised(next_creator, **kwargs):
    if kwargs.get("synchronization") == tf.VariableSynchronization.NONE:
        kwargs["synchronization"] = tf.VariableSynchronization.ON_READ
        kwargs["aggregation"] = tf.VariableAggregation.ONLY_FIRST_REPLICA
    return next_creator(**kwargs)


@contextlib.contextmanager
def scope(strategy) -> Iterator[None]:
    """Build and compile models in here: the strategy's scope (+ workaround 1 when it mirrors)."""
    with strategy.scope():
        if replicas(strategy) > 1:
            with tf.variable_creator_scope(_sync_on_read_for_unsynchronised):
                yield
        else:
            yield


def prepare(model, strategy) -> None:
    """Workaround 2: under a mirrored strategy, compute the train metrics without a ``tf.cond``."""
    if replicas(strategy) <= 1:
        return

    def train_compute_metrics(self, outputs, compiled_metrics):
        return self.compute_metrics(outputs, compiled_metrics)

    model.train_compute_metrics = types.MethodType(train_compute_metrics, model)


class _EpochEnd(tf.keras.callbacks.Callback):
    """Times each epoch and asks ``after_epoch(epoch, loss, seconds)`` whether to stop."""

    def __init__(self, after_epoch: Callable[[int, float, float], bool]):
        super().__init__()
        self.after_epoch, self.started = after_epoch, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        if self.after_epoch(epoch + 1, float((logs or {}).get("loss", float("nan"))), seconds):
            self.model.stop_training = True


PROGRESS_SECONDS = 1.0  # how often training reports its progress within an epoch


class _Batches(tf.keras.callbacks.Callback):
    """Tells ``on_batch(epoch, steps_done)`` at each epoch's start and then every ``PROGRESS_SECONDS``
    (progress bars)."""

    def __init__(self, on_batch: Callable[[int, int], None]):
        super().__init__()
        self.on_batch, self.every, self.epoch, self.last = on_batch, PROGRESS_SECONDS, 1, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.last = epoch + 1, time.perf_counter()
        self.on_batch(self.epoch, 0)

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.on_batch(self.epoch, batch + 1)


def fit_epochs(model, dataset, batch_size: int, strategy, epochs: int,
               after_epoch: Callable[[int, float, float], bool],
               on_batch: Callable[[int, int], None] | None = None) -> None:
    """Up to ``epochs`` epochs over a merlin ``Dataset`` (merlin-models' ``fit`` reads it with a
    Loader that reshuffles parts and chunk rows every epoch). After each,
    ``after_epoch(epoch, loss, seconds)`` runs (validation goes there) and returns True to stop;
    within one, ``on_batch(epoch, steps_done)`` hears about progress about once a second.

    On one device this is a single Keras ``fit``: the train step is traced and the loader set up
    once, not once per epoch (that cost a third of a small model's training time).
    """
    progress = [] if on_batch is None else [_Batches(on_batch)]
    if replicas(strategy) <= 1:
        model.fit(dataset, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=False,
                  train_metrics_steps=10_000, callbacks=[*progress, _EpochEnd(after_epoch)])
        return
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        if on_batch is not None:  # each epoch is its own fit here: Keras counts epochs from 1 every time
            progress = [_Batches(lambda _, steps, epoch=epoch: on_batch(epoch, steps))]
        history = _fit_epoch_mirrored(model, dataset, batch_size, strategy, progress)
        if after_epoch(epoch, float(history["loss"][-1]), time.perf_counter() - started):
            return


def _fit_epoch_mirrored(model, dataset, batch_size: int, strategy, callbacks: list) -> dict[str, Any]:
    """One epoch under a mirrored strategy (workaround 3); returns Keras' history dict."""
    loader = mm.Loader(dataset, batch_size=batch_size, shuffle=False)
    first_x, first_y = next(iter(loader))
    x_spec = {k: tf.TensorSpec((None, *v.shape[1:]), v.dtype) for k, v in first_x.items()}
    spec = x_spec if first_y is None else (x_spec, tf.TensorSpec((None, *first_y.shape[1:]), first_y.dtype))

    def batches():
        for x, y in loader:
            yield x if y is None else (x, y)

    def per_replica(_context):
        return tf.data.Dataset.from_generator(batches, output_signature=spec).prefetch(2)

    steps = len(loader) // replicas(strategy)  # whole steps only: a ragged last step is dropped
    if steps < 1:
        raise FunnelError(f"training data: {len(loader)} batch(es) of {batch_size} rows cannot feed "
                          f"{replicas(strategy)} replicas; lower batch_size")
    data = strategy.distribute_datasets_from_function(per_replica)
    fit = model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, train_metrics_steps=10_000, callbacks=callbacks)
    return fit.history
