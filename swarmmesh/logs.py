"""Logging setup for swarmmesh processes.

Only the CLI calls `configure`: library modules just use `logging.getLogger(__name__)`, so
that tests and embedding programs keep control of logging. Several nodes of one cluster
often write into the same terminal or collected log, so every line carries the node name
and pid to tell them apart.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from swarmmesh.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error", "critical")

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-8s %(node)s[%(process)d] %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class _StderrHandler(logging.StreamHandler):
    """Writes to the current `sys.stderr` at each event, not the one seen at setup.

    Test runners and daemonizing code swap `sys.stderr`; a handler bound to the old stream
    would write into a closed file.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignore: the stream is always the current stderr."""


class _NodeFilter(logging.Filter):
    """Stamps every record with the node name, including records of third-party loggers."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


def parse_level(level: str) -> int:
    """Turn a level name from a config file or the command line into a logging level."""
    name = str(level).strip().lower()
    if name not in LEVELS:
        raise ConfigError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    return logging.getLevelName(name.upper())


def configure(level: str, node: str | None = None) -> None:
    """Send all logging to stderr, one line per event, tagged with `node` and the pid.

    Calling it again replaces the previous setup instead of doubling every line.
    """
    numeric = parse_level(level)
    _skip_unused_fields()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_NodeFilter(node or "-"))
    root.addHandler(handler)
    root.setLevel(numeric)


def _skip_unused_fields() -> None:
    """FORMAT shows no source line, thread or multiprocessing name, so records need not look
    them up: the knobs the logging HOWTO's "Optimization" section lists. Finding the caller
    walks the stack on every call, and a drone logs a line per job, hundreds a second."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False

