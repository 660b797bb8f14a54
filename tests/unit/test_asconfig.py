"""DCMTK association negotiation profile files (-xf): parsing and the errors a person reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from storescpd.dicom.asconfig import load_all, load_profile
from storescpd.dicom.asconfig import ProfileError
from tests.support.paths import ROOT

GOOD = """\
# a comment
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[JPEG]
TransferSyntax1 = 1.2.840.10008.1.2.4.50

[[PresentationContexts]]
[Contexts]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = CTImageStorage\\jpeg
PresentationContext3 = 1.2.826.0.1.3680043.10.5.1\\Uncompressed

[[SCPSCURoleSelection]]
[Roles]
Role1 = CTImageStorage\\BOTH

[[ExtendedNegotiation]]
[Ext]
ExtendedNegotiation1 = CTImageStorage\\020003000000

[[Profiles]]
[Mine]
PresentationContexts = Contexts
SCPSCURoleSelection = Roles
ExtendedNegotiation = Ext
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "profiles.cfg"
    path.write_text(text)
    return str(path)


def test_profile_with_roles_and_extended_negotiation(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, GOOD), "mine")  # profile names are case-insensitive
    assert profile.contexts == [
        ("1.2.840.10008.1.1", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
        ("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.4.50"]),
        ("1.2.826.0.1.3680043.10.5.1", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
    ]
    assert profile.roles == {"1.2.840.10008.5.1.4.1.1.2": (True, True)}
    assert profile.extended == {"1.2.840.10008.5.1.4.1.1.2": bytes.fromhex("020003000000")}


def test_shipped_profiles_load() -> None:
    profiles = load_all(str(ROOT / "etc" / "storescp.cfg"))
    assert set(profiles) == {"DEFAULT", "ALLDICOM"}
    assert all(len(p.contexts) == 128 for p in profiles.values())


@pytest.mark.parametrize("change,line,words", [
    (("LittleEndianImplicit", "FooBar"), 5, "'FooBar' is not a valid transfer syntax UID"),
    (("CTImageStorage\\jpeg", "FooStorage\\jpeg"), 12, "'FooStorage' is not a valid abstract syntax UID"),
    (("CTImageStorage\\jpeg", "CTImageStorage\\Nope"), 12, "'Nope' is not a section of [[TransferSyntaxes]]"),
    (("CTImageStorage\\jpeg", "CTImageStorage"), 12, "needs two parts separated by '\\'"),
    (("TransferSyntax2 =", "TransferSyntax3 ="), 5, "expected TransferSyntax2"),
    (("Role1 = CTImageStorage\\BOTH", "Role1 = CTImageStorage\\FOO"), 17, "unknown role 'FOO'"),
    (("020003000000", "02XZ"), 21, "not an even number of hexadecimal digits"),
    (("PresentationContexts = Contexts", "PresentationContexts = Other"), 25, "'Other' is not a section"),
    (("TransferSyntax1 = 1.2.840.10008.1.2.4.50", "TransferSyntax1 1.2.840.10008.1.2.4.50"), 7,
     "is neither [[Supersection]], [Section] nor Key = Value"),
    (("PresentationContext3 = 1.2.826.0.1.3680043.10.5.1", "PresentationContext3 = CTImageStorage"), 24,
     "appears in more than one presentation context"),
])
def test_errors_name_file_line_and_problem(tmp_path: Path, change: tuple[str, str], line: int, words: str) -> None:
    old, new = change
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ProfileError) as caught:
        load_profile(path, "Mine")
    message = str(caught.value)
    assert f"{path}, line {line}:" in message
    assert words in message


def test_missing_supersection_and_profile(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[[Profiles]]", "[[Profile]]"))
    with pytest.raises(ProfileError, match=r"mandatory supersection \[\[Profiles\]\]"):
        load_profile(path, "Mine")
    with pytest.raises(ProfileError, match="has no profile 'Other' \\(it has: Mine\\)"):
        load_profile(write(tmp_path, GOOD), "Other")
    with pytest.raises(ProfileError, match="cannot read association negotiation profile file"):
        load_profile(str(tmp_path / "absent.cfg"), "Mine")


def test_broken_profile_is_a_configuration_error(tmp_path: Path) -> None:
    from storescpd.config.load import build
    from storescpd.config.settings import ConfigError

    path = write(tmp_path, GOOD.replace("LittleEndianImplicit", "FooBar"))
    with pytest.raises(ConfigError, match="line 5"):
        build({}, {"config_file": [path, "Mine"], "port": 11112, "output_directory": str(tmp_path)}, None)
