"""-lc: DCMTK's logger configuration (log4cplus properties, e.g. /etc/dcmtk/logger.cfg) on Python logging.

Supported: ``log4cplus.rootLogger = LEVEL, appender...``; appenders ConsoleAppender (logToStderr),
FileAppender (File, Append), RollingFileAppender (File, MaxFileSize, MaxBackupIndex),
DailyRollingFileAppender (File, Schedule) and SysLogAppender (Facility); per-appender Threshold;
PatternLayout's ConversionPattern with %D{...}/%d{...} (strftime, %q = milliseconds), %p, %m, %n,
%c, %i (pid), %t (thread) and widths like %5p. ``${appname}`` is "storescpd". DCMTK's module
loggers (``log4cplus.logger.dcmtk....``) name DCMTK's internals and are ignored. Anything else is
an error that names the file and line, so that a configuration never half-applies.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from pathlib import Path

from storescpd.config.settings import ConfigError

LEVELS = {"TRACE": logging.DEBUG - 5, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
          "ERROR": logging.ERROR, "FATAL": logging.CRITICAL, "OFF": logging.CRITICAL + 10,
          "ALL": logging.DEBUG - 5}
_PREFIX = "log4cplus."
_TOKEN = re.compile(r"%(-?\d+)?([pmncitdD])(\{([^}]*)\})?|%%")
_SIZE = re.compile(r"^(\d+)\s*(KB|MB|GB)?$", re.I)


_LOG4_NAMES = {logging.CRITICAL: "FATAL", logging.ERROR: "ERROR", logging.WARNING: "WARN", logging.INFO: "INFO",
               logging.DEBUG: "DEBUG", logging.DEBUG - 5: "TRACE"}


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, datefmt: str | None) -> None:
        super().__init__(fmt)
        self.log4_datefmt = datefmt

    def format(self, record: logging.LogRecord) -> str:
        record.log4level = _LOG4_NAMES.get(record.levelno, record.levelname)
        return super().format(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        import time

        fmt = (self.log4_datefmt or "%Y-%m-%d %H:%M:%S").replace("%q", f"{int(record.msecs):03d}")
        return time.strftime(fmt, time.localtime(record.created))


def _formatter(pattern: str) -> _Formatter:
    """A PatternLayout ConversionPattern as a logging format (literal text keeps its '%' escaped)."""
    pieces: list[str] = []
    datefmt: str | None = None
    position = 0
    for m in _TOKEN.finditer(pattern):
        pieces.append(pattern[position:m.start()].replace("%", "%%"))
        position = m.end()
        width, kind, argument = m.group(1) or "", m.group(2), m.group(4)
        if m.group(0) == "%%":
            pieces.append("%%")
        elif kind in "dD":
            datefmt = argument or "%Y-%m-%d %H:%M:%S"
            pieces.append("%(asctime)s")
        elif kind != "n":
            name = {"p": "log4level", "m": "message", "c": "name", "i": "process", "t": "threadName"}[kind]
            pieces.append(f"%({name}){width}s")
    pieces.append(pattern[position:].replace("%", "%%"))
    return _Formatter("".join(pieces), datefmt)


def _properties(path: str) -> dict[str, tuple[int, str]]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read logger configuration {path}: {exc.strerror}") from None
    found: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        if "=" not in line:
            raise ConfigError(f"{path}:{number}: expected 'key = value'")
        key, value = (part.strip() for part in line.split("=", 1))
        found[key] = (number, value.replace("${appname}", "storescpd"))
    return found


def check(path: str) -> list[str]:
    """Problems of a logger configuration, without opening any file it names."""
    try:
        load(path, dry_run=True)
    except ConfigError as exc:
        return [str(exc)]
    return []


def root_level(path: str) -> int:
    number, value = _properties(path)[_PREFIX + "rootLogger"]
    return LEVELS[value.split(",")[0].strip().upper()]


def load(path: str, dry_run: bool = False) -> list[logging.Handler]:
    """Handlers for the root logger as the file describes them; ConfigError names file and line."""
    props = _properties(path)
    handlers: list[logging.Handler] = []
    root = props.get(_PREFIX + "rootLogger")
    if root is None:
        raise ConfigError(f"{path}: no log4cplus.rootLogger line (e.g. 'log4cplus.rootLogger = INFO, console')")
    number, value = root
    level_name, *appenders = [p.strip() for p in value.split(",")]
    if level_name.upper() not in LEVELS:
        raise ConfigError(f"{path}:{number}: unknown level {level_name!r} (one of {', '.join(LEVELS)})")
    for key, (line, _value) in props.items():
        known = key == _PREFIX + "rootLogger" or key.startswith(_PREFIX + "appender.") \
            or key.startswith(_PREFIX + "logger.dcmtk")
        if not known:
            raise ConfigError(f"{path}:{line}: {key} is not supported by storescpd's -lc")
    for name in filter(None, appenders):
        handler = _appender(path, props, name, dry_run)
        handler.setLevel(LEVELS[level_name.upper()])
        threshold = props.get(f"{_PREFIX}appender.{name}.Threshold")
        if threshold:
            if threshold[1].upper() not in LEVELS:
                raise ConfigError(f"{path}:{threshold[0]}: unknown level {threshold[1]!r}")
            handler.setLevel(max(LEVELS[threshold[1].upper()], LEVELS[level_name.upper()]))
        pattern = props.get(f"{_PREFIX}appender.{name}.layout.ConversionPattern")
        handler.setFormatter(_formatter(pattern[1]) if pattern else logging.Formatter("%(levelname)s: %(message)s"))
        handlers.append(handler)
    return handlers


def _appender(path: str, props: dict[str, tuple[int, str]], name: str, dry_run: bool) -> logging.Handler:
    def get(option: str, default: str | None = None) -> str | None:
        item = props.get(f"{_PREFIX}appender.{name}.{option}")
        return item[1] if item else default

    entry = props.get(f"{_PREFIX}appender.{name}")
    if entry is None:
        raise ConfigError(f"{path}: appender {name!r} is named by rootLogger but never defined")
    line, kind = entry
    kind = kind.split("::")[-1]
    try:
        if dry_run and kind in ("ConsoleAppender", "FileAppender", "RollingFileAppender",
                                "DailyRollingFileAppender", "SysLogAppender"):
            if kind.endswith("FileAppender") and not get("File"):
                raise ConfigError(f"{path}:{line}: appender {name} has no .File")
            return logging.NullHandler()
        if kind == "ConsoleAppender":
            to_stderr = (get("logToStderr", "false") or "").lower() == "true"
            return logging.StreamHandler(sys.stderr if to_stderr else sys.stdout)
        if kind in ("FileAppender", "RollingFileAppender", "DailyRollingFileAppender"):
            filename = get("File")
            if not filename:
                raise ConfigError(f"{path}:{line}: appender {name} has no .File")
            mode = "a" if (get("Append", "true") or "").lower() == "true" else "w"
            if kind == "FileAppender":
                return logging.FileHandler(filename, mode=mode)
            if kind == "RollingFileAppender":
                return logging.handlers.RotatingFileHandler(filename, mode=mode, maxBytes=_size(get("MaxFileSize", "10MB")),
                                                            backupCount=int(get("MaxBackupIndex", "1") or 1))
            when = {"MONTHLY": "midnight", "WEEKLY": "W0", "DAILY": "midnight", "TWICE_DAILY": "H",
                    "HOURLY": "H", "MINUTELY": "M"}.get((get("Schedule", "DAILY") or "DAILY").upper(), "midnight")
            return logging.handlers.TimedRotatingFileHandler(filename, when=when)
        if kind == "SysLogAppender":
            facility = (get("facility") or get("Facility") or "user").lower()
            return logging.handlers.SysLogHandler("/dev/log", facility=facility)
    except OSError as exc:
        raise ConfigError(f"{path}:{line}: appender {name}: {exc.strerror or exc}") from None
    raise ConfigError(f"{path}:{line}: appender type {kind!r} is not supported by storescpd's -lc")


def _size(text: str | None) -> int:
    m = _SIZE.match((text or "").strip())
    if not m:
        return 10 << 20
    return int(m.group(1)) * {None: 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[(m.group(2) or "").upper() or None]
