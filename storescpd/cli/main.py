"""The ``storescpd`` command: argv to a checked configuration, then the process mode that serves it."""

from __future__ import annotations

import sys
from typing import Sequence

from storescpd.cli.run import run
from storescpd.config.cmdline import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    UsageError,
    help_text,
    load_config,
    version_text,
)
from storescpd.config.logs import setup_logging
from storescpd.config.settings import ConfigError
from storescpd.config.load import to_toml
from storescpd.control.ctl import main as ctl_main
from storescpd.dicom.tls import list_ciphers


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # as DCMTK's storescp: no arguments at all prints the help
        argv = ["--help"]
    setup_logging("warn")  # until the configuration names its level: warnings while reading it
    if argv[:1] == ["ctl"]:  # the client of a running daemon's API, not a storescp option
        return ctl_main(argv[1:])
    if argv[:1] == ["journal"]:  # the receipt journal's tools
        return journal_main(argv[1:])
    try:
        config, control = load_config(argv)
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: {exc}\nType '{PROG} -h' for the options.\n")
        return EXIT_USAGE
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_CONFIG
    if control.get("_help"):
        sys.stdout.write(help_text())
        return EXIT_OK
    if control.get("_version"):
        sys.stdout.write(version_text())
        return EXIT_OK
    if control.get("_list_ciphers"):
        sys.stdout.write(list_ciphers())
        return EXIT_OK
    if control.get("_arguments"):  # as DCMTK: print the expanded arguments, then go on running
        expanded = control["_expanded"]
        quoted = "".join(f"'{a}' " for a in expanded)
        sys.stderr.write(f"I: calling '{PROG}' with {len(expanded)} arguments: {quoted}\nI: \n")
    if control.get("_check_config"):
        sys.stdout.write(f"configuration OK{' (' + config.source_file + ')' if config.source_file else ''}\n")
        return EXIT_OK
    if control.get("_print_config"):
        sys.stdout.write(to_toml(config))
        return EXIT_OK
    setup_logging(config.log_level, config.log_config)
    return run(config, argv)


JOURNAL_USAGE = f"""usage: {PROG} journal rebuild [--replace] [--config FILE] [--journal FILE] [-od DIR]
                               [--journal-digest sha256]

Make a receipt for every DICOM file under the output directory that no receipt names yet
(after a power loss, or for a tree DCMTK's storescp wrote); --replace removes every receipt
first. The journal, output directory and digest come from the same options and configuration
file as the daemon's; run it as the daemon's user (sudo -u storescpd ...).
"""


def journal_main(argv: list[str]) -> int:
    """``storescpd journal rebuild``."""
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(JOURNAL_USAGE)
        return EXIT_OK
    if argv[:1] != ["rebuild"]:
        sys.stderr.write(JOURNAL_USAGE)
        return EXIT_USAGE
    options = argv[1:]
    replace = "--replace" in options
    try:
        config, _control = load_config([a for a in options if a != "--replace"])
    except ConfigError as exc:  # UsageError among them
        sys.stderr.write(f"{PROG} journal rebuild: {exc}\n")
        return EXIT_CONFIG
    if not config.journal:
        sys.stderr.write(f"{PROG} journal rebuild: no journal: pass --journal FILE, or --config FILE with journal "
                         "set\n")
        return EXIT_CONFIG
    setup_logging(config.log_level, config.log_config)
    # Imported here: the daemon itself never needs them in this process.
    import sqlite3

    from storescpd.store.journal_db import JournalUnavailable
    from storescpd.store.journal_rebuild import rebuild

    try:
        result = rebuild(config.journal, config.output_directory, digest=config.journal_digest == "sha256",
                         replace=replace)
    except (OSError, sqlite3.Error, JournalUnavailable) as exc:
        sys.stderr.write(f"{PROG} journal rebuild: cannot write the journal {config.journal}: {exc}\n")
        return EXIT_CONFIG
    sys.stdout.write(f"{config.journal}: {result.added} receipts added from {result.files} files under "
                     f"{config.output_directory} ({result.known} already in the journal, {result.skipped} not "
                     "DICOM objects)\n")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
