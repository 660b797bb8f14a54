"""Our transfer-syntax preferences equal DCMTK 3.6.7's, as measured by docs/dcmtk-reference/negotiation.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storescpd.config.settings import PREFERENCES
from storescpd.dicom.negotiation import STORAGE_PREFERENCES

MEASURED = json.loads((Path(__file__).resolve().parents[2] / "docs" / "dcmtk-reference" /
                       "negotiation_result.json").read_text())
FRAGMENTABLE = {f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)}


@pytest.mark.parametrize("option,setting", [(p[0], p[2]) for p in PREFERENCES])
def test_preference_order_matches_dcmtk(option: str, setting: str) -> None:
    ours = [ts for ts in STORAGE_PREFERENCES[setting] if ts not in FRAGMENTABLE]
    assert ours == MEASURED[option]["order"]


def test_accept_all_adds_only_the_fragmentable_video_syntaxes() -> None:
    extra = set(STORAGE_PREFERENCES["all"]) - set(MEASURED["+xa"]["order"])
    assert extra == FRAGMENTABLE


def test_the_transfer_syntax_table_agrees_with_pydicom() -> None:
    from pydicom.uid import UID

    from storescpd.dicom.transfer_syntaxes import BY_UID, TABLE

    assert len({ts.uid for ts in TABLE}) == len({ts.dcmtk_name for ts in TABLE}) == len(TABLE)
    jpip = ("1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95")
    for ts in TABLE:
        theirs = UID(ts.uid)
        assert theirs.is_transfer_syntax, ts
        assert (ts.explicit_vr, ts.little_endian) == (not theirs.is_implicit_VR, theirs.is_little_endian), ts
        if ts.uid not in jpip:  # pydicom calls JPIP compressed, and its deflate variant not deflated (PS3.5 A.7)
            assert (ts.deflated, ts.encapsulated) == (theirs.is_deflated, theirs.is_encapsulated), ts
    assert [(BY_UID[uid].deflated, BY_UID[uid].encapsulated) for uid in jpip] == [(False, False), (True, False)]


def test_every_negotiated_transfer_syntax_is_in_the_table() -> None:
    from storescpd.dicom.transfer_syntaxes import BY_UID

    assert {ts for syntaxes in STORAGE_PREFERENCES.values() for ts in syntaxes} <= set(BY_UID)
