"""Ctrl-C during a search: held back while the study's storage is written, and never lost.

Held (`interrupt_held`): blocking SIGINT with pthread_sigmask is not enough: the mask is per
thread, the OS delivers the signal to any thread that does not block it (the heartbeat thread, the
compile pool's), and Python then raises KeyboardInterrupt in the main thread all the same. One CI
run of `--workers 2` left a trial RUNNING that way (interrupted inside study.ask after its first
parameter). Swapping the handler holds it whichever thread receives it.

Never lost (`interrupts_checked`, `raise_if_pending`): Python raises KeyboardInterrupt wherever
the main thread is, also inside a weakref callback or a __del__, where the exception is printed
("Exception ignored in ...") and dropped. One CI run's tune went on measuring after its Ctrl-C that
way. The search's handler remembers the signal too, and the loop raises it at its next step."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_pending = threading.Event()  # a Ctrl-C arrived inside interrupts_checked and has not been raised by the loop


def _remember_and_raise(signum, frame):
    _pending.set()
    raise KeyboardInterrupt


@contextmanager
def interrupts_checked() -> Iterator[None]:
    """Inside: a Ctrl-C raises KeyboardInterrupt as usual and is remembered, so that one dropped
    where Python swallows exceptions still stops the loop at its next `raise_if_pending()`. Outside
    the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _remember_and_raise)
    _pending.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending.clear()


def raise_if_pending() -> None:
    """Raise the KeyboardInterrupt of a Ctrl-C that arrived and was swallowed (see the module)."""
    if _pending.is_set():
        _pending.clear()
        raise KeyboardInterrupt


@contextmanager
def interrupt_held() -> Iterator[None]:
    """Inside: a SIGINT is noted, not raised. On leaving: the noted one is raised as the
    KeyboardInterrupt it would have been (the previous handler runs). Outside the main thread
    (where handlers cannot be set) it holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[tuple[int, object]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if noted:
            signum, frame = noted[0]
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt
