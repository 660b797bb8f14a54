"""docs/options.md, generated from the settings table: ``python -m storescpd.docs > docs/options.md``.

tests/unit/test_docs.py keeps the committed file equal to this output.
"""

from __future__ import annotations

import sys

from .config import NOT_YET, SETTINGS, Flag, Setting

HEADER = """# storescpd options

Generated from the settings table (`storescpd/config.py`) by `python -m storescpd.docs`; do not
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


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
