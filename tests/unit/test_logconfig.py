"""-lc: DCMTK's log4cplus logger configuration."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from storescpd.config.settings import ConfigError
from storescpd.config.logconfig import check, load, root_level

DCMTK_STYLE = """\
# as /etc/dcmtk/logger.cfg
log4cplus.rootLogger = DEBUG, console, logfile
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.Threshold = INFO
log4cplus.appender.console.logToStderr = true
log4cplus.appender.logfile = log4cplus::FileAppender
log4cplus.appender.logfile.File = {log}
log4cplus.appender.logfile.Append = true
log4cplus.appender.logfile.layout = log4cplus::PatternLayout
log4cplus.appender.logfile.layout.ConversionPattern = %D{{%Y-%m-%d %H:%M:%S.%q}} %5p: %m%n
log4cplus.logger.dcmtk.apps.storescp.progress = INFO
"""


def test_dcmtk_style_file_logs_with_its_pattern(tmp_path: Path) -> None:
    cfg = tmp_path / "logger.cfg"
    cfg.write_text(DCMTK_STYLE.format(log=tmp_path / "storescpd.log"))
    assert check(str(cfg)) == []
    assert root_level(str(cfg)) == logging.DEBUG
    handlers = load(str(cfg))
    assert [type(h).__name__ for h in handlers] == ["StreamHandler", "FileHandler"]
    assert handlers[0].level == logging.INFO
    logger = logging.getLogger("test.logconfig")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    for h in handlers:
        logger.addHandler(h)
    try:
        logger.warning("storing DICOM file: %s", "/x/CT.1")
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
    line = (tmp_path / "storescpd.log").read_text()
    assert line.endswith(" WARN: storing DICOM file: /x/CT.1\n")
    assert line[:4].isdigit() and line[23] == " "  # 2026-12-01 20:29:19.008


@pytest.mark.parametrize("text,message", [
    ("log4cplus.appender.x = log4cplus::ConsoleAppender\n", "no log4cplus.rootLogger line"),
    ("log4cplus.rootLogger = LOUD, x\nlog4cplus.appender.x = log4cplus::ConsoleAppender\n", "unknown level 'LOUD'"),
    ("log4cplus.rootLogger = INFO, x\n", "appender 'x' is named by rootLogger but never defined"),
    ("log4cplus.rootLogger = INFO, x\nlog4cplus.appender.x = log4cplus::NTEventLogAppender\n", "is not supported"),
    ("log4cplus.rootLogger = INFO, x\nlog4cplus.appender.x = log4cplus::FileAppender\n", "has no .File"),
    ("log4cplus.rootLogger = INFO\nnonsense line\n", ":2: expected 'key = value'"),
])
def test_problems_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(text)
    problems = check(str(cfg))
    assert problems and message in problems[0] and str(cfg) in problems[0]
    with pytest.raises(ConfigError):
        load(str(cfg))
