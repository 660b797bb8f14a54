"""docs/options.md, generated from the settings table: ``python -m storescpd.config.docs > docs/options.md``.

tests/unit/test_docs.py keeps the committed file equal to this output.
"""

from __future__ import annotations

import re
import sys
from itertools import groupby

from storescpd.config.settings import NOT_YET, SETTINGS, Flag, Setting
from storescpd.config.load import _toml_value

HEADER = """# storescpd options

Generated from the settings table (`storescpd/config/settings.py`) by `python -m storescpd.config.docs`; do not
edit by hand. Every DCMTK `storescp` 3.6.7 option is listed with its status in this version:
**supported** (implemented; the output and negotiation options are checked side by side with
DCMTK in tests/integration/test_differential.py) or **not supported yet** (storescpd refuses to
start with it rather than silently ignore it).
The TOML key is the name to use in `/etc/storescpd/storescpd.toml`.
"""

NOTES = """
## Output encoding: what storescpd writes, compared with DCMTK

- Without an output encoding option, storescpd writes the data set **exactly as
  received**, streamed to disk with flat memory whatever the object's size. DCMTK's default
  normal mode (`-B`) instead decodes the object in memory and writes it again. The two agree
  byte for byte whenever the sender already encodes as DCMTK does (DCMTK's `storescu`, and any
  sender using explicit lengths, correct group lengths and no trailing padding). For other
  senders DCMTK's file differs in encoding only, never in content: undefined-length sequences and
  items become explicit-length, group length elements (gggg,0000) get their correct value, and a
  received data set trailing padding element (FFFC,FFFC) is dropped. The data sets are equal
  element by element. Use `+B` to say "as received" explicitly (DCMTK then also writes the raw
  bytes), or name any output encoding option to have storescpd re-encode as DCMTK does.
- An output encoding option named on the command line, even at its default value, asks for
  re-encoding: `+t=` `+te` `+tb` `+ti` `+td`, `+u` `-u`, `+g=` `+g` `-g`, `+e` `-e`, `-p` `+p`,
  `-uc` `+uc`, `+cl`. So `storescpd +e` writes explicit lengths as `storescp +e` does. storescpd
  then decodes the received object and writes it again as DCMTK would; the written bytes after
  the file meta are DCMTK's. This path holds one object in memory, as DCMTK's normal mode does.
  In the configuration file (TOML keys `write_transfer_syntax`, `new_vr`, `group_length`,
  `length_encoding`, `padding`, `convert_un`, `compression_level`) only a value other than the
  default re-encodes: a file from `--print-config` lists every key at its default and must not
  turn a streaming receiver into one that holds each object in memory.
- `+p f i` pads the *whole file* to a multiple of f bytes; the file meta of storescpd names its own
  implementation, so its length and therefore the trailing padding element differ from DCMTK's.
- The file meta names storescpd (Implementation Class UID and Version Name); every other
  element equals DCMTK's.
- `-xf FILE PROFILE` reads DCMTK's association negotiation profile format (asconfig.txt):
  supersections `[[TransferSyntaxes]]`, `[[PresentationContexts]]`, `[[Profiles]]` and the
  optional `[[SCPSCURoleSelection]]` and `[[ExtendedNegotiation]]`. `etc/storescp.cfg` carries
  the profiles of DCMTK's storescp.cfg (`Default`, `AllDICOM`). A file DCMTK would refuse is
  refused with the file, the line and the problem; on reload the running configuration stays.
"""


def _spelling(flag: Flag) -> str:
    names = " ".join(f"`{s}`" for s in flag.spellings)
    if flag.metavar:
        names += " " + " ".join(m.split(":")[0] for m in flag.metavar)
    return names


def _row(setting: Setting, flag: Flag) -> str:
    help_text = flag.help.replace("\n", " ").replace("|", "\\|")
    status = "not supported yet" if flag.status == NOT_YET else "supported"
    key = f"`{setting.name}`" if setting.in_file else f"`{setting.name}` (command line only)"
    return f"| {_spelling(flag)} | {help_text} | {key} | {status} |"


def render() -> str:
    lines = [HEADER]
    group = None
    for setting in SETTINGS:
        if setting.group != group:
            group = setting.group
            lines += ["", f"## {group[0].upper()}{group[1:]}", "", "| option | meaning | TOML key | status |",
                      "|---|---|---|---|"]
        if setting.flags:
            lines += [_row(setting, flag) for flag in setting.flags]
        else:
            lines.append(f"| (positional) | {setting.help} | `{setting.name}` | supported |")
    lines.append(NOTES)
    return "\n".join(lines).rstrip("\n") + "\n"


MAN_CONFIGURATION_INTRO = r"""The service reads
.IR /etc/storescpd/storescpd.toml ;
.B storescpd \-\-config
.I FILE
reads any file of the same form. It is TOML: every key below is optional and has the default
shown, a key not listed here is an error, and options given on the command line override the
file.
.B storescpd \-\-check\-config
validates a file,
.B storescpd \-\-print\-config
prints the effective configuration in this form, and
.B systemctl reload storescpd
applies a changed file except the keys marked as needing a restart.
A default of
.I unset
means the key is left out.
Each key lists the storescp options that set it and the value each one stores.
"""


def _roff_code(text: str) -> str:
    """Something a person types (value, option): ASCII minus signs, never hyphenated at a line end."""
    return "\\%" + text.replace("\\", "\\e").replace("-", "\\-")


def _roff_prose(text: str) -> str:
    """Help text: option spellings (a hyphen not inside a word) get minus signs, words keep hyphens."""
    return re.sub(r"(?<!\w)-", r"\\-", text.replace("\\", "\\e").replace("\n", " "))


def _roff_text(line: str) -> str:
    # A text line starting with "." or "'" would be a roff request; "[" or "/" would be read by
    # help2man as a section name or a pattern in its --include file.
    return f"\\&{line}" if line[:1] in (".", "'", "[", "/") else line


def _man_type(setting: Setting) -> str:
    return {bool: "true or false", int: "integer", list: "array"}.get(setting.type, "string")


def _man_values(setting: Setting) -> str | None:
    """The values the key accepts, when the type alone does not say."""
    if setting.choices:
        return "one of " + ", ".join(_roff_code(_toml_value(c)) for c in setting.choices)
    if setting.minimum is not None and setting.maximum is not None:
        return f"{setting.minimum} to {setting.maximum}"
    if setting.minimum is not None:
        return f"at least {setting.minimum}"
    return None


def _man_flag(setting: Setting, flag: Flag) -> str:
    """``-ll, --log-level level`` and, unless it is just the argument, what it stores as TOML."""
    spelled = ",\\ ".join(f"\\fB{_roff_code(s)}\\fR" for s in flag.spellings)
    # "[p]rivate key file: string" -> private-key-file: one word per argument.
    typed = ["\\fI\\%" + re.sub(r"\[(.)\]", r"\1", m.split(":")[0]).replace(" ", "-") + "\\fR"
             for m in flag.metavar]
    if not flag.nargs:
        stored = _roff_code("unset" if flag.const is None else _toml_value(flag.const))
    elif setting.type is list and flag.nargs == 1 and flag.const is None:
        stored = "[..., " + typed[0] + "] (repeatable, one element each)"
    elif flag.const is not None:
        stored = _roff_code(f"[{_toml_value(flag.const)}, ") + ", ".join(typed) + "]"
    elif setting.type is list and flag.nargs > 1:
        stored = "[" + ", ".join(typed) + "]"
    else:
        stored = ""
    # Unpaddable spaces keep "-q, --quiet = value" on one line.
    spelled = " ".join([spelled, *typed]) + (f"\\ =\\ {stored}" if stored else "")
    return spelled + (" (not supported yet)" if flag.status == NOT_YET else "")


def _man_flags(setting: Setting) -> str:
    if not setting.flags:
        return f"the positional \\fI{setting.name}\\fR argument"
    return "; ".join(_man_flag(setting, flag) for flag in setting.flags)


def _man_setting(setting: Setting) -> list[str]:
    default = "unset" if setting.default is None else _toml_value(setting.default)
    values = _man_values(setting)
    lines = [".TP", f"\\fB{setting.name}\\fR = \\fI{_man_type(setting)}\\fR",
             _roff_text(_roff_prose(setting.help) + "."),
             *([".br", f"Values: {values}."] if values else []),
             ".br", f"Default: {_roff_code(default)}.",
             ".br", f"Command line: {_man_flags(setting)}."]
    if not setting.reloadable:
        lines += [".br", "A change needs a restart: a reload keeps the running value."]
    return lines


def man_configuration_section() -> str:
    """The CONFIGURATION FILE section of storescpd(8), as a help2man ``--include`` file.

    One entry per TOML key of the settings table, grouped as ``storescpd --help`` groups them:
    its type or choices, default, the command-line options that set it and its help.
    packaging/debian/make-manpage adds it to the help2man page at package build time.
    """
    # Left-adjusted: justified, the long option lists are spread with wide gaps.
    lines = ["[CONFIGURATION FILE]", ".ad l", *MAN_CONFIGURATION_INTRO.rstrip("\n").split("\n")]
    for group, settings in groupby((s for s in SETTINGS if s.in_file), key=lambda s: s.group):
        lines.append(f'.SS "{group[0].upper()}{group[1:]}"')
        for setting in settings:
            lines += _man_setting(setting)
    lines.append(".ad")  # back to the page's adjustment for FILES and what follows
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
