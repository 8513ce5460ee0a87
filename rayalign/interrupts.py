"""Graceful stop: SIGINT and SIGTERM interrupt a long command once; a second signal ends it.

The first signal raises KeyboardInterrupt in the main thread, so `finally` blocks stop
actors and jobs and the command says what it kept; `exit_code()` is then 130 (SIGINT) or
143 (SIGTERM). A second signal exits at once with that code.

The handlers are installed also when the process started with SIGINT ignored (a shell's
background job), and again after `ray.init`, which replaces SIGTERM's handler with one
that dumps a native stack trace and exits 15 (`reinstall`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_active = False
_received: int | None = None


def _handle(signum: int, frame) -> None:
    global _received
    if _received is not None:
        # The second signal: the user wants out now, not after the clean-up.
        sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting at once\n")
        sys.stderr.flush()
        os._exit(128 + signum)
    _received = signum
    # Ray's `ray.get` turns an exception raised here into a bare KeyboardInterrupt, so the
    # signal's number is kept in `_received` rather than on the exception.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def reinstall() -> None:
    """Put the handlers back (after `ray.init` replaced SIGTERM's); a no-op outside
    `stop_on_signals` or off the main thread."""
    if _active and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _handle)


def received() -> int | None:
    """The first signal received inside `stop_on_signals`, if any."""
    return _received


def exit_code() -> int:
    """128 + the signal that interrupted the command (130 for Ctrl-C, also when the
    KeyboardInterrupt came from elsewhere)."""
    return 128 + (_received or signal.SIGINT)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM interrupt the main thread (see the module
    docstring); the previous handlers come back after it. A nested block (the CLI's around
    a command that has its own) changes nothing."""
    global _active, _received
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _active, _received = True, None
    reinstall()
    try:
        yield
    finally:
        _active = False
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
