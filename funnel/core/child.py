"""Work in a child process that dies with its parent.

Training that must leave its memory behind when it ends (TensorFlow's allocations stay with the
process) runs in a spawned child (:func:`call_in_child`). The child must never outlive the
command that started it: a stop (Ctrl-C, SIGTERM) ends it before the stop goes on, and a parent
killed outright (SIGKILL, the out-of-memory killer) takes it along, because the kernel is asked
to kill the child when its parent dies (:func:`die_with_parent`, Linux) before the child imports
anything heavy. This module imports nothing heavy itself, for that reason.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
from typing import Any

from funnel.core.errors import FunnelError

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere a no-op: the
    parent's own stop handling still ends it)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def call_in_child(target: str, args: tuple, died: str, name: str = "funnel-child") -> Any:
    """``module:function(*args)`` run in a spawned child process; its return value, or its exception
    raised here. ``died`` is the error's text when the child dies without answering (killed: out of
    memory, a signal). Any failure or stop here stops the child first."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    answers, answer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_main, args=(answer, os.getpid(), target, args), name=name)
    try:
        _start_holding_stops(child)
        answer.close()  # the child holds the sending end now: its death ends the pipe
        try:
            kind, value = answers.recv()
        except EOFError:
            raise FunnelError(died) from None
        child.join()
        if kind == "error":
            raise value
        return value
    except BaseException:  # an error, or a stop: the child must not work on for nobody
        if child.is_alive():
            child.terminate()
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
        raise
    finally:
        answers.close()


def _start_holding_stops(child) -> None:
    """``child.start()`` with Ctrl-C and SIGTERM held until it returns, then raised again here (their
    handlers run as usual, inside the caller's cleanup). A stop that lands mid-start, once the child
    exists but before ``start`` returns, leaves no handle to stop it with: it then died on its own of
    a broken pipe, printing a traceback, after the stop had gone on (seen on a loaded 2-core box).
    Handlers can only change in the main thread; elsewhere the start is not held."""
    import threading

    stops = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not None]
    if threading.current_thread() is not threading.main_thread() or not stops:
        child.start()
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda sig, _frame: held.append(sig)) for sig in stops}
    try:
        child.start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in dict.fromkeys(held):  # each stop once, in the order it came
        signal.raise_signal(sig)


def _main(answer, parent: int, target: str, args: tuple) -> None:
    """The child: dies with ``parent``, runs ``target``, answers ``("ok", value)`` or ``("error", exc)``."""
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the kernel was asked
        os._exit(1)
    try:
        module, function = target.split(":")
        result = ("ok", getattr(importlib.import_module(module), function)(*args))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        result = ("error", exc)
    try:
        answer.send(result)
    except Exception:  # noqa: BLE001 - a value or exception that does not pickle: its text then
        answer.send(("error", FunnelError(f"{target} failed: {result[1]!r}")))
    finally:
        answer.close()
