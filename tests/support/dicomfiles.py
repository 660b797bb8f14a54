"""DICOM files made or taken apart for a test: big objects, crafted encodings, file meta."""

from __future__ import annotations

import copy
import random
import struct
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.support.paths import TEST_FILES


def make_object(path: Path, megabytes: int, seed: int = 0, columns: int | None = None) -> Path:
    """A Secondary Capture object with about `megabytes` MB of pixel data (or `columns` x 1024 pixels)."""
    rows = 1024
    cols = columns or 512  # 16-bit: 1024 x 512 x 2 bytes = 1 MiB per frame
    frames = 1 if columns else megabytes
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "Test^Big"
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    rng = random.Random(seed)
    ds.PixelData = b"".join(rng.randbytes(rows * cols * 2) for _ in range(frames))
    ds.save_as(path, enforce_file_format=True)
    return path


def small_objects(directory: Path, count: int, first: int, patient: str = "") -> list[Path]:
    """Small CT objects, each with its own SOP Instance UID (...79.<n> from `first`), pixel data dropped."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del base.PixelData
    base.PatientName = patient
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(first, first + count):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.79.{n}"
        paths.append(directory / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _el(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UT", b"UN"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, n) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, n) + value


def _undefined_sq(tag: int, items: list[bytes]) -> bytes:
    body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + i + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
                    for i in items)
    return _el(tag, b"SQ", body + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), 0xFFFFFFFF)


def crafted_bytes(uid: str) -> bytes:
    """Explicit VR LE, byte by byte: what DCMTK's normal mode re-encodes (undefined lengths,
    a wrong group length, UN for a known tag, UT, private UN)."""
    sc = b"1.2.840.10008.5.1.4.1.1.7\0"
    uidb = uid.encode() + b"\0" * (len(uid) % 2)
    item = _el(0x00080100, b"SH", b"121 ") + _el(0x00080104, b"LO", b"Odd ")
    group8 = (_el(0x00080005, b"CS", b"ISO_IR 100") + _el(0x00080016, b"UI", sc) + _el(0x00080018, b"UI", uidb)
              + _el(0x00080060, b"CS", b"OT") + _undefined_sq(0x00081032, [item, b""]))
    ds = (_el(0x00080000, b"UL", struct.pack("<I", 4242)) + group8
          + _el(0x00091010, b"UN", b"\1\2\3\4") + _el(0x00100010, b"PN", b"Doe^John")
          + _el(0x00100020, b"LO", b"ABC ") + _el(0x00181030, b"UN", b"PROTO1")
          + _el(0x0020000D, b"UI", b"1.2.826.0.1.3680043.10.5.77\0") + _el(0x00204000, b"LT", b"odd ")
          + _el(0x00321066, b"UT", b"some unlimited text ") + _undefined_sq(0x00400275, [])
          + _el(0x7FE00010, b"OB", b"\0\1\2\3"))
    meta_body = (_el(0x00020001, b"OB", b"\0\1") + _el(0x00020002, b"UI", sc) + _el(0x00020003, b"UI", uidb)
                 + _el(0x00020010, b"UI", b"1.2.840.10008.1.2.1\0") + _el(0x00020012, b"UI", b"1.2.3.4\0"))
    meta = _el(0x00020000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    return b"\0" * 128 + b"DICM" + meta + ds


def split_meta(data: bytes) -> tuple[bytes, bytes]:
    """(preamble + file meta, data set) by walking the explicit VR little endian group 0002."""
    if data[128:132] != b"DICM":
        return b"", data
    pos = 132
    while pos + 8 <= len(data) and struct.unpack("<H", data[pos:pos + 2])[0] == 2:
        if data[pos + 4:pos + 6] in (b"OB", b"OW", b"SQ", b"UT", b"UN"):
            pos += 12 + struct.unpack("<I", data[pos + 8:pos + 12])[0]
        else:
            pos += 8 + struct.unpack("<H", data[pos + 6:pos + 8])[0]
    return data[:pos], data[pos:]


def crafted_file(path: Path, command_uid: str, dataset_uid: str, source: str = "CT_small.dcm") -> Path:
    """A file whose meta (used by pynetdicom for the C-STORE command) and data set disagree as asked."""
    ds = pydicom.dcmread(TEST_FILES / source)
    ds.SOPInstanceUID = dataset_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    if command_uid != dataset_uid:  # pydicom keeps the meta in step: patch its first copy
        assert len(command_uid) == len(dataset_uid)
        data = path.read_bytes()
        path.write_bytes(data.replace(dataset_uid.encode(), command_uid.encode(), 1))
    return path
