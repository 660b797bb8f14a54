"""DCMTK association negotiation profiles (``-xf FILE PROFILE``), read as DCMTK 3.6.7 reads them.

The format is DCMTK's asconfig.txt: an INI file with supersections ``[[TransferSyntaxes]]``,
``[[PresentationContexts]]``, ``[[Profiles]]`` (mandatory) and ``[[SCPSCURoleSelection]]``,
``[[ExtendedNegotiation]]`` (optional). Keys, section and profile names are case-insensitive;
values name UIDs numerically or by DCMTK's symbolic names. Every problem is a ProfileError naming
the file, the line and what to fix, raised while the configuration is validated, so a reload
with a broken file keeps the running configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import UID_dictionary

from storescpd.dicom.sop_classes import STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS
from storescpd.dicom import transfer_syntaxes

# DCMTK's symbolic transfer syntax names (dcmdata's UID name map), accepted besides the DICOM
# keywords pydicom knows.
DCMTK_TRANSFER_SYNTAX_NAMES: dict[str, str] = {
    **{ts.dcmtk_name: ts.uid for ts in transfer_syntaxes.TABLE},
    "LocalEndianExplicit": transfer_syntaxes.LOCAL_EXPLICIT,
    "OppositeEndianExplicit": transfer_syntaxes.OPPOSITE_EXPLICIT,
}

# DCMTK's SOP class names that are neither DICOM keywords nor in the storescp conformance list.
DCMTK_SOP_CLASS_NAMES: dict[str, str] = {
    "VerificationSOPClass": VERIFICATION_SOP_CLASS,
    "ImplantationPlanSRDocumentStorage": "1.2.840.10008.5.1.4.1.1.88.70",
}

_NUMERIC_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ROLES = {"SCU": (True, False), "SCP": (False, True), "BOTH": (True, True)}
SUPERSECTIONS = ("TRANSFERSYNTAXES", "PRESENTATIONCONTEXTS", "PROFILES", "SCPSCUROLESELECTION",
                 "EXTENDEDNEGOTIATION")
_MANDATORY = SUPERSECTIONS[:3]


def _keywords(kind: str) -> dict[str, str]:
    return {info[4]: uid for uid, info in UID_dictionary.items() if info[4] and info[1] == kind}


_TS_NAMES = {**_keywords("Transfer Syntax"), **DCMTK_TRANSFER_SYNTAX_NAMES}
_SOP_NAMES = {**_keywords("SOP Class"), **{name: uid for uid, name, _ in STORAGE_SOP_CLASSES},
              **DCMTK_SOP_CLASS_NAMES}


class ProfileError(ValueError):
    """A profile file a person must fix; the message names the file, the line and the problem."""


@dataclass
class Profile:
    """One association negotiation profile, ready for the acceptor."""

    name: str
    contexts: list[tuple[str, list[str]]]
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    extended: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Entry:
    key: str
    value: str
    line: int


@dataclass
class _Section:
    name: str
    line: int
    entries: list[_Entry] = field(default_factory=list)


class _File:
    def __init__(self, path: str) -> None:
        self.path = path
        self.supersections: dict[str, dict[str, _Section]] = {}

    def error(self, line: int | None, problem: str) -> ProfileError:
        where = f"{self.path}, line {line}" if line else self.path
        return ProfileError(f"association negotiation profile file {where}: {problem}")


def _parse(path: str) -> _File:
    try:
        text = Path(path).read_text(encoding="latin-1")
    except OSError as exc:
        raise ProfileError(f"cannot read association negotiation profile file {path}: "
                          f"{exc.strerror} (-xf names an existing file and a profile in it)") from None
    parsed = _File(path)
    supersection: dict[str, _Section] | None = None
    section: _Section | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or raw.startswith("#"):
            continue
        if line.startswith("[["):
            if not line.endswith("]]"):
                raise parsed.error(number, f"'{line}' opens a supersection but does not end with ']]'")
            name = _label(line[2:-2])
            if name in parsed.supersections:
                raise parsed.error(number, f"supersection [[{line[2:-2].strip()}]] appears twice")
            supersection = parsed.supersections[name] = {}
            section = None
        elif line.startswith("["):
            if not line.endswith("]"):
                raise parsed.error(number, f"'{line}' opens a section but does not end with ']'")
            if supersection is None:
                raise parsed.error(number, f"section {line} comes before any [[supersection]]")
            name = _label(line[1:-1])
            if name in supersection:
                raise parsed.error(number, f"section {line} appears twice in its supersection")
            section = supersection[name] = _Section(line[1:-1].strip(), number)
        elif "=" in line:
            if section is None:
                raise parsed.error(number, f"entry '{line}' comes before any [section]")
            key, value = (part.strip() for part in line.split("=", 1))
            if not key:
                raise parsed.error(number, f"entry '{line}' has no key before '='")
            section.entries.append(_Entry(key.upper(), value, number))
        else:
            raise parsed.error(number, f"'{line}' is neither [[Supersection]], [Section] nor Key = Value")
    for name in _MANDATORY:
        if name not in parsed.supersections:
            raise parsed.error(None, f"cannot find the mandatory supersection [[{name.title()}]]")
    return parsed


def _label(text: str) -> str:
    return re.sub(r"\s+", "", text).upper()


def _numbered(parsed: _File, section: _Section, prefix: str) -> list[_Entry]:
    """Entries PREFIX1, PREFIX2, ... in order, as DCMTK reads them (no gaps, no strangers)."""
    wanted = prefix.upper()
    by_key = {e.key: e for e in section.entries}
    ordered = []
    while f"{wanted}{len(ordered) + 1}" in by_key:
        ordered.append(by_key.pop(f"{wanted}{len(ordered) + 1}"))
    if by_key:
        stray = min(by_key.values(), key=lambda e: e.line)
        raise parsed.error(stray.line, f"unexpected key '{stray.key}' in [{section.name}]: expected "
                           f"{prefix}{len(ordered) + 1} (keys are numbered 1, 2, 3, ... without gaps)")
    if not ordered:
        raise parsed.error(section.line, f"[{section.name}] has no {prefix}1 entry")
    return ordered


def _split(parsed: _File, entry: _Entry) -> tuple[str, str]:
    if "\\" not in entry.value:
        raise parsed.error(entry.line, f"'{entry.value}' needs two parts separated by '\\' "
                           "(e.g. CTImageStorage\\Uncompressed)")
    first, second = entry.value.split("\\", 1)
    return first.strip(), second.strip()


def _uid(parsed: _File, entry: _Entry, name: str, names: dict[str, str], kind: str) -> str:
    if name in names:
        return names[name]
    if _NUMERIC_UID.match(name) and len(name) <= 64:
        return name
    raise parsed.error(entry.line, f"'{name}' is not a valid {kind} UID or DCMTK {kind} name")


def _transfer_syntax_lists(parsed: _File) -> dict[str, list[str]]:
    lists = {}
    for label, section in parsed.supersections["TRANSFERSYNTAXES"].items():
        lists[label] = [_uid(parsed, e, e.value, _TS_NAMES, "transfer syntax")
                        for e in _numbered(parsed, section, "TransferSyntax")]
    return lists


def _context_lists(parsed: _File, syntaxes: dict[str, list[str]]) -> dict[str, list[tuple[str, list[str]]]]:
    lists = {}
    for label, section in parsed.supersections["PRESENTATIONCONTEXTS"].items():
        contexts = []
        for entry in _numbered(parsed, section, "PresentationContext"):
            abstract, reference = _split(parsed, entry)
            uid = _uid(parsed, entry, abstract, _SOP_NAMES, "abstract syntax")
            if _label(reference) not in syntaxes:
                raise parsed.error(entry.line, f"transfer syntax list '{reference}' is not a section of "
                                   "[[TransferSyntaxes]]")
            contexts.append((uid, syntaxes[_label(reference)]))
        lists[label] = contexts
    return lists


def _role_lists(parsed: _File) -> dict[str, dict[str, tuple[bool, bool]]]:
    lists = {}
    for label, section in parsed.supersections.get("SCPSCUROLESELECTION", {}).items():
        roles = {}
        for entry in _numbered(parsed, section, "Role"):
            abstract, role = _split(parsed, entry)
            if role.upper() not in _ROLES:
                raise parsed.error(entry.line, f"unknown role '{role}': use SCU, SCP or BOTH")
            roles[_uid(parsed, entry, abstract, _SOP_NAMES, "abstract syntax")] = _ROLES[role.upper()]
        lists[label] = roles
    return lists


def _extended_lists(parsed: _File) -> dict[str, dict[str, bytes]]:
    lists = {}
    for label, section in parsed.supersections.get("EXTENDEDNEGOTIATION", {}).items():
        items = {}
        for entry in _numbered(parsed, section, "ExtendedNegotiation"):
            abstract, data = _split(parsed, entry)
            try:
                if len(data) % 2:
                    raise ValueError
                value = bytes.fromhex(data)
            except ValueError:
                raise parsed.error(entry.line, f"extended negotiation data '{data}' is not an even number "
                                   "of hexadecimal digits") from None
            items[_uid(parsed, entry, abstract, _SOP_NAMES, "abstract syntax")] = value
        lists[label] = items
    return lists


def load_all(path: str) -> dict[str, Profile]:
    """Every profile of a file, keyed by its upper-case name; ProfileError on any problem."""
    parsed = _parse(path)
    contexts = _context_lists(parsed, _transfer_syntax_lists(parsed))
    roles = _role_lists(parsed)
    extended = _extended_lists(parsed)
    references = (("PRESENTATIONCONTEXTS", contexts, "[[PresentationContexts]]"),
                  ("SCPSCUROLESELECTION", roles, "[[SCPSCURoleSelection]]"),
                  ("EXTENDEDNEGOTIATION", extended, "[[ExtendedNegotiation]]"))
    profiles = {}
    for label, section in parsed.supersections["PROFILES"].items():
        chosen: dict[str, object] = {}
        for entry in section.entries:
            for key, lists, where in references:
                if entry.key == key:
                    if _label(entry.value) not in lists:
                        raise parsed.error(entry.line, f"'{entry.value}' is not a section of {where}")
                    chosen[key] = lists[_label(entry.value)]
                    break
            else:
                raise parsed.error(entry.line, f"unknown key '{entry.key}' in profile [{section.name}]: use "
                                   "PresentationContexts, SCPSCURoleSelection or ExtendedNegotiation")
        if "PRESENTATIONCONTEXTS" not in chosen:
            raise parsed.error(section.line, f"profile [{section.name}] names no PresentationContexts")
        profile = Profile(section.name, chosen["PRESENTATIONCONTEXTS"],  # type: ignore[arg-type]
                          chosen.get("SCPSCUROLESELECTION", {}),  # type: ignore[arg-type]
                          chosen.get("EXTENDEDNEGOTIATION", {}))  # type: ignore[arg-type]
        seen: set[str] = set()
        for uid, _ in profile.contexts:
            if uid in seen:
                raise parsed.error(section.line, f"profile [{section.name}] is not valid for an SCP: abstract "
                                   f"syntax {uid} appears in more than one presentation context")
            seen.add(uid)
        profiles[label] = profile
    return profiles


_cache: dict[str, tuple[tuple[int, int], dict[str, Profile]]] = {}


def load_profile(path: str, name: str) -> Profile:
    """The profile ``name`` of ``path`` (names are case-insensitive, as in DCMTK)."""
    try:
        stat = Path(path).stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = (0, -1)
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp:
        profiles = cached[1]
    else:
        profiles = load_all(path)
        _cache[path] = (stamp, profiles)
    try:
        return profiles[_label(name)]
    except KeyError:
        known = ", ".join(p.name for p in profiles.values())
        raise ProfileError(f"association negotiation profile file {path} has no profile '{name}' "
                          f"(it has: {known})") from None
