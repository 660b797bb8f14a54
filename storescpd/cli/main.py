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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
