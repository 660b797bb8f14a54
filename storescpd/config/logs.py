"""stderr logging in DCMTK's style ("W: message"); journald adds time and pid."""

from __future__ import annotations

import logging
import sys

LEVELS = {
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG - 5,
}
_LETTERS = {logging.CRITICAL: "F", logging.ERROR: "E", logging.WARNING: "W", logging.INFO: "I",
            logging.DEBUG: "D", logging.DEBUG - 5: "T"}


class _DcmtkFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.letter = _LETTERS.get(record.levelno, "I")
        return super().format(record)


def setup_logging(level: str, log_config: str | None = None) -> None:
    """stderr in DCMTK's style; with -lc, the handlers and level of DCMTK's logger configuration."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_config:
        from storescpd.config.logconfig import load, root_level

        for handler in load(log_config):
            root.addHandler(handler)
        numeric = root_level(log_config)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_DcmtkFormatter("%(letter)s: %(message)s"))
        root.addHandler(handler)
        numeric = LEVELS[level]
    root.setLevel(numeric)
    # pynetdicom is chatty at info; its details belong to debug, as DCMTK's network layer's do.
    logging.getLogger("pynetdicom").setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
