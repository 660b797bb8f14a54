"""File-name prefixes beyond CT/MR: storescpd names files as DCMTK 3.6.7's storescp does for the same objects."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.support.peers import require_dcmtk, storescu

PRIVATE_CLASS = "1.2.826.0.1.3680043.10.5.99"  # unknown to both: accepted only with -pm
CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "US",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.1": "CR",  # Computed Radiography
    "1.2.840.10008.5.1.4.1.1.7": "SC",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.481.5": "RP",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.481.3": "RS",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.128": "PI",  # PET Image
    "1.2.840.10008.5.1.4.1.1.88.11": "SRt",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22": "SRe",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.59": "KO",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.1.2": "DXm",  # Digital Mammography X-Ray For Presentation
    "1.2.840.10008.5.1.4.1.1.104.1": "PDF",  # Encapsulated PDF
    PRIVATE_CLASS: "UNKNOWN",
}


def setup_module() -> None:
    require_dcmtk()


def minimal_object(directory: Path, sop_class: str) -> tuple[Path, str]:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Prefix^Test", "PREFIX", "OT"
    path = directory / f"{sop_class}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds.SOPInstanceUID


def send_with_pynetdicom(port: int, path: Path) -> None:
    ae = AE(ae_title="PREFIXES")
    ae.add_requested_context(PRIVATE_CLASS, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(path).Status == 0
    finally:
        assoc.release()


def prefixes(files: list[Path], instance_to_class: dict[str, str]) -> dict[str, str]:
    """SOP class -> the prefix in the file name `<prefix>.<SOPInstanceUID>`."""
    found = {}
    for f in files:
        prefix, _, instance = f.name.partition(".")
        found[instance_to_class[instance]] = prefix
    return found


def test_prefixes_match_dcmtk(daemon_factory, dcmtk_storescp, tmp_path: Path) -> None:
    from storescpd.dicom.sop_classes import file_prefix

    sent = tmp_path / "sent"
    sent.mkdir()
    objects = {sop_class: minimal_object(sent, sop_class) for sop_class in CLASSES}
    private = objects[PRIVATE_CLASS][0]
    files = [path for path, _ in objects.values() if path != private]  # storescu refuses an unknown class
    by_instance = {instance: sop_class for sop_class, (_, instance) in objects.items()}
    ours = daemon_factory("-pm")
    theirs = dcmtk_storescp("-pm")
    for port in (ours.port, theirs.port):
        result = storescu(port, files, "-R")
        assert result.returncode == 0, result.stderr
        send_with_pynetdicom(port, private)
    expected = prefixes(theirs.stored_files(), by_instance)
    assert len(expected) == len(CLASSES), "DCMTK storescp did not store every object"
    assert prefixes(ours.stored_files(), by_instance) == expected
    assert {c: file_prefix(c) for c in CLASSES} == expected
    assert expected == CLASSES  # the table above is what DCMTK 3.6.7 writes
