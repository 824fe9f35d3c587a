"""Holding a Ctrl-C back while the study's storage is written.

Blocking SIGINT with pthread_sigmask is not enough: the mask is per thread, the OS delivers the
signal to any thread that does not block it (the heartbeat thread, the compile pool's), and
Python then raises KeyboardInterrupt in the main thread all the same. One CI run of `--workers 2`
left a trial RUNNING that way (interrupted inside study.ask after its first parameter). Swapping
the handler holds it whichever thread receives it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


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
