"""A stop request (SIGTERM) that survives being swallowed.

The CLI's SIGTERM handler raises KeyboardInterrupt, which unwinds like Ctrl-C. Raised at the
wrong moment (inside a destructor such as TensorFlow's ``__del__``, or inside library code that
wraps it in another exception) Python prints "Exception ignored" and carries on, so the handler
also records the request here: an atomic output checks it before it renames its temporary
directory into place (:func:`raise_if_requested`), and the CLI answers 130 whatever the work
did with the interrupt.
"""

from __future__ import annotations

import threading

_requested = threading.Event()


def request() -> None:
    """Record a stop request (from a signal handler)."""
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def clear() -> None:
    """Forget an earlier request (a new command starts)."""
    _requested.clear()


def raise_if_requested() -> None:
    """KeyboardInterrupt when a stop was requested: call it before committing an output."""
    if _requested.is_set():
        raise KeyboardInterrupt
