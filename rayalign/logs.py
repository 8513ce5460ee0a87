"""Console logging for rayalign's processes, and quiet third-party loggers.

Every module logs through `logging.getLogger(__name__)`. A process that talks to the
user configures the handler once: the CLI at start-up, and the worker processes whose
progress lines the user reads (Ray Train workers). Progress lines go to stdout as bare
messages, so they read as before (`[sft] step 20/500 ...`) and job logs stay greppable.
"""

from __future__ import annotations

import logging
import os
import sys

OUR_PACKAGES = ("rayalign", "actors", "serving", "pipelines")
# Loggers that print start-up chatter nobody asked for at INFO level.
NOISY = (
    "matplotlib",
    "matplotlib.font_manager",
    "PIL",
    "urllib3",
    "httpx",
    "filelock",
    "ray.train",  # "Checkpoint successfully created" and "Reporting training result" per save
)
# vLLM and Ray read these in the processes they start (engines, workers), so they go
# into the environment that child processes and Ray workers inherit.
QUIET_ENV = {
    # vLLM engines: start-up banners, config dumps and per-step CPU-backend warnings.
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    # Weight-loading, shard-writing and dataset-mapping progress bars in every worker;
    # rayalign prints its own progress lines. (Not TQDM_DISABLE: vLLM's offline LLM.chat
    # divides by its progress bar's elapsed time, which a disabled bar leaves at 0.)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
_HANDLER_NAME = "rayalign-console"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (pytest and the Ray worker swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def quiet_third_party() -> None:
    """Silence third-party start-up chatter in this process and in the ones it starts.

    Only settings the user did not set already are changed.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure(level: int | str = logging.INFO) -> None:
    """Send rayalign's log records to stdout as bare lines; safe to call more than once."""
    quiet_third_party()
    for package in OUR_PACKAGES:
        logger = logging.getLogger(package)
        logger.setLevel(level)
        if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
            continue
        handler = _StdoutHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # Ray's and pytest's root handlers would print it twice
