"""The storescp-compatible command line, generated from the settings table."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, NoReturn, Sequence

from storescpd import __version__
from storescpd.config.settings import BY_NAME, NOT_YET, SETTINGS, ConfigError, Config, Flag, Setting
from storescpd.config.load import build, load_toml, unsupported_in_use

PROG = "storescpd"
EXIT_OK = 0
EXIT_USAGE = 1  # DCMTK's command line errors exit with 1
EXIT_CONFIG = 1


class UsageError(ConfigError):
    """A command line (or command file) that cannot be parsed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def _get_option_tuples(self, option_string: str) -> list[Any]:
        # No abbreviations and no joined short flags, as in DCMTK: "+a" is not "+ac", "-rn" not
        # "-rns", "-vd" not "-v -d" (argparse 3.11 matches single-prefix ones despite allow_abbrev).
        return []


class _StoreTagged(argparse.Action):
    """A value option whose flag carries a tag: stores ``[tag, *values]`` (e.g. -ss/-su)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        values = values if isinstance(values, list) else [values]
        setattr(namespace, self.dest, [self.const, *values])


class _Append(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        current = list(getattr(namespace, self.dest, None) or [])
        current.append(values)
        setattr(namespace, self.dest, current)


def _convert(setting: Setting, raw: str, spelling: str) -> Any:
    if setting.name == "log_level":
        return raw.lower()  # DCMTK's -ll takes INFO as well as info
    if setting.type is int:
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"invalid value for {spelling}: '{raw}' is not an integer") from None
    return raw


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, prefix_chars="-+", add_help=False, allow_abbrev=False)
    for setting in SETTINGS:
        for flag in setting.flags:
            _add_flag(parser, setting, flag)
    parser.add_argument("-h", "--help", action="store_true", dest="_help")
    parser.add_argument("--version", action="store_true", dest="_version")
    parser.add_argument("--arguments", action="store_true", dest="_arguments")
    parser.add_argument("--config", dest="_config", metavar="FILE")
    parser.add_argument("--check-config", action="store_true", dest="_check_config")
    parser.add_argument("--print-config", action="store_true", dest="_print_config")
    parser.add_argument("port", nargs="?", default=argparse.SUPPRESS)
    return parser


def _add_flag(parser: argparse.ArgumentParser, setting: Setting, flag: Flag) -> None:
    common: dict[str, Any] = {"dest": setting.name, "default": argparse.SUPPRESS}
    if flag.nargs == 0:
        parser.add_argument(*flag.spellings, action="store_const", const=flag.const, **common)
    elif setting.type is list and flag.nargs == 1 and flag.const is None:  # repeatable
        parser.add_argument(*flag.spellings, action=_Append, **common)
    elif flag.const is not None:
        parser.add_argument(*flag.spellings, action=_StoreTagged, const=flag.const,
                            nargs=flag.nargs if flag.nargs > 1 else None, **common)
    elif flag.nargs > 1:
        parser.add_argument(*flag.spellings, nargs=flag.nargs, **common)
    else:
        parser.add_argument(*flag.spellings, **common)


def expand_command_files(argv: Sequence[str]) -> list[str]:
    """Replace each ``@file`` argument by the file's words (double or single quotes group words,
    as in DCMTK; a file that is not UTF-8 is read as Latin-1)."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("@") and len(arg) > 1:
            try:
                with open(arg[1:], "rb") as fh:
                    raw = fh.read()
            except OSError as exc:
                raise UsageError(f"cannot open command file '{arg[1:]}': {exc.strerror}") from None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            for double, single, word in re.findall(r'"([^"]*)"|\'([^\']*)\'|(\S+)', text):
                if word.startswith("@"):
                    raise UsageError(f"command file '{arg[1:]}' cannot contain another command file ({word})")
                out.append(word or double or single)
        else:
            out.append(arg)
    return out


_LOG_SWITCHES = {"-q", "--quiet", "-v", "--verbose", "-d", "--debug"}


def _log_option_conflicts(argv: Sequence[str]) -> None:
    """DCMTK's: -ll and -lc exclude -q, -v and -d (they would set the level twice)."""
    if not _LOG_SWITCHES.intersection(argv):
        return
    for spellings, name in ((("-ll", "--log-level"), "--log-level"), (("-lc", "--log-config"), "--log-config")):
        if any(s in argv for s in spellings):
            raise UsageError(f"{name} not allowed with --verbose, --debug or --quiet")


def parse(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (setting values given on the command line, storescpd's own control options)."""
    _log_option_conflicts(argv)
    ns = vars(make_parser().parse_args(list(argv)))
    control = {k: ns.pop(k) for k in list(ns) if k.startswith("_")}
    values: dict[str, Any] = {}
    for name, raw in ns.items():
        if name == "port":
            values["port"] = _convert(BY_NAME["port"], raw, "port")
            continue
        setting = BY_NAME[name]
        values[name] = _convert_value(setting, raw)
    return values, control


def _convert_value(setting: Setting, raw: Any) -> Any:
    spelling = setting.flags[0].spellings[-1] if setting.flags else setting.name
    if isinstance(raw, str):
        return _convert(setting, raw, spelling)
    if isinstance(raw, list) and setting.name == "padding":
        return [_convert(BY_NAME["compression_level"], r, spelling) for r in raw]
    return raw


HELP_COLUMN = 33  # DCMTK's: descriptions start in this column


def help_text() -> str:
    """The options grouped and laid out as DCMTK's ``storescp -h`` prints them."""
    lines = [
        f"{PROG}: DICOM storage (C-STORE) SCP daemon, a drop-in for DCMTK's storescp",
        f"usage: {PROG} [options] [port]",
        "",
        "parameters:",
        f"  {'port':<{HELP_COLUMN - 2}}tcp/ip port number to listen on",
        "",
        "general options:",
        *_help_row("  ", "-h", "--help", ["print this help text and exit"]),
        *_help_row("  ", None, "--version", ["print version information and exit"]),
        *_help_row("  ", None, "--arguments", ["print expanded command line arguments"]),
        *_help_row("  ", None, "--config", ["[f]ilename: string", "read settings from TOML file f"]),
        *_help_row("  ", None, "--check-config", ["validate the configuration, print the verdict and exit"]),
        *_help_row("  ", None, "--print-config", ["print the effective configuration as TOML and exit"]),
    ]
    group = None
    subgroup = None
    for setting in SETTINGS:
        for flag in setting.flags:
            if setting.group != group:
                group = setting.group
                subgroup = None
                if group != "general options":
                    lines.append(f"{group}:")
            if flag.subgroup and flag.subgroup != subgroup:
                subgroup = flag.subgroup
                lines.append(f"  {subgroup}")
            lines.extend(_flag_help(flag))
    return "\n".join(lines) + "\n"


def _flag_help(flag: Flag) -> list[str]:
    text = ([", ".join(flag.metavar)] if flag.metavar else []) + flag.help.split("\n")
    if flag.status == NOT_YET:
        text[-1] += "  [not supported yet]"
    return _help_row("    " if flag.subgroup else "  ", flag.short, flag.long, text)


def _help_row(indent: str, short: str | None, long: str | None, text: list[str]) -> list[str]:
    head = f"{indent}{short or '':<{8 - len(indent) + 2}}{long or ''}"
    if len(head) >= HELP_COLUMN - 1:
        return [head] + [" " * HELP_COLUMN + t for t in text]
    return [f"{head:<{HELP_COLUMN}}{text[0]}"] + [" " * HELP_COLUMN + t for t in text[1:]]


def version_text() -> str:
    import pydicom
    import pynetdicom

    return (
        f"{PROG} v{__version__}\n"
        f"(DCMTK storescp 3.6.7 command line compatible)\n"
        f"libraries: pynetdicom {pynetdicom.__version__}, pydicom {pydicom.__version__}, "
        f"Python {sys.version.split()[0]}\n"
    )


def load_config(argv: Sequence[str]) -> tuple[Config, dict[str, Any]]:
    """The effective configuration for a command line (reads --config if given)."""
    args = expand_command_files(argv)
    cli_values, control = parse(args)
    control["_expanded"] = args
    file_values = load_toml(control["_config"]) if control.get("_config") else {}
    if cli_values.get("tls_list_ciphers"):
        control["_list_ciphers"] = True  # +cc: list and exit, needs no port (as in DCMTK)
    if control.get("_help") or control.get("_version") or control.get("_list_ciphers"):
        return Config({}), control
    unsupported = unsupported_in_use({**file_values, **cli_values})
    if unsupported:
        raise ConfigError(
            "option not supported yet by this version of storescpd: "
            + ", ".join(unsupported)
            + " (remove it; see docs/options.md for the status of every option)"
        )
    return build(file_values, cli_values, control.get("_config")), control
