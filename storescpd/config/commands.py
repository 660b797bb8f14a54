"""Hook commands as configured (-xcr, -xcs): split into an argument vector once, checked for shell syntax.

Running them is ``storescpd.store.hooks``; this is what the configuration knows of a command, so that a
command a site's DCMTK setup wrote for ``/bin/sh`` is refused with the way to write it instead.
"""

from __future__ import annotations

import re
import shlex
from functools import lru_cache

# Values a peer chooses: its AE titles, and #r, its host name from whoever controls the PTR record.
# The folder (#p) and file name (#f) are ours.
PEER_CONTROLLED = ("#a", "#c", "#r")
END_OF_OPTIONS = "--"
PLACEHOLDER_PATTERN = re.compile("#[pfacr]")
_SHELL_OPERATORS = "|;&<>()"
_GLOB = "*?"


def split_command(command: str) -> tuple[str, ...]:
    """The argument vector of a configured command (placeholders still in it)."""
    return _split(command)


@lru_cache(maxsize=16)
def _split(command: str) -> tuple[str, ...]:
    return tuple(shlex.split(command))


def command_problem(command: str | None) -> str | None:
    """Why a configured -xcr/-xcs command cannot be run without a shell, or None.

    The message tells a site whose DCMTK command line relied on /bin/sh how to write it.
    """
    if command is None:
        return None
    try:
        argv = split_command(command)
    except ValueError as exc:
        return f"cannot be split into arguments ({exc}): check its quotes"
    if not argv:
        return "is empty"
    syntax = shell_syntax(command)
    if syntax:
        return (
            f"uses shell syntax ({' '.join(syntax)}), but storescpd runs hooks without a shell so that "
            "values from the peer can never start a command; write it as: "
            "sh -c 'your | pipeline \"$1\" \"$2\"' -- #p #f (each placeholder becomes one positional "
            "argument; the values are also in STORESCPD_PATH, STORESCPD_FILE, STORESCPD_CALLING_AE, "
            "STORESCPD_CALLED_AE and STORESCPD_PEER)"
        )
    if PLACEHOLDER_PATTERN.search(argv[0]):
        return (f"has a placeholder in its program name ({argv[0]!r}): the program must be fixed, "
                "only its arguments can carry values")
    return None


def shell_syntax(command: str) -> list[str]:
    """The shell constructs /bin/sh would have interpreted outside quotes (in order, once each)."""
    found: list[str] = []
    quote = ""
    escaped = False
    at_word_start = True
    for i, ch in enumerate(command):
        if escaped:
            escaped = False
            at_word_start = False
            continue
        if ch == "\\" and quote != "'":
            escaped = True
            continue
        if quote == "'":
            if ch == "'":
                quote = ""
            continue
        if quote == '"':
            if ch == '"':
                quote = ""
            elif ch in "$`":
                _note(found, _expansion(command, i))
            continue
        if ch in "'\"":
            quote = ch
            at_word_start = False
            continue
        if ch.isspace():
            at_word_start = True
            continue
        if ch in _SHELL_OPERATORS:
            _note(found, _operator(command, i))
        elif ch in "$`":
            _note(found, _expansion(command, i))
        elif ch in _GLOB:
            _note(found, ch)
        elif ch == "~" and at_word_start:
            _note(found, "~")
        at_word_start = False
    return found


def _note(found: list[str], token: str) -> None:
    if token not in found:
        found.append(token)


def _operator(command: str, i: int) -> str:
    j = i
    while j < len(command) and command[j] in "|;&<>":
        j += 1
    return command[i:max(j, i + 1)]


def _expansion(command: str, i: int) -> str:
    if command[i] == "`":
        return "`...`"
    nxt = command[i + 1:i + 2]
    if nxt == "(":
        return "$(...)"
    if nxt == "{":
        return "${...}"
    match = re.match(r"\$[A-Za-z_][A-Za-z0-9_]*|\$.", command[i:])
    return match.group(0) if match else "$"


def command_warnings(command: str | None, option: str) -> list[str]:
    """Things worth a warning at startup in a command that can run (not errors)."""
    if not command or command_problem(command):
        return []
    argv = split_command(command)
    warnings = []
    if option == "--exec-on-eostudy" and any("#f" in arg for arg in argv):
        warnings.append("--exec-on-eostudy: #f has no value at the end of a study; it stays '#f' "
                        "(as in DCMTK)")
    seen_end_of_options = False
    for arg in argv[1:]:
        if arg == END_OF_OPTIONS:
            seen_end_of_options = True
        elif not seen_end_of_options and arg.startswith(PEER_CONTROLLED):
            warnings.append(
                f"{option}: the argument {arg!r} begins with a value the peer chooses; a value beginning "
                f"with '-' (an AE title such as '-rf') reaches {argv[0]} as that one argument, as with "
                f"DCMTK, and {argv[0]} may read it as an option; write '--' before it ({argv[0]} -- {arg}) "
                f"if {argv[0]} accepts '--'")
            break
    return warnings
