"""The ``funnel`` command line: one module per command group, thin over the typed stage functions.

``funnel --help`` stays instant: the parser is built from light config modules only, and every
heavy library (TensorFlow, NVTabular, cuDF, pandas, Triton) is imported inside the command that
needs it. Errors a user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from funnel import __version__
from funnel.cli import ab, data, evaluate, notify, ops, preprocess, serve, train
from funnel.core import stop
from funnel.core.errors import FunnelError

EXIT_USAGE = 2
GROUPS = (data, preprocess, train, evaluate, serve, ops, ab, notify)  # in the order `funnel --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="funnel",
        description="GPU-first multi-stage recommender on NVIDIA Merlin: data -> NVTabular -> "
        "two-tower + DLRM -> Triton.",
    )
    parser.add_argument("--version", action="version", version=f"funnel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        group.register(sub)
    return parser


def _quiet_libraries() -> None:
    """Silence import-time chatter of TensorFlow and Merlin's expected CPU-mode warnings."""
    import os
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("FEAST_USAGE", "False")  # Feast reports usage online unless told not to
    warnings.filterwarnings("ignore", message=".*in CPU mode.*")
    warnings.filterwarnings("ignore", message=".*PyTorch dtype mappings.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


_UNWOUND: list[BaseException] = []  # interrupts whose tracebacks are never freed (see _hold)


def _hold(exc: BaseException) -> None:
    """Keep an interrupt's traceback alive for the rest of the process. Freeing it destroys the
    TensorFlow data iterators in its frames, and mid-epoch that destructor (holding the GIL) can wait
    for a worker thread blocked in a Python queue that is never fed again: a SIGTERM'd ranker build
    printed "interrupted" and then hung for good (gdb: in ``tb_dealloc``). Every cleanup has run
    by then; :func:`entry` leaves with ``os._exit`` so nothing is torn down afterwards either."""
    _UNWOUND.append(exc)


def _terminated(signum, frame) -> None:
    stop.request()  # remembered, in case the interrupt below is swallowed where it lands
    raise KeyboardInterrupt  # unwinds like Ctrl-C: temporary outputs are removed on the way out


def _interrupted() -> int:
    print("funnel: interrupted; no partial output was kept", file=sys.stderr)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    previous = None
    stop.clear()
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _terminated)  # a supervisor's stop cleans up like Ctrl-C
    try:
        code = args.func(args)
        stop.raise_if_requested()
    except FunnelError as exc:
        if not stop.requested():
            print(f"funnel: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        _hold(exc)
        return _interrupted()
    except KeyboardInterrupt as exc:
        _hold(exc)
        return _interrupted()
    except BaseException as exc:
        if stop.requested():  # the interrupt surfaced as another error (e.g. wrapped by a library)
            _hold(exc)
            return _interrupted()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(code or 0)


def entry() -> None:
    """The ``funnel`` program: :func:`main`, then exit. After an interruption it exits at once
    (``os._exit``, output flushed): the interpreter's own teardown would free what :func:`_hold`
    keeps and hang the same way."""
    code = main()
    if _UNWOUND:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
