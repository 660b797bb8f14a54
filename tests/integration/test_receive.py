"""The receive path through real peers: DCMTK's storescu/echoscu against storescpd."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    RLELossless,
)
from pynetdicom import AE

from tests.support.paths import TEST_FILES
from tests.support.peers import echoscu, require_dcmtk, storescu

UNCOMPRESSED = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "rtdose.dcm", "MR_small_implicit.dcm",
                "MR_small_bigendian.dcm", "waveform_ecg.dcm", "test-SR.dcm", "priv_SQ.dcm", "nested_priv_SQ.dcm",
                "UN_sequence.dcm", "examples_rgb_color.dcm", "liver_1frame.dcm"]
# One file per transfer syntax, each with its own SOP Instance UID.
COMPRESSED = ["JPEG2000.dcm", "MR_small_RLE.dcm", "JPEG-lossy.dcm", "JPEGLSNearLossless_08.dcm",
              "image_dfl.dcm", "SC_rgb_jpeg_dcmtk.dcm", "examples_jpeg2k.dcm", "SC_rgb_jpeg_gdcm.dcm"]


def setup_module() -> None:
    require_dcmtk()


def test_echo_answers_success(daemon_factory) -> None:
    d = daemon_factory("-v")
    result = echoscu(d.port, "-v")
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr


def test_storescu_files_land_with_dcmtk_names(daemon_factory) -> None:
    d = daemon_factory()
    files = [TEST_FILES / n for n in ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]]
    result = storescu(d.port, files)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in d.stored_files()}
    expected = set()
    for f in files:
        ds = pydicom.dcmread(f)
        prefix = {"CT": "CT", "MR": "MR", "RTPLAN": "RP"}[ds.Modality]
        expected.add(f"{prefix}.{ds.SOPInstanceUID}")
    assert names == expected


def test_stored_file_keeps_sent_dataset_and_transfer_syntax(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory("+xi")
    # +xi accepts implicit VR only: storescu converts, and the file is stored as negotiated.
    result = storescu(d.port, [TEST_FILES / "MR_small.dcm"])
    assert result.returncode == 0, result.stderr
    (stored,) = d.stored_files()
    ds = pydicom.dcmread(stored)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    sent = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    assert ds.PixelData == sent.PixelData
    assert ds.file_meta.SourceApplicationEntityTitle == "STORESCU"


def test_no_staging_file_left_after_association(daemon_factory) -> None:
    d = daemon_factory()
    storescu(d.port, [TEST_FILES / "CT_small.dcm"])
    assert list((d.output / ".storescpd-staging").iterdir()) == []


@pytest.mark.parametrize("flags,expected_ts", [
    ((), ExplicitVRLittleEndian),
    (("+xi",), ImplicitVRLittleEndian),
    (("+xe",), ExplicitVRLittleEndian),
    (("+xb",), ExplicitVRBigEndian),
    (("+xb", "+xe"), ExplicitVRLittleEndian),  # option blocks: the last one wins
    (("+xa",), JPEG2000),
    (("+xr",), RLELossless),
])
def test_transfer_syntax_preference_is_ours(daemon_factory, flags: tuple[str, ...], expected_ts: str) -> None:
    d = daemon_factory(*flags)
    ae = AE(ae_title="PREFTEST")
    proposed = [ImplicitVRLittleEndian, RLELossless, ExplicitVRBigEndian, JPEG2000, ExplicitVRLittleEndian]
    ae.add_requested_context(CTImageStorage, proposed)
    assoc = ae.associate("127.0.0.1", d.port)
    try:
        assert assoc.is_established
        (cx,) = assoc.accepted_contexts
        assert cx.transfer_syntax[0] == expected_ts
    finally:
        assoc.release()


def test_accept_all_stores_compressed_as_received(daemon_factory) -> None:
    d = daemon_factory("+xa")
    files = [TEST_FILES / n for n in COMPRESSED]
    sent = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="COMPRESSED")
    for ds in sent:  # one context per file: its own (compressed) transfer syntax only
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", d.port)
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(f).Status for f in files]
    finally:
        assoc.release()
    assert statuses == [0] * len(files)
    stored = {pydicom.dcmread(p).SOPInstanceUID: p for p in d.stored_files()}
    for f, ds in zip(files, sent):
        got = pydicom.dcmread(stored[ds.SOPInstanceUID])
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID, f.name
        assert got.PixelData == ds.PixelData, f.name


def test_refuse_rejects_association(daemon_factory) -> None:
    d = daemon_factory("--refuse")
    result = echoscu(d.port)
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr


def test_ignore_receives_but_stores_nothing(daemon_factory) -> None:
    d = daemon_factory("--ignore")
    result = storescu(d.port, [TEST_FILES / "CT_small.dcm"])
    assert result.returncode == 0, result.stderr
    assert d.stored_files() == []


def _store_with(port: int, ds: pydicom.Dataset, ts: str = ExplicitVRLittleEndian,
                roles: bool = False) -> tuple[bool, int | None]:
    ae = AE(ae_title="EDGE")
    ae.add_requested_context(ds.SOPClassUID, ts)
    extended = []
    if roles:
        from pynetdicom.sop_class import CTImageStorage as CT
        from pynetdicom import build_role

        extended = [build_role(CT, scu_role=True, scp_role=False)]
    assoc = ae.associate("127.0.0.1", port, ext_neg=extended or None)
    if not assoc.is_established:
        return False, None
    try:
        accepted = bool(assoc.accepted_contexts)
        status = assoc.send_c_store(ds).Status if accepted else None
    finally:
        assoc.release()
    return accepted, status


def _private_object() -> pydicom.Dataset:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.9999.1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_promiscuous_mode_accepts_an_unknown_sop_class(daemon_factory) -> None:
    plain = daemon_factory()
    assert _store_with(plain.port, _private_object()) == (False, None)  # context refused
    assert plain.stored_files() == []
    d = daemon_factory("-pm")
    accepted, status = _store_with(d.port, _private_object())
    assert (accepted, status) == (True, 0)
    assert [p.name for p in d.stored_files()] == [f"UNKNOWN.{_private_object().SOPInstanceUID}"]


def test_role_selection_from_the_peer_is_answered(daemon_factory) -> None:
    d = daemon_factory()
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert _store_with(d.port, ds, roles=True) == (True, 0)
    assert len(d.stored_files()) == 1


def test_log_config_writes_dcmtk_style_log_file(daemon_factory, tmp_path: Path) -> None:
    log = tmp_path / "receiver.log"
    cfg = tmp_path / "logger.cfg"
    cfg.write_text("log4cplus.rootLogger = INFO, logfile\n"
                   "log4cplus.appender.logfile = log4cplus::FileAppender\n"
                   f"log4cplus.appender.logfile.File = {log}\n"
                   "log4cplus.appender.logfile.layout = log4cplus::PatternLayout\n"
                   "log4cplus.appender.logfile.layout.ConversionPattern = %5p: %m%n\n")
    d = daemon_factory("-lc", str(cfg))
    assert storescu(d.port, [TEST_FILES / "CT_small.dcm"]).returncode == 0
    d.stop()
    text = log.read_text()
    assert " INFO: storing DICOM file: " in text
    assert "storing DICOM file" not in d.log()  # stderr is not a destination in that file
