"""Send files byte-exactly (pynetdicom send_c_store(path): the encoded data set after the file meta goes on
the wire unchanged, in the file's own transfer syntax) to DCMTK storescp and compare written vs sent bytes.

Usage: roundtrip_raw.py OUT.json 'SCP ARGS' FILE...
Files lacking SOP Class/Instance UID are first copied with pydicom adding them (the copy is what is sent).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile

from pydicom import dcmread
from pynetdicom import AE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import storescp  # noqa: E402
from roundtrip import meta_ts, split_meta  # noqa: E402


def prepare(path: str, work: str) -> str:
    ds = dcmread(path)
    if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
        return path
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.5." + str(abs(hash(os.path.basename(path))) % 10**9)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    copy = os.path.join(work, "patched-" + os.path.basename(path))
    ds.save_as(copy)
    return copy


def main(out: str, scp_args: str, files: list[str]) -> None:
    work = tempfile.mkdtemp(prefix="roundtrip-raw-")
    outdir = os.path.join(work, "out")
    os.mkdir(outdir)
    args = shlex.split(scp_args)
    results = []
    with storescp(["-od", outdir, *args], log=os.path.join(work, "scp.log")) as (port, _):
        for path in files:
            for f in os.listdir(outdir):
                os.unlink(os.path.join(outdir, f))
            sent = prepare(path, work)
            ds = dcmread(sent, stop_before_pixels=True)
            ae = AE(ae_title="RAWSCU")
            ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
            assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
            entry = {"file": os.path.basename(path), "patched": sent != path, "src_ts": ds.file_meta.TransferSyntaxUID}
            if assoc.is_established and assoc.accepted_contexts:
                st = assoc.send_c_store(sent)
                entry["status"] = f"0x{st.Status:04X}" if st else None
                assoc.release()
            else:
                entry["status"] = "context rejected" if assoc.is_established else "association failed"
                if assoc.is_established:
                    assoc.release()
            written = os.listdir(outdir)
            entry["written"] = written
            if len(written) == 1:
                data = open(os.path.join(outdir, written[0]), "rb").read()
                meta, dsb = (b"", data) if "-F" in args else split_meta(data)
                _, src = split_meta(open(sent, "rb").read())
                entry.update(out_ts=meta_ts(meta) if meta else None, identical=dsb == src, src_len=len(src), out_len=len(dsb))
                shutil.copy(os.path.join(outdir, written[0]), os.path.join(work, os.path.basename(path) + ".out"))
            results.append(entry)
    json.dump({"workdir": work, "scp_args": scp_args, "results": results}, open(out, "w"), indent=1)
    for e in results:
        print(f'{e["file"]:36s} {"(patched) " if e["patched"] else ""}ts={e["src_ts"]} status={e["status"]} '
              f'out_ts={e.get("out_ts")} identical={e.get("identical")} len {e.get("src_len")}->{e.get("out_len")}')


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
