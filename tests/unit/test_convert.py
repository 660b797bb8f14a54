"""convert.py: when storescpd re-encodes, and what the re-encoding writes (no network)."""

from __future__ import annotations

from array import array

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset

from storescpd.store import convert
from storescpd.config.settings import defaults
from storescpd.store.convert import DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, Encoding, encoding_for
from storescpd.dicom.filemeta import file_meta_bytes
from tests.support.dicomfiles import crafted_bytes, split_meta
from tests.support.paths import TEST_FILES


class Cfg:
    def __init__(self, **changes: object) -> None:
        self.__dict__.update(defaults(), **changes)


@pytest.mark.parametrize("changes,received,converts", [
    ({}, EXPLICIT_LE, False),  # the default keeps the raw stream (flat memory)
    ({"bit_preserving": True}, EXPLICIT_LE, False),
    ({"write_transfer_syntax": "little"}, EXPLICIT_LE, False),  # already what was asked for
    ({"write_transfer_syntax": "little"}, IMPLICIT_LE, True),
    ({"write_transfer_syntax": "deflated"}, DEFLATED_LE, False),
    ({"write_transfer_syntax": "deflated", "compression_level": 9}, DEFLATED_LE, True),
    ({"compression_level": 9}, EXPLICIT_LE, False),
    ({"length_encoding": "undefined"}, EXPLICIT_LE, True),
    ({"group_length": "remove"}, EXPLICIT_LE, True),
    ({"new_vr": False}, EXPLICIT_LE, True),
    ({"convert_un": True}, EXPLICIT_LE, True),
    ({"padding": [8, 4]}, EXPLICIT_LE, True),
])
def test_conversion_only_when_an_option_asks(changes: dict, received: str, converts: bool) -> None:
    assert (encoding_for(Cfg(**changes), received) is not None) is converts


def staged(tmp_path: Path, data: bytes) -> tuple[Path, int]:
    path = tmp_path / "staged.part"
    path.write_bytes(data)
    return path, len(split_meta(data)[0])


def converted(tmp_path: Path, data: bytes, encoding: Encoding) -> pydicom.Dataset:
    path, offset = staged(tmp_path, data)
    out = BytesIO()
    meta = pydicom.dcmread(path, force=True).file_meta
    head = file_meta_bytes(meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, encoding.transfer_syntax, "")
    convert.convert(path, offset, EXPLICIT_LE, out, encoding, head)
    out.seek(0)
    with convert._un_replacement(False):  # read back what was written, UN included
        ds = pydicom.dcmread(out)
        for _ in ds.iterall():
            pass
    return ds


def test_crafted_file_default_rules(tmp_path: Path) -> None:
    ds = converted(tmp_path, crafted_bytes("1.2.3.4"), Encoding(EXPLICIT_LE))
    # the wrong group length (4242) recalculated, as DCMTK does (the value is checked against DCMTK's
    # in tests/integration/test_differential.py)
    assert ds[0x00080000].value == 130
    assert not ds["ProcedureCodeSequence"].is_undefined_length
    assert ds[0x00181030].VR == "UN"  # retained without +uc


def test_convert_un_and_disable_new_vr(tmp_path: Path) -> None:
    ds = converted(tmp_path, crafted_bytes("1.2.3.4"), Encoding(EXPLICIT_LE, convert_un=True))
    assert ds[0x00181030].VR == "LO" and ds.ProtocolName == "PROTO1"
    assert ds[0x00091010].VR == "UN"  # private: no dictionary VR
    ds = converted(tmp_path, crafted_bytes("1.2.3.4"), Encoding(EXPLICIT_LE, new_vr=False))
    assert ds[0x00321066].VR == "OB" and ds[0x00321066].value == b"some unlimited text "


def test_group_lengths_everywhere_or_nowhere(tmp_path: Path) -> None:
    ds = converted(tmp_path, crafted_bytes("1.2.3.4"), Encoding(EXPLICIT_LE, group_length="create"))
    assert 0x00100000 in ds and 0x00080000 in ds.ProcedureCodeSequence[0]
    ds = converted(tmp_path, crafted_bytes("1.2.3.4"), Encoding(EXPLICIT_LE, group_length="remove"))
    assert 0x00080000 not in ds


def test_big_endian_swaps_words(tmp_path: Path) -> None:
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    path, offset = staged(tmp_path, data)
    ds = convert.read_staged(path, offset, EXPLICIT_LE)
    body = convert.encode(ds, Encoding(EXPLICIT_BE))
    reread = read_dataset(BytesIO(body), is_implicit_VR=False, is_little_endian=False)
    original = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    words = array("H", original.PixelData)  # OW: each 16-bit word swapped, no numpy needed
    words.byteswap()
    assert reread.PixelData == words.tobytes()
    assert reread.Rows == original.Rows and reread.PatientName == original.PatientName


def test_padding_makes_file_and_items_multiples(tmp_path: Path) -> None:
    data = (TEST_FILES / "rtplan.dcm").read_bytes()
    path, offset = staged(tmp_path, data)
    meta = pydicom.dcmread(path, force=True).file_meta
    head = file_meta_bytes(meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, IMPLICIT_LE, "")
    out = BytesIO()
    convert.convert(path, offset, IMPLICIT_LE, out, Encoding(IMPLICIT_LE, padding=(8, 4)), head)
    assert len(out.getvalue()) % 8 == 0
    out.seek(0)
    ds = pydicom.dcmread(out)
    items = [item for elem in ds.iterall() if elem.VR == "SQ" for item in elem.value]
    assert any(0xFFFCFFFC in item for item in items)


def test_a_non_default_encoding_in_the_file_re_encodes() -> None:
    from storescpd.config.load import build

    assert encoding_for(build({"length_encoding": "undefined"}, {}, "storescpd.toml"), EXPLICIT_LE) is not None
    assert encoding_for(build({"length_encoding": "explicit"}, {}, "storescpd.toml"), EXPLICIT_LE) is None
