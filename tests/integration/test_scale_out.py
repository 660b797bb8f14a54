"""Scale-out behind a real HAProxy: etc/haproxy.cfg, adapted to loopback, in front of two storescpd
instances (127.0.0.11 and 127.0.0.12) that share one output tree.

HAProxy sends the PROXY header, version 2 to the plain listeners and version 1 to the TLS ones, and
checks each instance with /readyz and a DICOM association. The client's address is the peer for
+ac, the logs, /associations, the metrics and the hooks; a header from anyone else is refused; a
killed instance loses no acknowledged object and HAProxy moves on; a draining instance leaves the
balancer before its listener closes. Several instances claim file names in one directory without
ever taking another's.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from storescpd.dicom import acse
from tests.support.api import Api, sample
from tests.support.daemons import Daemon
from tests.support.dicomfiles import small_objects
from tests.support.paths import ROOT
from tests.support.peers import DcmtkStorescp, require_dcmtk, storescu
from tests.support.pdus import associate_rq, closed_without_an_answer, context, item, pdu, read_pdu
from tests.support.pki import Pki
from tests.support.processes import children_of, free_port, stop_process, wait_until

pytestmark = pytest.mark.timeout(300)

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BALANCER = "127.0.0.1"  # HAProxy's source address towards 127.0.0.11/12 (loopback's own)
INSTANCES = {"a": "127.0.0.11", "b": "127.0.0.12"}
CLIENT, DENIED = "127.0.0.2", "127.0.0.3"  # clients bound to these addresses
CHECK_INTER = 0.3  # the test's `default-server inter 300ms fall 2 rise 2`
CHECK_FALL = 2
DOWN, UP = 0, 2  # HAProxy's srv_op_state


def setup_module() -> None:
    require_dcmtk()
    if not Path(HAPROXY).exists():
        pytest.fail("HAProxy is not installed: apt-get install haproxy (.ci/apt-packages lists it)")


# ---- HAProxy, from etc/haproxy.cfg ------------------------------------------------------------------
def haproxy_config(dicom: int, tls: int, api: int, frontends: tuple[int, int], admin: Path) -> str:
    """etc/haproxy.cfg with loopback addresses and ports, a private stats socket, logs on stdout and a
    short check interval; every other line as shipped (each replaced text must be there)."""
    text = (ROOT / "etc" / "haproxy.cfg").read_text()
    a, b = INSTANCES["a"], INSTANCES["b"]
    replacements = {
        "log /dev/log local0": "log stdout format raw local0",
        "/run/haproxy/admin.sock": str(admin),
        "default-server inter 2s fall 2 rise 2": f"default-server inter {int(CHECK_INTER * 1000)}ms fall {CHECK_FALL} rise 2",
        "tcp-check connect port 8104\n": f"tcp-check connect port {api}\n",
        "tcp-check connect port 11112 ": f"tcp-check connect port {dicom} ",
        "bind :11112": f"bind 127.0.0.1:{frontends[0]}",
        "bind :2762": f"bind 127.0.0.1:{frontends[1]}",
        "192.0.2.11:11112": f"{a}:{dicom}", "192.0.2.12:11112": f"{b}:{dicom}",
        "192.0.2.11:2762": f"{a}:{tls}", "192.0.2.12:2762": f"{b}:{tls}",
    }
    for old, new in replacements.items():
        assert old in text, f"etc/haproxy.cfg no longer has {old!r}: adapt this test"
        text = text.replace(old, new)
    assert not [line for line in text.splitlines() if "192.0.2." in line.split("#")[0]]
    return text


class HAProxy:
    """haproxy -db on a configuration, with its stats socket (a short path: unix sockets have 108 bytes)."""

    def __init__(self, workdir: Path, dicom: int, tls: int, api: int) -> None:
        self.socket_dir = Path(tempfile.mkdtemp(prefix="hap"))
        self.admin = self.socket_dir / "admin.sock"
        self.frontend, self.frontend_tls = free_port(), free_port()
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(haproxy_config(dicom, tls, api, (self.frontend, self.frontend_tls), self.admin))
        self.log_path = workdir / "haproxy.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([HAPROXY, "-f", str(self.config), "-db"], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self.admin.exists, 10, lambda: f"HAProxy's stats socket: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.admin))
            s.sendall(line.encode() + b"\n")
            return s.makefile().read()

    def states(self, backend: str = "storescpd") -> dict[str, int]:
        """srv_op_state of each server: 0 down, 2 up."""
        rows = [line.split() for line in self.command(f"show servers state {backend}").splitlines()[2:] if line]
        return {row[3]: int(row[5]) for row in rows}

    def wait_state(self, server: str, state: int, timeout: float) -> float:
        """Seconds until `server` has `state`."""
        start = time.monotonic()
        wait_until(lambda: self.states().get(server) == state, timeout,
                   lambda: f"server {server} in state {state}: {self.states()}\n{self.log()[-2000:]}", interval=0.02)
        return time.monotonic() - start

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


# ---- two instances, one output tree ---------------------------------------------------------------
def common_ports(count: int) -> list[int]:
    """Ports free on both instance addresses (each instance uses the same numbers, as on two hosts)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as first:
            first.bind((INSTANCES["a"], 0))
            port = first.getsockname()[1]
            try:
                with socket.socket() as second:
                    second.bind((INSTANCES["b"], port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def server_tls(pki: Pki) -> list[str]:
    return ["+tls", pki.server_key, pki.server_crt, "+cf", pki.ca_crt]


def client_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=pki.ca_crt)
    ctx.load_cert_chain(pki.client_crt, pki.client_key)
    return ctx


class Cluster:
    """Two instances behind HAProxy: `+ac` denying DENIED, a #r hook, TLS beside plain DICOM."""

    def __init__(self, workdir: Path, pki: Pki, drain_delay: int = 0, hook: bool = True) -> None:
        self.workdir = workdir
        self.pki = pki
        self.output = workdir / "out"
        self.dicom, self.tls, self.api_port = common_ports(3)
        (workdir / "hosts.allow").write_text("")
        (workdir / "hosts.deny").write_text(f"storescp: {DENIED}\n")
        self.hooks = workdir / "hooks.txt"
        script = workdir / "record-peer.sh"
        script.write_text(f'#!/bin/sh\necho "$1" >> {self.hooks}\n')
        script.chmod(0o755)
        self.instances: dict[str, Daemon] = {}
        self.haproxy: HAProxy | None = None
        try:
            for name, host in INSTANCES.items():
                d = Daemon(workdir, [
                    "-v", "-dhl", "--workers", "3", "--bind", host, "--tls-port", str(self.tls), *server_tls(pki),
                    "--api", f"{host}:{self.api_port}", "--run-directory", str(workdir / f"run-{name}"),
                    "--proxy-protocol-from", f"{BALANCER}/32", "+ac", "--hosts-allow", str(workdir / "hosts.allow"),
                    "--hosts-deny", str(workdir / "hosts.deny"), *(["-xcr", f"{script} #r"] if hook else []),
                    "--drain-delay", str(drain_delay)], output=self.output)
                self.instances[name] = d
                d.start(ready=False, address=(host, self.dicom))
            for d in self.instances.values():
                d.notify.wait_for("READY=1")
            self.haproxy = HAProxy(workdir, self.dicom, self.tls, self.api_port)
            for d in self.instances.values():  # each has passed a DICOM health check, served as from HAProxy
                d.wait_for_log(f"association from HAPROXY-CHECK ({BALANCER}:", timeout=20)
                assert re.search(rf"association from HAPROXY-CHECK \({BALANCER}:\d+\) to STORESCP: released", d.log())
        except BaseException:
            self.stop()
            raise

    def api(self, name: str) -> Api:
        return Api(f"http://{INSTANCES[name]}:{self.api_port}")

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        for d in self.instances.values():
            d.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"), pki)
    yield c
    c.stop()


def associate(port: int, source: str, pki: Pki | None = None) -> Any:
    """A pynetdicom association through HAProxy from a client bound to `source` (TLS with `pki`)."""
    ae = AE(ae_title="SCALEOUT")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.network_timeout = 10
    tls_args = (client_context(pki), "storescpd") if pki is not None else None
    return ae.associate("127.0.0.1", port, bind_address=(source, 0), tls_args=tls_args)


def client_address(assoc: Any) -> str:
    host, port = assoc.dul.socket.socket.getsockname()[:2]
    return f"{host}:{port}"


def logged_peers(d: Daemon, calling_ae: str) -> list[str]:
    return re.findall(rf"association from {calling_ae} \(([^)]*)\)", d.log())


# ---- the checks, byte for byte --------------------------------------------------------------------
def test_the_documented_dicom_check_is_a_verification_request_dcmtk_accepts(tmp_path: Path) -> None:
    checked = subprocess.run([HAPROXY, "-c", "-f", str(ROOT / "etc" / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # valid as shipped
    config = (ROOT / "etc" / "haproxy.cfg").read_text()
    assert f"```\n{config}```" in (ROOT / "docs" / "scale-out.md").read_text(), \
        "docs/scale-out.md shows etc/haproxy.cfg as it is: copy it there again"
    checks = [line.strip() for line in config.splitlines() if line.strip().startswith("tcp-check ")]
    sends = [line.split()[-1] for line in checks if line.startswith("tcp-check send-binary")]
    request, release = bytes.fromhex("".join(sends[:-1])), bytes.fromhex(sends[-1])
    user = item(0x50, item(0x51, (16384).to_bytes(4, "big")) + item(0x52, b"2.25.303151426213663629616862494524503900046")
                + item(0x55, b"HAPROXY_CHECK"))
    verification = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    expected = pdu(0x01, (1).to_bytes(2, "big") + bytes(2) + b"STORESCP".ljust(16) + b"HAPROXY-CHECK".ljust(16)
                   + bytes(32) + item(0x10, b"1.2.840.10008.3.1.1.1") + verification + user)
    assert request == expected and release == pdu(0x05, bytes(4))
    parsed = acse.parse_request(request[6:])
    assert (parsed.calling_ae_title, parsed.called_ae_title) == ("HAPROXY-CHECK", "STORESCP")
    assert [(c.abstract_syntax, c.transfer_syntaxes) for c in parsed.contexts] == [
        ("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]
    reference = DcmtkStorescp(tmp_path, [])  # the reference SCP answers it as the check expects
    try:
        with socket.create_connection(("127.0.0.1", reference.port), timeout=10) as s:
            s.sendall(request)
            assert read_pdu(s)[0] == 0x02
            s.sendall(release)
            assert read_pdu(s)[0] == 0x06
    finally:
        reference.stop()


# ---- one cluster: traffic, addresses, access control, spoofing ------------------------------------
def test_500_objects_through_haproxy_land_once_each(cluster: Cluster, tmp_path: Path) -> None:
    """Four storescu associations, two plain (PROXY v2) and two over TLS (PROXY v1), at once."""
    batches = [small_objects(tmp_path / f"batch{i}", 125, 10_000 + i * 125) for i in range(4)]
    haproxy = cluster.haproxy
    assert haproxy is not None
    tls = ["+tls", cluster.pki.client_key, cluster.pki.client_crt, "+cf", cluster.pki.ca_crt]
    jobs = [(haproxy.frontend, []), (haproxy.frontend, []), (haproxy.frontend_tls, tls), (haproxy.frontend_tls, tls)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: storescu(job[0][0], job[1], *job[0][1]), zip(jobs, batches)))
    assert all(r.returncode == 0 for r in results), [r.stderr[-800:] for r in results]
    sent = {ds.SOPInstanceUID for ds in (pydicom.dcmread(p) for batch in batches for p in batch)}
    stored = [p for p in cluster.output.iterdir() if p.is_file() and p.name.startswith("CT.1.2.826.0.1.3680043.2.1143.79.1")]
    assert len(stored) == 500 and {pydicom.dcmread(p).SOPInstanceUID for p in stored} == sent
    for name, d in cluster.instances.items():  # both wrote into the one tree
        served = [int(n) for n in re.findall(r"association from STORESCU \([^)]*\) to ANY-SCP: released, (\d+) objects",
                                             d.log())]
        assert served and sum(served) > 0, f"instance {name} served none of the associations"
    assert "refusing the connection" not in "".join(d.log() for d in cluster.instances.values())


@pytest.mark.parametrize("over_tls", [False, True], ids=["plain-v2", "tls-v1"])
def test_the_clients_address_is_the_peer_everywhere(cluster: Cluster, over_tls: bool, tmp_path: Path) -> None:
    haproxy = cluster.haproxy
    assert haproxy is not None
    port = haproxy.frontend_tls if over_tls else haproxy.frontend
    hooked = cluster.hooks.read_text().splitlines() if cluster.hooks.exists() else []
    assoc = associate(port, CLIENT, cluster.pki if over_tls else None)
    assert assoc.is_established
    client = client_address(assoc)
    assert client.startswith(f"{CLIENT}:")
    try:
        live = wait_until(lambda: [a for name in INSTANCES for a in cluster.api(name).get("/associations").json()
                                   if a["calling_ae"] == "SCALEOUT"], 10, "the association in /associations")
        assert [a["peer"] for a in live] == [client]  # the API shows the client, not HAProxy
        (path,) = small_objects(tmp_path / "one", 1, 20_000 + over_tls)
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    finally:
        assoc.release()
    wait_until(lambda: any(client in logged_peers(d, "SCALEOUT") for d in cluster.instances.values()), 10,
               "the client's address in the association's log line")
    wait_until(lambda: cluster.hooks.exists() and len(cluster.hooks.read_text().splitlines()) > len(hooked), 10,
               "the -xcr hook of the object stored")
    assert cluster.hooks.read_text().splitlines()[len(hooked):] == [CLIENT]  # #r: the client, not HAProxy


def test_access_control_sees_the_client_behind_the_balancer(cluster: Cluster) -> None:
    haproxy = cluster.haproxy
    assert haproxy is not None
    before = sum(sample(cluster.api(n).metrics(), "storescpd_associations_rejected_total", reason="access_denied")
                 for n in INSTANCES)
    denied = associate(haproxy.frontend, DENIED)
    assert not denied.is_established
    wait_until(lambda: any(f"access denied to {DENIED}" in d.log() for d in cluster.instances.values()), 10,
               "the +ac refusal naming the client")
    after = sum(sample(cluster.api(n).metrics(), "storescpd_associations_rejected_total", reason="access_denied")
                for n in INSTANCES)
    assert after == before + 1
    allowed = associate(haproxy.frontend, CLIENT)  # the same balancer, another client: served
    assert allowed.is_established
    allowed.release()


@pytest.mark.parametrize("source, data, reason, words", [
    (CLIENT, b"PROXY TCP4 10.9.8.7 127.0.0.11 4000 104\r\n", "spoofed", "is not listed in proxy_protocol_from"),
    (BALANCER, b"", "missing", "sent no PROXY protocol header"),
], ids=["spoofed-header", "balancer-without-header"])
def test_a_header_from_elsewhere_and_none_from_the_balancer_are_refused(cluster: Cluster, source: str, data: bytes,
                                                                       reason: str, words: str) -> None:
    """Straight to instance a, around HAProxy."""
    d, api = cluster.instances["a"], cluster.api("a")
    before = sample(api.metrics(), "storescpd_proxy_refused_total", reason=reason)
    rq = pdu(0x01, (1).to_bytes(2, "big") + bytes(2) + b"STORESCP".ljust(16) + b"SPOOFER".ljust(16) + bytes(32))
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(10)
        s.connect((INSTANCES["a"], cluster.dicom))
        s.sendall(data + rq)
        assert closed_without_an_answer(s)  # no A-ASSOCIATE-AC, -RJ or A-ABORT: nothing for a worker
        line = f"refusing the connection from {source}:{s.getsockname()[1]}: "
    assert words in d.wait_for_log(line).split(line, 1)[1].splitlines()[0]
    assert sample(api.metrics(), "storescpd_proxy_refused_total", reason=reason) == before + 1
    assert "SPOOFER" not in d.log() and "10.9.8.7" not in d.log()


def test_each_instance_has_its_own_run_directory_and_control_socket(cluster: Cluster, tmp_path: Path) -> None:
    for name in INSTANCES:
        assert (cluster.workdir / f"run-{name}" / "control.sock").is_socket()
    intruder = Daemon(tmp_path, ["--api", f"127.0.0.1:{free_port()}", "--run-directory",
                                 str(cluster.workdir / "run-a")], output=cluster.output)
    intruder.start(ready=False)
    try:
        assert intruder.proc is not None and intruder.proc.wait(20) != 0
        assert "is in use by another process" in intruder.log()
    finally:
        intruder.stop(signal.SIGKILL)
    assert (cluster.workdir / "run-a" / "control.sock").is_socket()  # instance a's is untouched
    assert cluster.api("a").get("/readyz").status_code == 200


@pytest.mark.parametrize("mode", ["--fork", "--single-process"])
def test_every_process_mode_reads_the_header(mode: str, daemon_factory) -> None:
    """--fork hands the address to its child; --single-process (no pending stage) reads the header itself."""
    d = daemon_factory(mode, "-v", "--proxy-protocol-from", f"{BALANCER}/32")
    verification = context(1, b"1.2.840.10008.1.1", b"1.2.840.10008.1.2")
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 104\r\n" + associate_rq(verification))
        assert read_pdu(s)[0] == 0x02
        s.sendall(pdu(0x05, bytes(4)))
        assert read_pdu(s)[0] == 0x06
    d.wait_for_log("association from ABUSER (192.0.2.7:4000) to STORESCP: released")
    with socket.socket() as s:
        s.bind((CLIENT, 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", d.port))
        s.sendall(b"PROXY TCP4 192.0.2.8 127.0.0.1 4000 104\r\n" + associate_rq(verification))
        assert closed_without_an_answer(s)
    d.wait_for_log(f"refusing the connection from {CLIENT}:")
    assert "192.0.2.8" not in d.log()


# ---- names claimed across instances ---------------------------------------------------------------
@pytest.mark.parametrize("flags, same_objects, expected", [
    (["-tn"], False, 240),  # time names: the same millisecond on both instances
    (["+uf"], False, 240),
    (["--on-duplicate", "keep-first"], True, 60),  # the same 60 objects to both: one file each
    (["--on-duplicate", "unique"], True, 120),  # ... every copy kept, under names never taken twice
], ids=["timenames", "unique-filenames", "keep-first", "unique"])
def test_file_names_never_collide_across_instances(tmp_path: Path, flags: list[str], same_objects: bool,
                                                   expected: int) -> None:
    output = tmp_path / "shared"
    instances = [Daemon(tmp_path, ["--workers", "2", "--no-fsync", *flags], output=output) for _ in range(2)]
    try:
        for d in instances:
            d.start()
        per_association = 60
        batches = [small_objects(tmp_path / f"b{i}", per_association,
                                 0 if same_objects else i * per_association, patient=f"SENDER{i}")
                   for i in range(2 if same_objects else 4)]
        targets = [d.port for d in instances] * 2
        with concurrent.futures.ThreadPoolExecutor(len(batches)) as pool:
            results = list(pool.map(lambda job: storescu(job[0], job[1]), zip(targets, batches)))
        assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    finally:
        for d in instances:
            d.stop()
    stored = [p for p in output.iterdir() if p.is_file()]
    kept = {(str(ds.SOPInstanceUID), str(ds.PatientName)) for ds in map(pydicom.dcmread, stored)}
    assert len(stored) == len(kept) == expected, "a file was taken by another instance's object"
    if not same_objects:
        assert len({uid for uid, _ in kept}) == expected


# ---- failures: a killed instance, a drained one ---------------------------------------------------
def pids_of_instance(d: Daemon) -> list[int]:
    return [d.pid, *children_of(d.pid)]


def kill_all(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_killed_instance_loses_no_acknowledged_object(tmp_path: Path, pki: Pki) -> None:
    c = Cluster(tmp_path, pki, hook=False)
    orphans: list[int] = []
    try:
        haproxy = c.haproxy
        assert haproxy is not None
        paths = small_objects(tmp_path / "objects", 80, 30_000)
        acknowledged: set[str] = set()

        def send(assoc: Any, batch: list[Path]) -> None:
            for path in batch:
                ds = pydicom.dcmread(path)
                status = assoc.send_c_store(ds)
                if getattr(status, "Status", None) == 0x0000:
                    acknowledged.add(str(ds.SOPInstanceUID))

        first = associate(haproxy.frontend, CLIENT)
        assert first.is_established
        send(first, paths[:20])
        (victim,) = [n for n in INSTANCES if any(a["calling_ae"] == "SCALEOUT"
                                                 for a in c.api(n).get("/associations").json())]
        survivor = next(n for n in INSTANCES if n != victim)
        orphans = pids_of_instance(c.instances[victim])
        served_by_survivor = len(logged_peers(c.instances[survivor], "SCALEOUT"))
        down_at: list[float] = []
        watcher = threading.Thread(target=lambda: down_at.append(haproxy.wait_state(victim, DOWN, 10)))
        killed = time.monotonic()
        c.instances[victim].proc.send_signal(signal.SIGKILL)  # the supervisor only
        watcher.start()
        second = wait_until(lambda: (a := associate(haproxy.frontend, CLIENT)).is_established and a, 10,
                            "a new association through HAProxy")
        moved = time.monotonic() - killed
        watcher.join(15)
        send(second, paths[40:])
        second.release()
        wait_until(lambda: len(logged_peers(c.instances[survivor], "SCALEOUT")) > served_by_survivor, 10,
                   "the new association served by the other instance")
        send(first, paths[20:40])  # its orphaned worker may finish the association or lose it: counted either way
        if first.is_established:
            first.release()
        print(f"killed instance {victim}: next association after {moved:.2f} s, marked down after {down_at}")
        assert moved < CHECK_INTER * CHECK_FALL + 1.5, f"the next association came {moved:.2f} s after the kill"
        assert down_at and down_at[0] < CHECK_INTER * (CHECK_FALL + 1) + 1, f"marked down after {down_at}"
        on_disk = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in c.output.iterdir() if p.is_file()}
        assert acknowledged >= {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths[40:]}
        lost = acknowledged - set(on_disk)
        assert not lost, f"{len(lost)} acknowledged objects are not on disk"
        assert all(len(on_disk[uid].read_bytes()) > 1000 for uid in acknowledged)
    finally:
        c.stop()
        kill_all(orphans)


def test_a_draining_instance_leaves_the_balancer_before_its_listener_closes(tmp_path: Path, pki: Pki) -> None:
    drain = 3
    c = Cluster(tmp_path, pki, drain_delay=drain, hook=False)
    stop_echoes = threading.Event()
    failures: list[str] = []
    served = [0]

    def echoes() -> None:
        while not stop_echoes.is_set():
            assoc = associate(c.haproxy.frontend, CLIENT) if c.haproxy else None
            if assoc is None or not assoc.is_established:
                failures.append(f"association refused at {time.monotonic():.2f}")
                continue
            status = assoc.send_c_echo()
            assoc.release()
            if getattr(status, "Status", None) != 0x0000:
                failures.append(f"echo failed at {time.monotonic():.2f}")
            served[0] += 1
            time.sleep(0.02)

    try:
        haproxy = c.haproxy
        assert haproxy is not None
        sender = threading.Thread(target=echoes)
        sender.start()
        a = c.instances["a"]
        wait_until(lambda: served[0] >= 5, 10, "echoes through HAProxy")
        a.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: c.api("a").get("/readyz").status_code == 503, 5, "/readyz answering 503 while draining")
        assert c.api("a").get("/readyz").json()["checks"]["accepting"] is False
        down = haproxy.wait_state("a", DOWN, drain)
        with socket.create_connection((INSTANCES["a"], c.dicom), timeout=5):
            pass  # the listener still accepts after HAProxy took instance a out
        a.wait_for_log("stopping (graceful)", timeout=drain + 5)
        assert a.proc.wait(30) == 0
        before = served[0]
        wait_until(lambda: served[0] >= before + 5, 10, "echoes after the drain")
        stop_echoes.set()
        sender.join(30)
        assert not failures, failures
        assert down < drain - 1, f"HAProxy took {down:.2f} s to take the draining instance out"
    finally:
        stop_echoes.set()
        c.stop()
