"""+ac: hosts_access(5) rules read from hosts.allow / hosts.deny."""

from __future__ import annotations

from pathlib import Path

import pytest

from storescpd.daemon.access import Client, allowed


def rules(tmp_path: Path, allow: str, deny: str) -> tuple[Path, Path]:
    (tmp_path / "allow").write_text(allow)
    (tmp_path / "deny").write_text(deny)
    return tmp_path / "allow", tmp_path / "deny"


@pytest.mark.parametrize("allow,deny,address,name,expected", [
    ("", "", "10.1.2.3", None, True),                                   # no rules: granted
    ("", "ALL: ALL\n", "10.1.2.3", None, False),                        # default deny
    ("storescp: 10.1.\n", "ALL: ALL\n", "10.1.2.3", None, True),        # address prefix
    ("storescp: 10.1.\n", "ALL: ALL\n", "10.2.2.3", None, False),
    ("storescpd: 10.0.0.0/255.0.0.0\n", "ALL: ALL", "10.9.9.9", None, True),   # net/mask, our own name
    ("storescp: 192.168.0.0/16\n", "ALL: ALL", "192.168.7.1", None, True),     # CIDR
    ("storescp: [::1]\n", "ALL: ALL", "::1", None, True),
    ("storescp: ALL EXCEPT 10.1.2.3\n", "ALL: ALL", "10.1.2.3", None, False),  # EXCEPT
    ("storescp: ALL EXCEPT 10.1.2.3\n", "ALL: ALL", "10.1.2.4", None, True),
    ("storescp: .example.org\n", "ALL: ALL", "10.1.2.3", "pacs.example.org", True),  # domain suffix
    ("storescp: .example.org\n", "ALL: ALL", "10.1.2.3", None, False),        # names need a lookup
    ("storescp: KNOWN\n", "ALL: ALL", "10.1.2.3", None, False),
    ("sshd: ALL\n", "ALL: ALL", "10.1.2.3", None, False),                     # another daemon's rule
    ("# comment\nstorescp: \\\n  127.0.0.1\n", "ALL: ALL", "127.0.0.1", None, True),  # continuation
    ("storescp: 10.1.2.3: spawn /bin/echo\n", "ALL: ALL", "10.1.2.3", None, False),  # commands: skipped
])
def test_rules(tmp_path: Path, allow: str, deny: str, address: str, name: str | None, expected: bool) -> None:
    assert allowed(Client(address, name), *rules(tmp_path, allow, deny)) is expected


def test_missing_files_grant(tmp_path: Path) -> None:
    assert allowed(Client("10.0.0.1", None), tmp_path / "none", tmp_path / "neither")
