"""Send one minimal object per storage SOP class of the manual to DCMTK storescp; record file prefixes.

Usage: verify_sop_classes.py OUT.json
Each object's SOP Instance UID is 1.2.826.0.1.3680043.10.1.<index>, so the file name written by
storescp (<prefix>.<SOPInstanceUID>) maps back to the SOP class.  Classes refused in normal mode
are re-sent to `storescp -pm`.  A private class checks the fallback prefix.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import STORESCU, run, storescp  # noqa: E402
from parse_manpage import manual, parse  # noqa: E402

PYNETDICOM_OUTCOME: dict[str, str] = {}
ROOT = "1.2.826.0.1.3680043.10.1."
PRIVATE_CLASS = "1.2.826.0.1.3680043.10.999.1"


def make(path: str, sop_class: str, index: int) -> None:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"{ROOT}{index}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.2.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.3.1"
    ds.Modality = "OT"
    ds.PatientName = "Test^SOP"
    ds.PatientID = "SOP"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def send_pynetdicom(files: list[str], port: int) -> dict[str, str]:
    """Fallback SCU for SOP classes storescu 3.6.7 does not know; returns file -> outcome."""
    from pydicom import dcmread
    from pynetdicom import AE

    outcome = {}
    for path in files:
        ds = dcmread(path)
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
        if not assoc.is_established:
            outcome[path] = "association rejected/aborted"
            continue
        if not assoc.accepted_contexts:
            outcome[path] = "presentation context rejected: " + ", ".join(
                f"result={cx.result}" for cx in assoc.rejected_contexts)
            assoc.release()
            continue
        status = assoc.send_c_store(ds)
        outcome[path] = f"status=0x{status.Status:04X}" if status else "no status"
        assoc.release()
    return outcome


def send(files: list[str], scp_args: list[str], outdir: str, log: str) -> dict[int, str]:
    """Send FILES with storescu in batches of 100 (one combined presentation context per SOP class),
    then the files storescu skipped as unknown with pynetdicom; return index->file name."""
    with storescp(["-od", outdir, *scp_args], log=log) as (port, _):
        skipped = []
        for i in range(0, len(files), 100):
            batch = files[i:i + 100]
            r = run([STORESCU, "-R", "+C", "-nh", "127.0.0.1", str(port), *batch], timeout=120)
            sys.stderr.write(r.stderr[-2000:])
            skipped += [f for f in batch if f"{f}:" in r.stderr and "unknown storage SOP class" in r.stderr]
        PYNETDICOM_OUTCOME.update({f"{'pm' if '-pm' in scp_args else 'normal'}:{os.path.basename(k)}": v
                                   for k, v in send_pynetdicom(skipped, port).items()})
    names = {}
    for name in os.listdir(outdir):
        idx = name.rsplit(".", 1)[-1]
        if name.rsplit(".", 1)[0].endswith(ROOT.rstrip(".")) or ROOT in name:
            names[int(idx)] = name
    return names


def main(out: str) -> None:
    classes = [(n, u) for n, u in parse(manual())["sop_classes"] if u != "1.2.840.10008.1.1"]
    work = tempfile.mkdtemp(prefix="sopcls-")
    src = os.path.join(work, "src")
    os.mkdir(src)
    files = []
    for i, (_, uid) in enumerate(classes):
        path = os.path.join(src, f"{i:03d}.dcm")
        make(path, uid, i)
        files.append(path)
    normal = os.path.join(work, "normal")
    os.mkdir(normal)
    got = send(files, [], normal, os.path.join(work, "normal.log"))
    refused = [i for i in range(len(classes)) if i not in got]
    prom = os.path.join(work, "promiscuous")
    os.mkdir(prom)
    priv = os.path.join(src, "private.dcm")
    make(priv, PRIVATE_CLASS, 9999)
    got_pm = send([files[i] for i in refused] + [priv], ["-pm"], prom, os.path.join(work, "pm.log"))
    result = {
        "workdir": work,
        "classes": [
            {"name": n, "uid": u, "accepted": i in got,
             "file": got.get(i) or got_pm.get(i),
             "prefix": (got.get(i) or got_pm.get(i) or "").split(".", 1)[0] or None}
            for i, (n, u) in enumerate(classes)
        ],
        "refused_without_pm": [classes[i][1] for i in refused],
        "private_class_file_with_pm": got_pm.get(9999),
        "pynetdicom_outcome": PYNETDICOM_OUTCOME,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
