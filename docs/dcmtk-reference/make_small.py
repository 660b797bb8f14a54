"""Write N tiny Secondary Capture objects (explicit VR LE) to DIR.  Usage: make_small.py DIR [N]"""
import os
import sys

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300
os.makedirs(out, exist_ok=True)
for i in range(n):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.4.{i}"
    ds.PatientID = "TN"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.2.1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(os.path.join(out, f"{i:03d}.dcm"), enforce_file_format=True)
