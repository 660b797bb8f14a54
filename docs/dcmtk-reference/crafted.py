"""C-STOREs whose command Affected SOP Class/Instance UID are hostile or differ from the data set's.

Usage: crafted.py PORT
Builds the C-STORE-RQ primitive by hand (pynetdicom DIMSE layer) so the command UIDs are free.
"""
from __future__ import annotations

import sys
import time
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dimse_primitives import C_STORE

_config.ENFORCE_UID_CONFORMANCE = False
SC = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"


def encode(sop_class: str, sop_instance: str) -> BytesIO:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientID = "CRAFT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.2.9"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return BytesIO(buf.getvalue())


def store(assoc, msg_id: int, cmd_class: str, cmd_inst: str, ds_class: str, ds_inst: str) -> str:
    req = C_STORE()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = cmd_class
    req.AffectedSOPInstanceUID = cmd_inst
    req.Priority = 2
    req.DataSet = encode(ds_class, ds_inst)
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == cmd_class)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    assoc.dimse.send_msg(req, cx.context_id)
    _, rsp = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    if rsp is None:
        return "no response"
    return f"status=0x{rsp.Status:04X}" + (f" ErrorComment={rsp.ErrorComment!r}" if getattr(rsp, "ErrorComment", None) else "")


CASES = [
    ("instance '../../evil'", SC, "../../evil", SC, "../../evil"),
    ("instance 'a/b'", SC, "1.2/3", SC, "1.2/3"),
    ("cmd instance != data set instance", SC, "1.2.826.0.1.3680043.10.6.1", SC, "1.2.826.0.1.3680043.10.6.2"),
    ("cmd class SC != data set class CT", SC, "1.2.826.0.1.3680043.10.6.3", CT, "1.2.826.0.1.3680043.10.6.3"),
    ("space-padded UIDs in data set", SC, "1.2.826.0.1.3680043.10.6.4", SC + " ", "1.2.826.0.1.3680043.10.6.4 "),
]

if __name__ == "__main__":
    port = int(sys.argv[1])
    ae = AE(ae_title="CRAFTSCU")
    ae.add_requested_context(SC, [ExplicitVRLittleEndian])
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    for i, (label, cc, ci, dc, di) in enumerate(CASES, 1):
        print(f"{label:40s} cmd=({cc}, {ci!r}) ds=({dc!r}, {di!r}) -> {store(assoc, i, cc, ci, dc, di)}", flush=True)
    assoc.release()
