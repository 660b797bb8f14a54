"""Extract the SOP class and transfer syntax lists from the storescp manual.

Usage: parse_manpage.py [MANPAGE]  -> prints JSON {"sop_classes": [[name, uid]...], "transfer_syntaxes": [[name, uid]...]}
"""
import json
import os
import re
import sys

UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def pairs(text: str) -> list[tuple[str, str]]:
    tokens = text.split()
    out = []
    for name, uid in zip(tokens[0::2], tokens[1::2]):
        if not UID.match(uid) or UID.match(name):
            raise ValueError(f"unexpected token pair {name!r} {uid!r}")
        out.append((name, uid))
    return out


def parse(path: str) -> dict:
    lines = open(path, encoding="utf-8").read().splitlines()
    sop_line = ts_line = None
    for i, line in enumerate(lines):
        if line.startswith("The storescp application supports the following SOP Classes as an SCP"):
            sop_line = lines[i + 1]
        if line.endswith("Using option --accept-all any of the following transfer syntaxes is supported:"):
            ts_line = lines[i + 1]
    return {"sop_classes": pairs(sop_line), "transfer_syntaxes": pairs(ts_line)}


def manual() -> str:
    """The storescp manual as text: $STORESCP_MANUAL (e.g. made with `man storescp | col -b > storescp.txt`)."""
    path = os.environ.get("STORESCP_MANUAL")
    if not path:
        sys.exit("set STORESCP_MANUAL to DCMTK's storescp manual as plain text: man storescp | col -b > storescp.txt")
    return path


if __name__ == "__main__":
    result = parse(sys.argv[1] if len(sys.argv) > 1 else manual())
    json.dump(result, sys.stdout, indent=1)
