"""storescpd against DCMTK storescp 3.6.7: same flags, same files from the same sender, same output.

CASES is the whole matrix: one line per case. Each case starts DCMTK's storescp and storescpd
with the same flags, sends each batch of files in one association (DCMTK storescu, or a raw
sender that puts the files' bytes on the wire unchanged) to both, and compares what each wrote:
- "bytes": same file names, same transfer syntax, same encoded data set bytes after the file
  meta, same file meta except the implementation class UID / version name (and the meta group
  length that depends on the version name's length);
- "dataset": same file names and transfer syntax, data sets equal element by element (where
  DCMTK's bytes differ from storescpd's by design: see docs/options.md);
- "pattern": file names equal once the generated part is masked (the unique UID of +uf, the
  time stamp and serial of -tn), files matched by SOP Instance UID and compared as "bytes".
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from storescpd.store.convert import dataset_elements
from tests.support.ci import skip_or_fail
from tests.support.dicomfiles import crafted_bytes, split_meta
from tests.support.paths import DCMTK, ROOT, STORESCPD, TEST_FILES
from tests.support.peers import accepted_contexts, require_dcmtk, storescu
from tests.support.processes import free_port

# Files with distinct SOP Instance UIDs, sendable by storescu, accepted by storescp's default list.
BATCH = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "rtdose.dcm", "waveform_ecg.dcm",
         "test-SR.dcm", "examples_rgb_color.dcm", "reportsi.dcm", "SC_rgb_small_odd.dcm", "ExplVR_BigEnd.dcm",
         "@priv_SQ", "@nested_priv_SQ", "@UN_sequence", "@crafted"]
SMALL = ["CT_small.dcm", "rtplan.dcm", "test-SR.dcm", "@crafted"]
# For the raw sender: files whose meta agrees with their data set (rtplan.dcm's does not).
RAW = ["CT_small.dcm", "MR_small.dcm", "test-SR.dcm", "@crafted"]
# Compressed transfer syntaxes, each file with its own SOP Instance UID, sent as they are (raw).
COMPRESSED = ["JPEG2000.dcm", "MR_small_RLE.dcm", "JPEG-lossy.dcm", "JPEGLSNearLossless_08.dcm",
              "SC_rgb_jpeg_dcmtk.dcm", "examples_jpeg2k.dcm", "SC_rgb_jpeg_gdcm.dcm"]
# Same SOP Instance UID as MR_small: each goes in its own batch.
MR_VARIANTS = [["MR_small_implicit.dcm"], ["MR_small_bigendian.dcm"]]
ALL = [BATCH, *MR_VARIANTS]


@dataclass(frozen=True)
class Case:
    id: str
    flags: tuple[str, ...]
    batches: list[list[str]]
    compare: str = "bytes"
    sender: str = "storescu"  # or "raw": the file's data set bytes go on the wire unchanged
    sender_args: tuple[str, ...] = ()


CFG = str(ROOT / "etc" / "storescp.cfg")

CASES = [
    Case("default", (), ALL),
    Case("write-dataset", ("-F",), ALL),
    Case("implicit-network", ("+xi",), [BATCH]),
    Case("big-endian-network", ("+xb",), [BATCH]),
    Case("extension", ("-fe", ".dcm"), [SMALL]),
    Case("unique-names", ("+uf",), [SMALL], compare="pattern"),
    Case("time-names", ("-tn", "-uf"), [SMALL], compare="pattern"),  # -tn is not in the -uf/+uf block
    Case("time-names-extension", ("-tn", "-fe", ".dcm"), [SMALL], compare="pattern"),
    Case("write-little", ("+te",), ALL),
    Case("write-big", ("+tb",), ALL),
    Case("write-implicit", ("+ti",), ALL),
    Case("write-deflated", ("+td",), ALL),
    Case("write-deflated-level-9", ("+td", "+cl", "9"), [SMALL]),
    Case("write-deflated-dataset", ("+td", "-F"), [SMALL]),
    Case("big-network-write-implicit", ("+xb", "+ti"), [SMALL]),
    Case("bit-preserving", ("+B",), ALL),
    Case("length-undefined", ("-e",), [BATCH]),
    Case("group-length-remove", ("-g",), [BATCH]),
    Case("group-length-create", ("+g",), [BATCH]),
    Case("group-length-create-implicit", ("+g", "+ti"), [SMALL]),
    Case("disable-new-vr", ("-u",), [BATCH]),
    Case("convert-un", ("+uc",), [BATCH]),
    Case("padding", ("+p", "8", "4"), [SMALL], compare="dataset"),  # DCMTK pads to its own meta length
    Case("profile-default", ("-xf", CFG, "Default"), [BATCH]),
    Case("raw-bit-preserving", ("+B",), [RAW], sender="raw"),
    Case("accept-all-compressed", ("+xa",), [COMPRESSED], compare="dataset", sender="raw"),
    Case("accept-all-compressed-bit-preserving", ("+xa", "+B"), [COMPRESSED], sender="raw"),
    # storescu re-deflates (pynetdicom's raw sender would put an odd-length stream on the wire, which
    # DCMTK refuses with "Odd Fragment Length" and storescpd accepts).
    Case("accept-all-deflated", ("+xa",), [["image_dfl.dcm"]], compare="dataset", sender_args=("-xd",)),
    # DCMTK's normal mode makes undefined lengths explicit and fixes group lengths; storescpd
    # keeps the received bytes unless an output option is named (docs/options.md): +e alone
    # (its default) re-encodes as DCMTK's does.
    Case("raw-default", (), [RAW], compare="dataset", sender="raw"),
    Case("raw-length-undefined", ("-e",), [RAW], sender="raw"),
    Case("raw-length-explicit", ("+e",), [RAW], sender="raw"),
    Case("raw-group-length-recalc", ("+g=", "+t="), [RAW], sender="raw"),
    Case("raw-group-length-create", ("+g", "+te"), [RAW], sender="raw"),
    Case("raw-write-implicit", ("+ti",), [RAW], sender="raw"),
]


def setup_module() -> None:
    require_dcmtk()


# --- inputs -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Input file paths; '@name' is a pydicom test file given SOP UIDs, '@crafted' the file above."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "crafted.dcm").write_bytes(crafted_bytes("1.2.826.0.1.3680043.10.5.77.1"))
    for n, name in enumerate(["priv_SQ", "nested_priv_SQ", "UN_sequence"], 1):
        ds = pydicom.dcmread(TEST_FILES / f"{name}.dcm", force=True)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.5.78.{n}"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # UN_sequence claims JPEG but has no pixels
        ds.save_as(folder / f"{name}.dcm", implicit_vr=False, little_endian=True, enforce_file_format=True)

    def path(name: str) -> Path:
        return folder / f"{name[1:]}.dcm" if name.startswith("@") else TEST_FILES / name

    return path


# --- senders ----------------------------------------------------------------------------------

RAW_SENDER = """
import sys
from pydicom import dcmread
from pynetdicom import AE, _config
_config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes after its meta go on the wire as they are
ae = AE(ae_title="RAWSEND")
files = sys.argv[2:]
for f in files:
    meta = dcmread(f, stop_before_pixels=True).file_meta
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
assoc = ae.associate("127.0.0.1", int(sys.argv[1]))
assert assoc.is_established
statuses = [assoc.send_c_store(f).Status for f in files]
assoc.release()
sys.exit(0 if statuses == [0] * len(files) else 1)
"""


def send(case: Case, port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    if case.sender == "raw":
        return subprocess.run([sys.executable, "-c", RAW_SENDER, str(port), *map(str, files)],
                              capture_output=True, text=True, timeout=60)
    return storescu(port, files, "-nh", *case.sender_args, timeout=60)


# --- comparison -------------------------------------------------------------------------------

IDENTITY = {0x00020000, 0x00020012, 0x00020013}  # implementation class UID / version name (and the length)


def meta_elements(meta: bytes) -> dict[int, object]:
    if not meta:
        return {}
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(meta), force=True)
    return {int(e.tag): e.value for e in ds.file_meta if int(e.tag) not in IDENTITY}


def elements(data: bytes) -> list:
    return dataset_elements(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), force=True))


_GENERATED = re.compile(r"\.X\.[0-9.]+|^[0-9]{17}(_[0-9]{4})?(?=\.)")  # +uf's UID, -tn's time and serial


def masked(name: str) -> str:
    return _GENERATED.sub("<generated>", name)


def compare_outputs(case: Case, ours: Path, theirs: Path) -> None:
    mine = {p.name: p.read_bytes() for p in ours.iterdir() if p.is_file()}
    dcmtk = {p.name: p.read_bytes() for p in theirs.iterdir() if p.is_file()}
    if case.compare == "pattern":
        assert sorted(map(masked, mine)) == sorted(map(masked, dcmtk)), "file name patterns differ"
        mine = {pydicom.dcmread(ours / n, force=True).SOPInstanceUID: b for n, b in mine.items()}
        dcmtk = {pydicom.dcmread(theirs / n, force=True).SOPInstanceUID: b for n, b in dcmtk.items()}
    assert sorted(mine) == sorted(dcmtk), "file names differ"
    for name in sorted(dcmtk):
        a_meta, a_ds = split_meta(dcmtk[name])
        b_meta, b_ds = split_meta(mine[name])
        assert meta_elements(b_meta) == meta_elements(a_meta), f"{name}: file meta differs"
        if case.compare == "dataset":
            assert elements(mine[name]) == elements(dcmtk[name]), f"{name}: data sets differ"
        else:
            assert b_ds == a_ds, f"{name}: data set bytes differ ({len(b_ds)} vs DCMTK's {len(a_ds)})"


def _clear(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            p.unlink()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_output_as_dcmtk(case: Case, inputs, daemon_factory, dcmtk_storescp) -> None:
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(daemon_factory, *case.flags), pool.submit(dcmtk_storescp, *case.flags)]
        ours, theirs = (f.result() for f in started)
    for batch in case.batches:
        files = [inputs(n) for n in batch]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda port: send(case, port, files), (ours.port, theirs.port)))
        assert results[0].returncode == results[1].returncode, (results[0].stderr, results[1].stderr)
        assert results[1].returncode == 0, results[1].stderr
        compare_outputs(case, ours.output, theirs.output)
        _clear(ours.output)
        _clear(theirs.output)


# --- refused combinations ---------------------------------------------------------------------

REFUSED = [
    ("+B", "+te"), ("+B", "+tb"), ("+B", "+ti"), ("+td", "+B"), ("+B", "-u"), ("+B", "+u"), ("+B", "+g"),
    ("+B", "-g"), ("+B", "+g="), ("+B", "-e"), ("+B", "+e"), ("+B", "+p", "8", "4"), ("-F", "+p", "8", "4"),
    ("+te", "+cl", "5"), ("+xs", "+te"), ("+xr", "+ti"), ("+xy", "+tb"), ("+xa", "+td"), ("+xv", "+te"),
    ("-xf", CFG, "Default", "-pm"), ("-xf", CFG, "Default", "+xe"), ("+xi", "-xf", CFG, "Default"),
    ("+uf", "-tn"), ("-tn", "+uf"),
    ("+B", "-ss", "P"), ("+B", "-su", "P"), ("-sp", "+B"),
    ("-xcs", "true"), ("-rns",), ("-rns", "-tos", "5"), ("-tos", "5"), ("-tos", "0"),
    ("+cl", "3", "+tb"), ("+ti", "+cl", "3"),
]


@pytest.mark.parametrize("flags", REFUSED, ids=[" ".join(f).replace(CFG, "CFG") for f in REFUSED])
def test_refused_like_dcmtk(flags: tuple[str, ...], tmp_path: Path) -> None:
    port = str(free_port())
    dcmtk = subprocess.run([str(DCMTK / "storescp"), "-od", str(tmp_path), *flags, port],
                           capture_output=True, text=True, timeout=10)
    ours = subprocess.run([STORESCPD, "-od", str(tmp_path), *flags, port],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    (error,) = [line[len("error: "):] for line in (dcmtk.stdout + dcmtk.stderr).splitlines()
                if line.startswith("error: ")]
    assert dcmtk.returncode == 1
    assert ours.returncode == dcmtk.returncode
    assert error in ours.stderr


def test_accepted_where_dcmtk_accepts(tmp_path: Path) -> None:
    # DCMTK takes these silently: +cl without +td (same TS), +B with -F, +B +uc, deflated network +te.
    for flags in (("+cl", "5"), ("+B", "-F"), ("+B", "+uc"), ("+xd", "+te"), ("+B", "+t=")):
        ours = subprocess.run([STORESCPD, "-od", str(tmp_path), *flags,
                               "--check-config", "11112"], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert ours.returncode == 0, (flags, ours.stderr)


# --- negotiation profiles ---------------------------------------------------------------------

def _profiles() -> list[str]:
    from storescpd.dicom.asconfig import load_all

    return [p.name for p in load_all(CFG).values()]


@pytest.mark.parametrize("profile", _profiles())
def test_profile_accepts_what_dcmtk_accepts(profile: str, daemon_factory, dcmtk_storescp) -> None:
    from storescpd.dicom.sop_classes import STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS

    ours = daemon_factory("-xf", CFG, profile)
    theirs = dcmtk_storescp("-xf", CFG, profile)
    proposed = [VERIFICATION_SOP_CLASS, *(uid for uid, _, _ in STORAGE_SOP_CLASSES), "1.2.826.0.1.3680043.10.5.99"]
    mine = accepted_contexts(ours.port, proposed)
    assert mine == accepted_contexts(theirs.port, proposed)
    assert len(mine) > 100


def test_dcmtk_profile_file_reads_the_same_as_ours() -> None:
    from storescpd.dicom.asconfig import load_all

    dcmtk_file = Path("/etc/dcmtk/storescp.cfg")
    if not dcmtk_file.exists():
        skip_or_fail(f"DCMTK's {dcmtk_file} is not installed: apt-get install dcmtk (.ci/run does this)")
    assert {k: (p.contexts, p.roles, p.extended) for k, p in load_all(str(dcmtk_file)).items()} == \
        {k: (p.contexts, p.roles, p.extended) for k, p in load_all(CFG).items()}


def test_inputs_are_distinct(inputs) -> None:
    uids = [pydicom.dcmread(inputs(n), force=True, stop_before_pixels=True).SOPInstanceUID for n in BATCH]
    assert len(set(uids)) == len(uids)
