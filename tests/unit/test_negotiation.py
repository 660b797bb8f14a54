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
