"""Graceful stop: the first SIGINT/SIGTERM runs the clean-up and exits 130/143, also when
SIGINT was ignored at start; a second signal exits at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

# A command that cleans up slowly on interruption, as a stage stopping its actors does.
PROGRAM = """
import signal, sys, time
from rayalign import interrupts

try:
    with interrupts.stop_on_signals():
        try:
            print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt:
            print(f"cleaning up after {signal.Signals(interrupts.received()).name}", flush=True)
            time.sleep(float(sys.argv[1]))
            print("clean", flush=True)
            raise
except KeyboardInterrupt:
    sys.exit(interrupts.exit_code())
sys.exit(0)
"""


def _start(cleanup_s: float, ignore_sigint: bool = False) -> subprocess.Popen:
    def preexec():
        if ignore_sigint:  # what a shell does to a background job's SIGINT
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(cleanup_s)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize(
    ("sig", "code", "ignore_sigint"),
    [
        (signal.SIGINT, 130, False),
        (signal.SIGTERM, 143, False),
        (signal.SIGINT, 130, True),
    ],
)
def test_first_signal_cleans_up_and_exits_with_its_code(sig, code, ignore_sigint):
    proc = _start(cleanup_s=0.2, ignore_sigint=ignore_sigint)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert out.splitlines() == [f"cleaning up after {sig.name}", "clean"]


def test_second_signal_exits_at_once():
    proc = _start(cleanup_s=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "cleaning up after SIGTERM"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "clean" not in out.split()
    assert time.monotonic() - started < 20  # not after the 60 s clean-up


def test_handlers_are_restored_after_the_block():
    from rayalign import interrupts

    before = signal.getsignal(signal.SIGTERM)
    with interrupts.stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
