"""Ctrl-C that is never lost.

The CLI's SIGINT handler raises KeyboardInterrupt at once, as Python's own does, and also sets ``REQUESTED``.
Python drops an exception raised while a finaliser (``__del__``, a weakref callback) runs, so now and then a
Ctrl-C vanished and a training run went on to finish; the training loops call ``check()`` after every batch, which
raises it again from ordinary code.
"""

from __future__ import annotations

import contextlib
import signal
import threading

REQUESTED = threading.Event()


def _on_sigint(signum, frame) -> None:
    REQUESTED.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def installed():
    """Route SIGINT through ``_on_sigint`` for the block (main thread only; elsewhere the default handler stays),
    then put the previous handler back and forget the request: a CLI call made in-process leaves nothing behind."""
    REQUESTED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        REQUESTED.clear()


@contextlib.contextmanager
def deferred():
    """Hold a Ctrl-C until the block is done, then raise it: an epoch's checkpoint and its metrics row are saved
    together or not at all. A no-op outside ``installed`` (library use, other threads)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not _on_sigint:
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: REQUESTED.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, _on_sigint)
    check()


def check() -> None:
    if REQUESTED.is_set():
        raise KeyboardInterrupt
