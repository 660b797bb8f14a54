"""DICOM TLS through real peers: DCMTK's storescu/echoscu +tls, Python ssl clients, DCMTK storescp +tls."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.api import api_daemon, sample
from tests.support.dicomfiles import split_meta
from tests.support.paths import DCMTK, STORESCPD, TEST_FILES
from tests.support.peers import PEER_ENV, echoscu, require_dcmtk, storescu
from tests.support.pki import OPENSSL, Pki, make_pki
from tests.support.processes import free_port, stop_process, wait_listening, wait_until

FILES = [TEST_FILES / n for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]


def setup_module() -> None:
    require_dcmtk()


def server_tls(pki: Pki) -> list[str]:
    return ["+tls", pki.server_key, pki.server_crt, "+cf", pki.ca_crt]


def client_tls(pki: Pki, who: str = "client") -> list[str]:
    return ["+tls", str(pki.dir / f"{who}.key"), str(pki.dir / f"{who}.crt"), "+cf", pki.ca_crt]


def python_client_context(pki: Pki, who: str | None = "client") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=pki.ca_crt)
    if who:
        ctx.load_cert_chain(str(pki.dir / f"{who}.crt"), str(pki.dir / f"{who}.key"))
    return ctx


def test_storescu_tls_store_lands(daemon_factory, pki: Pki) -> None:
    d = daemon_factory(*server_tls(pki))
    result = storescu(d.port, FILES, *client_tls(pki))
    assert result.returncode == 0, result.stderr + d.log()
    expected = {f"{ {'CT': 'CT', 'MR': 'MR', 'RTPLAN': 'RP'}[ds.Modality]}.{ds.SOPInstanceUID}"
                for ds in map(pydicom.dcmread, FILES)}
    assert {p.name for p in d.stored_files()} == expected


def test_plain_dicom_on_the_tls_port_is_refused(daemon_factory, pki: Pki) -> None:
    d = daemon_factory(*server_tls(pki))
    assert echoscu(d.port).returncode != 0
    d.wait_for_log("does not speak TLS")
    assert echoscu(d.port, *client_tls(pki)).returncode == 0


def test_required_client_certificate(daemon_factory, pki: Pki) -> None:
    d, api = api_daemon(daemon_factory, *server_tls(pki), "-rc")
    anonymous = echoscu(d.port, "+tla", "+cf", pki.ca_crt)
    assert anonymous.returncode != 0
    d.wait_for_log("the client sent no certificate")
    failures = "storescpd_tls_handshake_failures_total"
    # the worker's event reaches the API process asynchronously
    wait_until(lambda: sample(api.metrics(), failures, reason="no_client_certificate") >= 1, 10,
               "the handshake failure counted", interval=0.1)
    metrics = api.metrics()
    assert sample(metrics, failures, reason="no_client_certificate") == 1
    assert sample(metrics, failures, reason="untrusted_issuer") == 0
    signed = echoscu(d.port, *client_tls(pki))
    assert signed.returncode == 0, signed.stderr + d.log()
    assert sample(api.metrics(), failures, reason="no_client_certificate") == 1  # a good handshake counts nothing


def test_verify_peer_certificate_if_present(daemon_factory, pki: Pki) -> None:
    d = daemon_factory(*server_tls(pki), "-vc")
    assert echoscu(d.port, "+tla", "+cf", pki.ca_crt).returncode == 0
    assert echoscu(d.port, *client_tls(pki)).returncode == 0


def test_certificate_from_another_ca_is_untrusted(daemon_factory, pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other-ca", ca_name="another CA")
    d = daemon_factory(*server_tls(pki))
    result = echoscu(d.port, "+tls", other.client_key, other.client_crt, "+cf", pki.ca_crt)
    assert result.returncode != 0
    d.wait_for_log("not issued by a trusted CA")


def test_revoked_certificate_is_refused_with_crl(daemon_factory, pki: Pki) -> None:
    d = daemon_factory(*server_tls(pki), "+crl", pki.ca_crl)
    revoked = echoscu(d.port, *client_tls(pki, "revoked"))
    assert revoked.returncode != 0
    d.wait_for_log("client certificate is revoked")
    good = echoscu(d.port, *client_tls(pki))
    assert good.returncode == 0, good.stderr + d.log()


def _tls11_handshake(port: int, pki: Pki) -> str:
    ctx = python_client_context(pki)
    with pytest.warns(DeprecationWarning):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 only speaks TLS 1.1 at level 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls_sock:
            return str(tls_sock.version())


def test_tls11_client_is_refused_by_the_server_under_pg(daemon_factory, pki: Pki) -> None:
    legacy = daemon_factory(*server_tls(pki), "+px")  # retired BCP 195 profile: TLS 1.0+
    assert _tls11_handshake(legacy.port, pki) == "TLSv1.1"  # so the client can speak TLS 1.1
    d = daemon_factory(*server_tls(pki), "+pg")
    with pytest.raises(ssl.SSLError):
        _tls11_handshake(d.port, pki)
    log = d.wait_for_log("wrong protocol version")
    assert "bcp195-rfc8996" in log


def test_idle_tcp_connections_do_not_delay_a_tls_echo(daemon_factory, pki: Pki) -> None:
    d = daemon_factory(*server_tls(pki), "--prefork", "--workers", "2")
    idle = [socket.create_connection(("127.0.0.1", d.port), timeout=5) for _ in range(20)]
    try:
        started = time.monotonic()
        result = echoscu(d.port, *client_tls(pki), timeout=10)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr + d.log()
        assert elapsed < 2.0, f"TLS C-ECHO took {elapsed:.2f} s behind 20 idle connections"
    finally:
        for s in idle:
            s.close()


def test_stalled_handshake_is_bounded_by_acse_timeout(daemon_factory, pki: Pki) -> None:
    d = daemon_factory(*server_tls(pki), "-ta", "1", "--prefork", "--workers", "2")
    stalled = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    try:
        stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        assert echoscu(d.port, *client_tls(pki), timeout=10).returncode == 0  # another worker serves
        d.wait_for_log("no complete TLS handshake within 1 s", timeout=5)
    finally:
        stalled.close()


@pytest.mark.parametrize("mode", ["--prefork", "--single-process"])
def test_tls_port_beside_the_plain_port(mode: str, daemon_factory, pki: Pki) -> None:
    tls_port = free_port()
    d = daemon_factory(mode, *server_tls(pki), "--tls-port", str(tls_port), "--bind", "127.0.0.1")
    assert echoscu(d.port).returncode == 0, d.log()  # the main port stays plain
    deadline = time.monotonic() + 10
    while (result := echoscu(tls_port, *client_tls(pki))).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert result.returncode == 0, result.stderr + d.log()


def test_socket_activation_keeps_the_dicom_socket_plain_beside_dicom_tls(pki: Pki, tmp_path: Path) -> None:
    """Sockets named dicom and dicom-tls (two socket units, docs/tls.md), +tls and no --tls-port."""
    if shutil.which("systemd-socket-activate") is None:
        pytest.fail("systemd-socket-activate missing: apt-get install systemd (.ci/run does this)")
    out = tmp_path / "out"
    out.mkdir()
    dicom_port, tls_port = free_port(), free_port()
    log = tmp_path / "sa.log"
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{dicom_port}", "-l", f"127.0.0.1:{tls_port}",
         "--fdname=dicom:dicom-tls", "-E", f"PATH={os.environ['PATH']}", STORESCPD, *server_tls(pki),
         "-od", str(out), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        wait_listening(dicom_port)  # the first connection starts the daemon
        plain = echoscu(dicom_port)
        assert plain.returncode == 0, plain.stderr + log.read_text()
        secure = echoscu(tls_port, *client_tls(pki))
        assert secure.returncode == 0, secure.stderr + log.read_text()
        assert echoscu(tls_port).returncode != 0  # and the dicom-tls socket does not speak plain DICOM
    finally:
        stop_process(proc)


def test_expect_sni(daemon_factory, pki: Pki) -> None:
    d = daemon_factory(*server_tls(pki), "--expect-sni", "pacs.example")
    ae = AE(ae_title="SNITEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", d.port, tls_args=(python_client_context(pki), "pacs.example"))
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    wrong = ae.associate("127.0.0.1", d.port, tls_args=(python_client_context(pki), "other.example"))
    assert not wrong.is_established
    d.wait_for_log("client asked for server name 'other.example'")


def test_reload_with_broken_key_keeps_the_old_one(daemon_factory, pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    key.write_bytes(Path(pki.server_key).read_bytes())
    d = daemon_factory("+tls", str(key), pki.server_crt, "+cf", pki.ca_crt, "--prefork", "--workers", "1")
    key.write_text("not a key\n")
    d.notify.messages.clear()
    d.proc.send_signal(signal.SIGHUP)
    log = d.wait_for_log("reload failed")
    assert str(key) in log
    result = echoscu(d.port, *client_tls(pki))
    assert result.returncode == 0, result.stderr + d.log()


def issue_server_certificate(pki: Pki, common_name: str) -> tuple[Path, Path]:
    """A server key and certificate with subject CN=common_name, signed by pki's CA."""
    key, csr, crt = (pki.dir / f"{common_name}.{ext}" for ext in ("key", "csr", "crt"))
    for args in (["req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                  "-subj", f"/CN={common_name}"],
                 ["x509", "-req", "-in", str(csr), "-CA", pki.ca_crt, "-CAkey", pki.ca_key, "-CAcreateserial",
                  "-out", str(crt), "-days", "7", "-sha256"]):
        subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=60)
    return key, crt


def presented_certificate(port: int) -> bytes:
    """The DER certificate the server presents, taken without verifying it (no client certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
    assert der, "the server presented no certificate"
    return der


def subject_cn(crt: Path) -> str:
    subject = ssl._ssl._test_decode_cert(str(crt))["subject"]  # type: ignore[attr-defined]
    return dict(rdn[0] for rdn in subject)["commonName"]


def test_reload_reads_the_new_key_and_certificate(daemon_factory, pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "second-ca", ca_name="second CA")
    b_key, b_crt = issue_server_certificate(other, "storescpd after reload")
    assert subject_cn(b_crt) == "storescpd after reload" != subject_cn(Path(pki.server_crt))
    key, crt = tmp_path / "server.key", tmp_path / "server.crt"
    key.write_bytes(Path(pki.server_key).read_bytes())
    crt.write_bytes(Path(pki.server_crt).read_bytes())
    a_der = ssl.PEM_cert_to_DER_cert(Path(pki.server_crt).read_text())
    b_der = ssl.PEM_cert_to_DER_cert(b_crt.read_text())
    trusting_b = ["+tls", pki.client_key, pki.client_crt, "+cf", other.ca_crt]  # the server trusts pki's CA
    d = daemon_factory("+tls", str(key), str(crt), "+cf", pki.ca_crt, "--prefork", "--workers", "2")
    assert presented_certificate(d.port) == a_der
    assert echoscu(d.port, *trusting_b).returncode != 0  # B's CA does not vouch for cert A
    key.write_bytes(b_key.read_bytes())
    crt.write_bytes(b_crt.read_bytes())
    d.notify.messages.clear()
    d.proc.send_signal(signal.SIGHUP)
    d.notify.wait_for("RELOADING=1")
    d.notify.wait_for("READY=1", after="RELOADING=1")
    assert "reload failed" not in d.log(), d.log()
    for _ in range(4):  # several connections: a worker still holding A's context would likely answer one
        der = presented_certificate(d.port)
        assert der == b_der, f"after the reload the server still presents {'A' if der == a_der else 'unknown'}"
    result = echoscu(d.port, *trusting_b)
    assert result.returncode == 0, result.stderr + d.log()


@pytest.fixture
def dcmtk_tls_storescp(tmp_path: Path, pki: Pki) -> Iterator:
    """DCMTK's storescp +tls (the conftest helper probes with plain DICOM, which TLS refuses)."""
    out = tmp_path / "dcmtk-out"
    out.mkdir()
    port = free_port()
    log = open(tmp_path / "dcmtk-storescp.log", "wb")
    proc = subprocess.Popen([str(DCMTK / "storescp"), *server_tls(pki), "-od", str(out), str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=PEER_ENV, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while echoscu(port, *client_tls(pki)).returncode != 0:
            assert time.monotonic() < deadline, "DCMTK storescp +tls did not start"
            time.sleep(0.1)
        yield port, out
    finally:
        stop_process(proc, 10)
        log.close()


def test_same_files_as_dcmtk_storescp_over_tls(daemon_factory, dcmtk_tls_storescp, pki: Pki) -> None:
    dcmtk_port, dcmtk_out = dcmtk_tls_storescp
    assert storescu(dcmtk_port, FILES, *client_tls(pki)).returncode == 0
    d = daemon_factory(*server_tls(pki))
    assert storescu(d.port, FILES, *client_tls(pki)).returncode == 0
    theirs = {p.name: p for p in dcmtk_out.iterdir() if p.is_file()}
    ours = {p.name: p for p in d.stored_files()}
    assert sorted(ours) == sorted(theirs)
    for name, path in ours.items():
        a, b = pydicom.dcmread(path), pydicom.dcmread(theirs[name])
        assert a == b, name
        assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID
        assert a.file_meta.MediaStorageSOPInstanceUID == b.file_meta.MediaStorageSOPInstanceUID
        ours_ds, theirs_ds = split_meta(path.read_bytes())[1], split_meta(theirs[name].read_bytes())[1]
        assert ours_ds == theirs_ds, f"{name}: data set bytes differ ({len(ours_ds)} vs DCMTK's {len(theirs_ds)})"


@pytest.mark.parametrize("profile", ["+py", "+px", "+pz", "+pa", "+pn"])
def test_dcmtk_client_with_the_same_profile(daemon_factory, pki: Pki, profile: str) -> None:
    d = daemon_factory(*server_tls(pki), profile)
    result = echoscu(d.port, profile, *client_tls(pki), "-d")
    assert result.returncode == 0, result.stderr + d.log()
    if profile == "+pn":  # authenticated, not encrypted: what the retired IHE ATNA profile asked for
        assert "NULL-SHA, encryption: 0 bits" in result.stderr


def test_refused_profiles_say_why(daemon_factory, pki: Pki) -> None:
    d = daemon_factory(*server_tls(pki), "+pm", ready=False)
    assert d.proc.wait(30) != 0
    assert "TLS 1.3" in d.log() and "refused" in d.log()
