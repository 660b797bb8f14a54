"""Deterministic benchmark data sets, generated with pydicom and cached under bench/data/.

Every object carries random (seeded) pixel data, so a receiver that corrupts, truncates or
reorders bytes is caught by the PixelData hash. The manifest records, per file, the SOP
Instance UID, the SHA-256 of the PixelData bytes and the file size; the verifier compares
what a receiver wrote against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

MIB = 1024 * 1024
SEED = 20240808
GENERATOR_VERSION = 2  # bump when the content of generated files changes

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"
IMPLEMENTATION_CLASS_UID = "2.25.123975135410749328574513683049371923591"


@dataclass(frozen=True)
class DatasetSpec:
    """One kind of benchmark data: how many objects, and the pixel matrix of each."""

    name: str
    count: int
    rows: int
    columns: int
    frames: int
    sop_class: str
    modality: str

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * self.frames * 2  # 16 bits allocated

    @property
    def cache_key(self) -> str:
        return (f"{self.name}-n{self.count}-{self.rows}x{self.columns}x{self.frames}"
                f"-s{SEED}-v{GENERATOR_VERSION}")


# name -> (full spec, --quick spec). Adding a data set is one entry here.
DATASETS: dict[str, tuple[DatasetSpec, DatasetSpec]] = {
    # 500 CT images of 512x512x16 bit, about 0.5 MB each
    "ct": (DatasetSpec("ct", 500, 512, 512, 1, CT_IMAGE_STORAGE, "CT"),
           DatasetSpec("ct", 100, 512, 512, 1, CT_IMAGE_STORAGE, "CT")),
    # 2000 objects of about 3 KB (32x32x16 bit pixels plus header)
    "tiny": (DatasetSpec("tiny", 2000, 32, 32, 1, SECONDARY_CAPTURE_STORAGE, "OT"),
             DatasetSpec("tiny", 500, 32, 32, 1, SECONDARY_CAPTURE_STORAGE, "OT")),
    # 2 objects of 256 MiB of pixel data (512 frames of 512x512x16 bit); quick: 32 MiB
    "big": (DatasetSpec("big", 2, 512, 512, 512, MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE, "OT"),
            DatasetSpec("big", 2, 512, 512, 64, MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE, "OT")),
}


def spec_for(name: str, quick: bool) -> DatasetSpec:
    full, small = DATASETS[name]
    return small if quick else full


def _uid(*parts: object) -> str:
    """A deterministic UUID-derived UID (PS3.5 B.2) from the given parts."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _build(spec: DatasetSpec, index: int, pixels: bytes) -> Dataset:
    sop_uid = _uid(SEED, spec.cache_key, index, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = spec.sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = spec.sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(SEED, spec.cache_key, "study")
    ds.SeriesInstanceUID = _uid(SEED, spec.cache_key, "series")
    ds.FrameOfReferenceUID = _uid(SEED, spec.cache_key, "for")
    ds.PatientName = f"BENCH^{spec.name.upper()}"
    ds.PatientID = f"BENCH-{spec.name}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "BENCH1"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.Modality = spec.modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    return ds


def _random_bytes(rng: random.Random, n: int, chunk: int = 16 * MIB) -> bytes:
    """rng.randbytes in pieces: one call cannot produce 256 MiB (n * 8 bits overflows a C int)."""
    return b"".join(rng.randbytes(min(chunk, n - i)) for i in range(0, n, chunk))


def pixel_hash(pixels: bytes) -> str:
    return hashlib.sha256(pixels).hexdigest()


def ensure_dataset(spec: DatasetSpec, data_root: Path, log=print) -> dict:
    """Generate the data set unless a complete cached copy exists; return its manifest.

    Manifest: {"spec": ..., "files": [{"path", "sop_instance_uid", "pixel_sha256", "size"}],
    "total_bytes": int}.
    """
    directory = data_root / spec.cache_key
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if all((directory / f["path"]).is_file() and (directory / f["path"]).stat().st_size == f["size"]
               for f in manifest["files"]):
            manifest["directory"] = str(directory)
            return manifest
        log(f"  cached data set {directory} is incomplete, regenerating")

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{SEED}/{spec.cache_key}")
    log(f"  generating {spec.count} x {spec.pixel_bytes / MIB:.3g} MiB objects into {directory}")
    files = []
    for index in range(spec.count):
        pixels = _random_bytes(rng, spec.pixel_bytes)
        ds = _build(spec, index, pixels)
        name = f"{spec.name}{index:05d}.dcm"
        tmp = directory / (name + ".tmp")
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, directory / name)
        files.append({"path": name, "sop_instance_uid": ds.SOPInstanceUID,
                      "pixel_sha256": pixel_hash(pixels), "size": (directory / name).stat().st_size})
        del ds, pixels
    manifest = {"spec": spec.__dict__, "files": files,
                "total_bytes": sum(f["size"] for f in files)}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    manifest["directory"] = str(directory)
    return manifest


def warm_page_cache(manifest: dict) -> None:
    """Read every file once so the sender reads from memory in every run."""
    buf = bytearray(4 * MIB)
    for f in manifest["files"]:
        with open(Path(manifest["directory"]) / f["path"], "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
