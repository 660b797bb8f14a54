"""Send pydicom test files through storescu -> storescp and compare the written data set bytes with the source.

Usage: roundtrip.py OUT.json 'SCP ARGS' 'SCU ARGS' [FILE...]
For each file: fresh output dir, one storescu run, then compare the bytes after the file meta
(or the whole file with -F) to the source's bytes after its meta.
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import STORESCU, TEST_FILES, run, storescp  # noqa: E402


def split_meta(data: bytes) -> tuple[bytes, bytes]:
    """(meta incl. preamble, dataset) by walking explicit-VR-LE group 0002 elements."""
    if data[128:132] != b"DICM":
        return b"", data
    pos = 132
    while pos + 8 <= len(data):
        group, elem = struct.unpack("<HH", data[pos:pos + 4])
        if group != 2:
            break
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack("<I", data[pos + 8:pos + 12])[0]
            pos += 12 + length
        else:
            length = struct.unpack("<H", data[pos + 6:pos + 8])[0]
            pos += 8 + length
    return data[:pos], data[pos:]


def meta_ts(meta: bytes) -> str | None:
    i = meta.find(b"\x02\x00\x10\x00UI")
    if i < 0:
        return None
    n = struct.unpack("<H", meta[i + 6:i + 8])[0]
    return meta[i + 8:i + 8 + n].rstrip(b"\0 ").decode()


def main(out: str, scp_args: str, scu_args: str, files: list[str]) -> None:
    files = files or sorted(glob.glob(os.path.join(TEST_FILES, "*.dcm")))
    work = tempfile.mkdtemp(prefix="roundtrip-")
    results = []
    outdir = os.path.join(work, "out")
    os.mkdir(outdir)
    dataset_only = "-F" in shlex.split(scp_args)
    with storescp(["-od", outdir, *shlex.split(scp_args)], log=os.path.join(work, "scp.log")) as (port, _):
        for path in files:
            for f in os.listdir(outdir):
                os.unlink(os.path.join(outdir, f))
            r = run([STORESCU, *shlex.split(scu_args), "127.0.0.1", str(port), path])
            written = os.listdir(outdir)
            src_meta, src_ds = split_meta(open(path, "rb").read())
            entry = {"file": os.path.basename(path), "src_ts": meta_ts(src_meta), "scu_rc": r.returncode,
                     "scu_stderr": r.stderr.strip().splitlines()[-2:], "written": written}
            if len(written) == 1:
                data = open(os.path.join(outdir, written[0]), "rb").read()
                meta, ds = (b"", data) if dataset_only else split_meta(data)
                entry.update(out_ts=meta_ts(meta), identical=(ds == src_ds), src_len=len(src_ds), out_len=len(ds))
                shutil.copy(os.path.join(outdir, written[0]), os.path.join(work, os.path.basename(path) + ".out"))
            results.append(entry)
    json.dump({"workdir": work, "scp_args": scp_args, "scu_args": scu_args, "results": results}, open(out, "w"), indent=1)
    for e in results:
        print(f'{e["file"]:45s} src={e["src_ts"]} out={e.get("out_ts")} identical={e.get("identical")} '
              f'len {e.get("src_len")}->{e.get("out_len")} rc={e["scu_rc"]} {"" if e["written"] else e["scu_stderr"]}')


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
