"""Real peers: DCMTK's storescu, echoscu and storescp (the reference), and a pynetdicom SCU."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Sequence

import pytest

from tests.support.paths import DCMTK
from tests.support.processes import free_port

PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def require_dcmtk() -> None:
    """Fail (never skip) a module that needs DCMTK where it is not installed."""
    if not (DCMTK / "storescu").exists():
        pytest.fail("DCMTK is not installed: apt-get install dcmtk (.ci/run does this)")


def storescu(port: int, files: Sequence[Path | str], *args: str, timeout: float = 120.0,
             host: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sending `files` in one association; waits for it."""
    return subprocess.run([str(DCMTK / "storescu"), *args, host, str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout, env=PEER_ENV)


def start_storescu(port: int, path: Path) -> subprocess.Popen:
    """DCMTK's storescu sending one file, in the background."""
    return subprocess.Popen([str(DCMTK / "storescu"), "127.0.0.1", str(port), str(path)], env=PEER_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def echoscu(port: int, *args: str, timeout: float = 30.0, host: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:
    """DCMTK's echoscu: one C-ECHO; waits for it."""
    return subprocess.run([str(DCMTK / "echoscu"), *args, host, str(port)],
                          capture_output=True, text=True, timeout=timeout, env=PEER_ENV)


class DcmtkStorescp:
    """DCMTK's own storescp with the same flags: the reference for differential tests."""

    def __init__(self, workdir: Path, args: Sequence[str]) -> None:
        self.output = workdir / "dcmtk-out"
        self.output.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "dcmtk-storescp.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(DCMTK / "storescp"), "-od", str(self.output), *args, str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, env=PEER_ENV, cwd=workdir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if echoscu(self.port).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError("DCMTK storescp did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.output.rglob("*") if p.is_file())


# Every transfer syntax a profile might accept, proposed for each abstract syntax.
PROPOSED_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                     "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90",
                     "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.100"]


def accepted_contexts(port: int, abstract_syntaxes: list[str]) -> set[tuple[str, str]]:
    """(abstract syntax, transfer syntax) of every context the SCP on `port` accepts, proposed by
    pynetdicom 120 at a time (each with PROPOSED_SYNTAXES)."""
    from pynetdicom import AE

    accepted: set[tuple[str, str]] = set()
    for start in range(0, len(abstract_syntaxes), 120):
        ae = AE(ae_title="PROFILES")
        for uid in abstract_syntaxes[start:start + 120]:
            ae.add_requested_context(uid, PROPOSED_SYNTAXES)
        assoc = ae.associate("127.0.0.1", port)
        if not assoc.is_established:
            continue
        accepted |= {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        assoc.release()
    return accepted


def send_raw(port: int, path: Path, calling_ae: str = "HOSTILE") -> int:
    """Send a file as it is (command UIDs from its meta) with pynetdicom; returns the status.
    (DCMTK's storescu takes the UIDs from the data set: it never sends a mismatch.)"""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, _config

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ds.file_meta.MediaStorageSOPClassUID, ExplicitVRLittleEndian)
    old = (_config.STORE_SEND_CHUNKED_DATASET, _config.ENFORCE_UID_CONFORMANCE)
    _config.STORE_SEND_CHUNKED_DATASET, _config.ENFORCE_UID_CONFORMANCE = True, False
    try:
        assoc = ae.associate("127.0.0.1", port)
        assert assoc.is_established
        try:
            rsp = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET, _config.ENFORCE_UID_CONFORMANCE = old
    assert "Status" in rsp, "no response"
    return int(rsp.Status)
