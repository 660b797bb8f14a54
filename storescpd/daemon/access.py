"""Host access control (+ac): DCMTK's TCP-wrapper rules, /etc/hosts.allow and /etc/hosts.deny.

DCMTK links libwrap and asks it about the daemon name "storescp"; there is no libwrap for
Python, so this reads the same files with hosts_access(5)'s rules: access is granted when a
rule in hosts.allow matches, denied when one in hosts.deny matches, granted otherwise. Both
"storescp" and "storescpd" name us, so existing rules keep working.

Supported patterns: ALL, LOCAL, KNOWN, UNKNOWN, EXCEPT, exact addresses, address prefixes
("192.168."), net/mask ("10.0.0.0/255.0.0.0"), CIDR ("10.0.0.0/8", "[fe80::]/10"), host
names and ".domain" suffixes (these need a reverse lookup, which -dhl turns off: names then
never match). Not supported: "@netgroup", "PARANOID", "/file" lists and shell commands
(a rule using them is skipped with a warning).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LOG = logging.getLogger("storescpd.access")

DAEMON_NAMES = {"storescp", "storescpd"}


@dataclass
class Client:
    address: str
    name: str | None  # None: unknown (lookup failed or disabled)


def client(address: str, lookup: bool) -> Client:
    mapped = getattr(ipaddress.ip_address(address), "ipv4_mapped", None)
    if mapped is not None:  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
        address = str(mapped)
    name = None
    if lookup:
        try:
            name = socket.gethostbyaddr(address)[0].lower()
        except OSError:
            name = None
    return Client(address, name)


def allowed(c: Client, allow: Path, deny: Path) -> bool:
    """hosts_access(5): the first matching rule of hosts.allow grants, then hosts.deny denies."""
    if _first_match(allow, c):
        return True
    return not _first_match(deny, c)


def _first_match(path: Path, c: Client) -> bool:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return False
    except OSError as exc:
        LOG.warning("cannot read %s: %s; its rules are not applied", path, exc.strerror)
        return False
    for number, rule in _rules(text):
        parts = _fields(rule)
        if len(parts) < 2:
            LOG.warning("%s:%d: no ':' in the rule, skipped", path, number)
            continue
        if len(parts) > 2 and parts[2].strip():
            LOG.warning("%s:%d: options and shell commands are not supported, rule skipped", path, number)
            continue
        if _list_matches(parts[0], lambda p: p.lower() in DAEMON_NAMES or p == "ALL") and \
                _list_matches(parts[1], lambda p: _client_matches(p, c, path, number)):
            return True
    return False


def _fields(rule: str) -> list[str]:
    """Split a rule on ':' outside [brackets] (IPv6 patterns contain colons)."""
    fields, current, depth = [], "", 0
    for ch in rule:
        depth += (ch == "[") - (ch == "]")
        if ch == ":" and depth == 0:
            fields.append(current)
            current = ""
        else:
            current += ch
    return fields + [current]


def _rules(text: str) -> list[tuple[int, str]]:
    """Logical lines: comments dropped, backslash continuations joined."""
    rules, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            rules.append((start, pending.strip()))
        pending = ""
    return rules


def _list_matches(field: str, matches: Callable[[str], bool]) -> bool:
    """A pattern list with EXCEPT: "a b EXCEPT c" matches a or b unless c."""
    words = field.replace(",", " ").split()
    if "EXCEPT" in words:
        i = words.index("EXCEPT")
        return _list_matches(" ".join(words[:i]), matches) and not _list_matches(" ".join(words[i + 1:]), matches)
    return any(matches(w) for w in words)


def _client_matches(pattern: str, c: Client, path: Path, number: int) -> bool:
    if pattern == "ALL":
        return True
    if pattern in ("KNOWN", "UNKNOWN"):
        return (c.name is not None) == (pattern == "KNOWN")
    if pattern == "LOCAL":
        return c.name is not None and "." not in c.name
    if pattern.startswith(("@", "/")) or pattern == "PARANOID":
        LOG.warning("%s:%d: pattern %s is not supported, it never matches", path, number, pattern)
        return False
    address = ipaddress.ip_address(c.address)
    network = _network(pattern)
    if network is not None:
        return address in network
    if pattern.endswith(".") and pattern[0].isdigit():
        return c.address.startswith(pattern)
    if pattern.startswith("."):
        return c.name is not None and c.name.endswith(pattern.lower())
    return c.address == pattern.strip("[]") or (c.name is not None and c.name == pattern.lower())


def _network(pattern: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        if "/" not in pattern and not pattern.startswith("["):
            return ipaddress.ip_network(pattern) if pattern[:1].isdigit() and pattern.count(".") == 3 else None
        net = pattern.replace("[", "").replace("]", "")
        return ipaddress.ip_network(net, strict=False)
    except ValueError:
        return None
