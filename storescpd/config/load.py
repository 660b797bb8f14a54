"""Loading a configuration: the TOML file, checks of every value and combination, ``--print-config``.

``python -m storescpd.config.load > etc/storescpd.toml`` writes the documented defaults.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from storescpd.config import api_address, logconfig
from storescpd.config.settings import BY_NAME, NOT_YET, SETTINGS, Config, ConfigError, Flag, Setting, defaults
from storescpd.dicom import asconfig, tls


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML configuration; unknown keys and wrong types are errors naming the key."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    for key in data:
        setting = BY_NAME.get(key)
        if setting is None or not setting.in_file:
            raise ConfigError(f"{path}: unknown key '{key}' (see storescpd --print-config for the valid keys)")
    values = {key: _coerce(BY_NAME[key], value, f"{path}: key '{key}'") for key, value in data.items()}
    return _read_aliases(values)


def _read_aliases(values: dict[str, Any]) -> dict[str, Any]:
    """Values of earlier versions that are spelled differently now, read as they meant."""
    if values.get("filenames") == "timenames":  # -tn was a third file name mode before
        values = {**values, "filenames": "default", "timenames": True}
    return values


def _coerce(setting: Setting, value: Any, where: str) -> Any:
    if value is None:
        return None
    if setting.type is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    if setting.type is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} must be an integer, not {value!r}")
    if setting.type is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}")
    if setting.type is list and not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, not {value!r}")
    return value


def validate(values: dict[str, Any], given: frozenset[str] = frozenset()) -> list[str]:
    """Every problem of a configuration, each a sentence that says what to fix."""
    problems: list[str] = []
    for s in SETTINGS:
        v = values.get(s.name)
        if v is None:
            continue
        if s.choices is not None and v not in s.choices:
            problems.append(f"{s.name} must be one of {', '.join(map(str, s.choices))}, not {v!r}")
        if s.minimum is not None and isinstance(v, int) and v < s.minimum:
            problems.append(f"{s.name} must be at least {s.minimum}, not {v}")
        if s.maximum is not None and isinstance(v, int) and v > s.maximum:
            problems.append(f"{s.name} must be at most {s.maximum}, not {v}")
        if s.check is not None:
            reason = s.check(v)
            if reason:
                problems.append(f"{s.name} {reason}")
    problems.extend(_check_combinations(values, given))
    return problems


def _long_spelling(name: str, value: Any) -> str:
    """The long option that sets ``name`` to ``value`` (DCMTK names options by it in errors)."""
    for flag in BY_NAME[name].flags:
        if flag.nargs or flag.const == value:
            return flag.long or flag.short or name
    return name


# Network preferences after which DCMTK refuses to re-encode (compressed transmission).
_UNCOMPRESSED_PREFERENCES = ("uncompressed", "little", "big", "implicit", "deflated")
_SORT_SPELLINGS = {"concurrent": "--sort-conc-studies", "studyuid": "--sort-on-study-uid",
                   "patientname": "--sort-on-patientname"}


def _output_conflicts(v: dict[str, Any], given: frozenset[str]) -> list[str]:
    """The output and negotiation combinations DCMTK storescp 3.6.7 refuses, in its words.

    DCMTK refuses an option of these blocks as soon as it is given, even with its default value
    (``+B +g=``), so settings named on the command line count as well as changed ones.
    """
    problems = []

    def used(name: str) -> bool:
        return name in given or v.get(name) != BY_NAME[name].default

    preference = v.get("transfer_syntaxes", "uncompressed")
    if v.get("config_file") and v.get("promiscuous"):
        problems.append("--config-file not allowed with --promiscuous")
    if v.get("config_file") and preference != "uncompressed":
        problems.append(f"--config-file not allowed with {_long_spelling('transfer_syntaxes', preference)}")
    xfer = v.get("write_transfer_syntax", "same")
    if xfer != "same":
        if v.get("bit_preserving"):
            problems.append(f"{_long_spelling('write_transfer_syntax', xfer)} not allowed with --bit-preserving")
        if preference not in _UNCOMPRESSED_PREFERENCES:
            problems.append(f"{_long_spelling('write_transfer_syntax', xfer)} not allowed with "
                            f"{_long_spelling('transfer_syntaxes', preference)}")
    if v.get("bit_preserving"):
        for name in ("new_vr", "group_length", "length_encoding"):
            if used(name):
                problems.append(f"{_long_spelling(name, v.get(name))} not allowed with --bit-preserving")
        if v.get("padding"):
            problems.append("--padding-create not allowed with --bit-preserving")
        if v.get("sort"):
            problems.append(f"{_SORT_SPELLINGS.get(v['sort'][0], '--sort-*')} not allowed with --bit-preserving")
    if v.get("padding") and not v.get("write_file_format", True):
        problems.append("--padding-create not allowed with --write-dataset")
    if v.get("timenames") and v.get("filenames") == "unique":
        problems.append("--timenames not allowed with --unique-filenames")
    for pad in v.get("padding") or []:
        if isinstance(pad, int) and pad < 0:
            problems.append(f"Invalid value for option --padding-create ({pad})")
    if "dimse_timeout" in given and v.get("dimse_timeout", 0) < 1:  # in a TOML file 0 is 'unlimited'
        problems.append(f"Invalid value for option --dimse-timeout (underflow: {v.get('dimse_timeout')})")
    if "verbose_pc" in given and v.get("verbose_pc") and v.get("log_level") not in ("info", "debug", "trace"):
        problems.append("--verbose-pc only allowed with verbose mode")
    if used("compression_level") and xfer not in ("deflated", "same"):
        problems.append("--compression-level only allowed with --write-xfer-deflated or --write-xfer-same")
    return problems


def _event_conflicts(v: dict[str, Any], given: frozenset[str]) -> list[str]:
    """DCMTK storescp 3.6.7's dependencies of the event options, in its words. Its refusal of
    --exec-on-eostudy and --rename-on-eostudy with --fork is lifted: the supervisor tracks
    studies across processes (docs/hooks.md). As DCMTK, a given -tos counts even at 0."""
    problems = []
    sorts = "--sort-conc-studies, --sort-on-study-uid or --sort-on-patientname"
    for name, option in (("exec_on_eostudy", "--exec-on-eostudy"), ("rename_on_eostudy", "--rename-on-eostudy")):
        if v.get(name) and not v.get("sort"):
            problems.append(f"{option} only allowed with {sorts}")
    timeout_given = "eostudy_timeout" in given or v.get("eostudy_timeout")
    if timeout_given and not (v.get("sort") or v.get("exec_on_eostudy") or v.get("rename_on_eostudy")):
        problems.append("--eostudy-timeout only allowed with --sort-conc-studies, --sort-on-study-uid, "
                        "--sort-on-patientname, --exec-on-eostudy or --rename-on-eostudy")
    return problems


def _check_combinations(v: dict[str, Any], given: frozenset[str] = frozenset()) -> list[str]:
    problems = []
    if v.get("inetd") and v.get("process_mode") == "fork":
        problems.append("--inetd cannot be combined with --fork")
    problems.extend(_output_conflicts(v, given))
    if v.get("log_config"):
        problems.extend(logconfig.check(v["log_config"]))  # DCMTK's log4cplus format, as /etc/dcmtk/logger.cfg
    if v.get("config_file") and not problems:
        try:  # the profile is part of the configuration: reload checks it
            asconfig.load_profile(*v["config_file"])
        except asconfig.ProfileError as exc:
            problems.append(str(exc))
    problems.extend(_event_conflicts(v, given))
    problems.extend(tls.validate(v))
    problems.extend(api_address.api_problems(v))
    out = v.get("output_directory")
    if out == "":
        problems.append("output directory is empty: name a directory with -od (\".\" for the current one)")
    if out and not v.get("ignore"):
        if not os.path.isdir(out):
            problems.append(f"output directory {out} does not exist: create it or set another with -od")
        elif not os.access(out, os.W_OK | os.X_OK):
            problems.append(f"output directory {out} is not writable by this user: fix its mode or owner")
    return problems


def build(file_values: dict[str, Any], cli_values: dict[str, Any], source_file: str | None) -> Config:
    """Defaults, then the file, then the command line; raises ConfigError listing every problem."""
    values = {**defaults(), **file_values, **cli_values}
    problems = validate(values, frozenset(cli_values))
    if problems:
        where = f" ({source_file})" if source_file else ""
        raise ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(problems))
    # `explicit`: what the command line names (storescp's options mean something even at their
    # default); a configuration file only states values.
    return Config(values, source_file, frozenset(cli_values))


def unsupported_in_use(values: dict[str, Any]) -> list[str]:
    """Spellings of options set to a value this version cannot honour yet."""
    found = []
    for s in SETTINGS:
        for f in s.flags:
            if f.status != NOT_YET:
                continue
            v = values.get(s.name)
            if f.nargs == 0 and v == f.const and v != s.default:
                found.append(f.short or f.long)
            elif f.nargs and v not in (None, [], s.default) and _set_by_value_flag(s, f, v):
                found.append(f.short or f.long)
    return sorted(set(found))


def _set_by_value_flag(s: Setting, f: Flag, v: Any) -> bool:
    # A value flag with a const stores [const, *values]: it is in use when the tag matches.
    if f.const is not None:
        return isinstance(v, list) and bool(v) and v[0] == f.const
    return True


def to_toml(config: Config) -> str:
    """The effective configuration as a TOML document (``--print-config``)."""
    return _toml_document(["# storescpd effective configuration"], config.values, commented=False)


def _toml_document(header: list[str], values: dict[str, Any], commented: bool) -> str:
    """Every file setting grouped like the manual, with its help; `commented` comments each key out."""
    lines = list(header)
    group = None
    for s in SETTINGS:
        if not s.in_file:
            continue
        if s.group != group:
            group = s.group
            lines.append(f"\n# ---- {group} ----")
        flags = ", ".join(sp for f in s.flags for sp in f.spellings)
        lines.append(f"\n# {s.help}" + (f"  [{flags}]" if flags else ""))
        if s.choices:
            lines.append(f"# one of: {', '.join(map(str, s.choices))}")
        value = values.get(s.name)
        key = f"{s.name} = {_toml_value(value)}" if value is not None else f"# {s.name} = (unset)"
        lines.append(f"# {key}" if commented and value is not None else key)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def documented_defaults() -> str:
    """etc/storescpd.toml: every key, commented out at its default, with its help and flags."""
    header = [
        "# storescpd configuration. Every key is shown at its default, commented out.",
        "# Keys are the settings of `storescpd -h`; the command line overrides this file.",
        "# Regenerate with: python -m storescpd.config.load > etc/storescpd.toml",
    ]
    return _toml_document(header, defaults(), commented=True)


if __name__ == "__main__":  # pragma: no cover
    print(documented_defaults(), end="")
