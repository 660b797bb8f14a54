"""End to end: the .deb in a booted Debian 12, used the way an administrator uses it.

Builds the package (packaging/build-deb), boots a minimal bookworm with systemd as PID 1 in
systemd-nspawn (private network), installs the package there and drives it with systemctl
through nsenter: start, a study from DCMTK's storescu, /metrics, reload (good and broken
config), stop, socket activation, the inetd-style template, purge. Each step is printed; the
first one that does not do what a user would expect fails the test.

    pytest -m packaging tests/packaging

Needs root. Installs its host tools with apt-get when missing (debootstrap,
systemd-container, dpkg-dev, debhelper, ...). The debootstrapped root file system is cached
in $STORESCPD_TEST_CACHE (default /var/cache/storescpd-test) and used read-only through an
overlay, so a run starts from the same clean system every time. systemd-nspawn needs
--keep-unit and --register=no where PID 1 is not systemd; the container is driven with nsenter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from tests.support.ci import skip_or_fail

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("STORESCPD_TEST_CACHE", "/var/cache/storescpd-test"))
SUITE = "bookworm"
# adduser and python3.11 are the package's dependencies: with them in the image, installing
# the .deb needs no download at all in the common case.
ROOTFS_PACKAGES = "systemd,systemd-sysv,dbus,python3,python3.11,adduser,iproute2,procps,ca-certificates"
HOST_PACKAGES = (
    "debootstrap", "systemd-container", "util-linux", "dpkg-dev", "debhelper", "help2man", "lintian",
    "python3.11-venv", "python3-build", "python3-setuptools", "python3-wheel", "dcmtk", "curl",
)
CONTAINER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
STORESCU = "/usr/bin/storescu"
PORT = 11112
CONFIG = "/etc/storescpd/storescpd.toml"
INCOMING = "/var/lib/storescpd/incoming"
RELOADED = "/var/lib/storescpd/reloaded"
API_PORT = 8104


class StepFailed(Exception):
    """A step did not do what a user would expect; the message says what happened."""


# ---------------------------------------------------------------------------------------------
# Host side: tools, the package, the cached root file system


def missing_host_packages() -> list[str]:
    missing = []
    for package in HOST_PACKAGES:
        query = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "install ok installed" not in query.stdout:
            missing.append(package)
    return missing


def install_host_packages(packages: Sequence[str]) -> str:
    """apt-get install; returns the tail of apt's output when it fails, else ''."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(command, env=env, capture_output=True).returncode == 0:
        return ""
    subprocess.run(["apt-get", "update"], env=env, capture_output=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    return "" if result.returncode == 0 else (result.stdout + result.stderr)[-2000:]


def debian_mirror() -> str:
    """The Debian mirror this host's apt already uses for the bookworm suite."""
    if os.environ.get("STORESCPD_TEST_MIRROR"):
        return os.environ["STORESCPD_TEST_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):  # deb822 .sources
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
            if SUITE in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                return fields["URIs"].split()[0]
        for line in text.splitlines():  # one-line format
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return "http://deb.debian.org/debian"


def cached_rootfs(mirror: str, log: Callable[[str], None]) -> Path:
    """A minimal bookworm with systemd, debootstrapped once and then reused."""
    key = hashlib.sha256(f"{SUITE} {ROOTFS_PACKAGES} {mirror}".encode()).hexdigest()[:12]
    root = CACHE / f"rootfs-{SUITE}-{key}"
    if (root / ".storescpd-test-complete").exists():
        log(f"using cached root file system {root}")
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / f"{root.name}.building.{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    log(f"debootstrap {SUITE} from {mirror} into {building} (about a minute, once)")
    command = ["debootstrap", "--variant=minbase", f"--include={ROOTFS_PACKAGES}", SUITE, str(building), mirror]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise StepFailed(f"debootstrap failed:\n{(result.stdout + result.stderr)[-3000:]}")
    # Package lists in the image, so that installing needs no `apt-get update` per run.
    update = run_unbooted(building, "apt-get update -q && apt-get clean", timeout=300)
    if update.returncode != 0:
        raise StepFailed(f"apt-get update in the new root file system failed:\n{update.stdout[-3000:]}")
    (building / ".storescpd-test-complete").touch()
    try:
        building.rename(root)
    except OSError:  # another run finished first
        shutil.rmtree(building, ignore_errors=True)
    return root


def run_unbooted(root: Path, script: str, binds: Sequence[str] = (), timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A shell script in the root file system without booting it (host network: apt works)."""
    command = [
        "systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", "--pipe",
        *(f"--bind={b}" for b in binds),
        "/usr/bin/env", "-i", f"PATH={CONTAINER_PATH}", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8",
        "/bin/sh", "-c", script,
    ]
    return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# The booted container


class Container:
    """Debian booted with systemd-nspawn -b, private network, driven through nsenter."""

    def __init__(self, lower: Path, workdir: Path, binds: Sequence[str]) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.binds = list(binds)
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        self.console = workdir / "console.log"
        for name in ("upper", "work", "root"):
            (workdir / name).mkdir()
        # An overlay keeps the cached image pristine: every run starts from the same system.
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={workdir / 'upper'},workdir={workdir / 'work'}", str(self.root)],
            check=True, capture_output=True,
        )

    def boot(self, timeout: float = 60) -> str:
        command = [
            "systemd-nspawn", "-q", "-D", str(self.root), "-b", "--private-network", "--keep-unit",
            "--register=no", f"--machine=storescpd-e2e-{os.getpid()}", *(f"--bind={b}" for b in self.binds),
        ]
        with open(self.console, "wb") as console:
            self.nspawn = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.pid1 is None:
            self._check_nspawn_alive()
            self.pid1 = self._find_pid1()
            if time.monotonic() > deadline:
                raise StepFailed("the container's systemd did not start")
            time.sleep(0.1)
        while True:
            self._check_nspawn_alive()
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return state
            if time.monotonic() > deadline:
                raise StepFailed(f"the container did not finish booting within {timeout:.0f}s (state: {state})")
            time.sleep(0.2)

    def _check_nspawn_alive(self) -> None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise StepFailed(f"systemd-nspawn exited with {self.nspawn.returncode}:\n{self.console_tail()}")

    def _find_pid1(self) -> int | None:
        assert self.nspawn is not None
        try:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except OSError:
                continue
        return None

    def console_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A shell script inside the container (all its namespaces), as root."""
        assert self.pid1 is not None
        command = [
            "nsenter", "-t", str(self.pid1), "-a",
            "/usr/bin/env", "-i", f"PATH={CONTAINER_PATH}", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8",
            "SYSTEMD_PAGER=", "/bin/sh", "-c", script,
        ]
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise StepFailed(f"`{script}` exited with {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}")
        return result

    def in_network(self, argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A host program inside the container's network namespace only (its 127.0.0.1)."""
        assert self.pid1 is not None
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-n", *argv], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def path(self, inside: str) -> Path:
        """A path of the container's file system, as seen from the host."""
        assert self.pid1 is not None
        return Path(f"/proc/{self.pid1}/root") / inside.lstrip("/")

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {shlex.quote(unit)} " + " ".join(f"-p {p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def diagnostics(self) -> str:
        if self.pid1 is None:
            return self.console_tail()
        units = "storescpd.service storescpd.socket storescpd-inetd.socket"
        status = self.sh(f"systemctl status --no-pager -l --lines=0 {units} 'storescpd-inetd@*'", check=False, timeout=30)
        journal = self.sh("journalctl --no-pager -n 60 -u storescpd.service -u storescpd.socket "
                          "-u storescpd-inetd.socket -u 'storescpd-inetd@*'", check=False, timeout=30)
        return f"--- systemctl status\n{status.stdout}\n--- journalctl\n{journal.stdout}"

    def shutdown(self) -> None:
        """Power off; kill the container's PID 1 if that does not work. Always unmount."""
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                if self.pid1 is not None:
                    subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "systemctl", "poweroff"],
                                   capture_output=True, timeout=30)
                try:
                    self.nspawn.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    if self.pid1 is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self.pid1, signal.SIGKILL)
                    try:
                        self.nspawn.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        self.nspawn.kill()
                        self.nspawn.wait(timeout=10)
        finally:
            for _ in range(5):
                if subprocess.run(["umount", str(self.root)], capture_output=True).returncode == 0:
                    break
                time.sleep(1)
            else:
                subprocess.run(["umount", "-l", str(self.root)], capture_output=True)
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# DICOM data and what the user checks


def make_study(directory: Path, count: int, label: str) -> dict[str, bytes]:
    """count CT images of one new study; returns SOP Instance UID -> pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    sent = {}
    for number in range(1, count + 1):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = f"E2E^{label}", "E2E-PACKAGING"
        ds.Modality, ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "CT", "20260101", 1, number
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = bytes((number * 7 + i) % 256 for i in range(8 * 8 * 2))
        ds.save_as(directory / f"{label}-{number}.dcm", enforce_file_format=True)
        sent[uid] = bytes(ds.PixelData)
    return sent


def send(container: Container, files: Sequence[Path], called: str = "STORESCP") -> None:
    result = container.in_network([STORESCU, "-aet", "E2E", "-aec", called, "127.0.0.1", str(PORT),
                                   *map(str, files)], timeout=120)
    if result.returncode != 0:
        raise StepFailed(f"storescu exited with {result.returncode}:\n{(result.stdout + result.stderr)[-2000:]}")


def stored(container: Container, directory: str) -> dict[str, tuple[Path, bytes]]:
    """SOP Instance UID -> (file, pixel data) of every DICOM file below directory."""
    from pydicom import dcmread

    found = {}
    root = container.path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path)
        except Exception:  # a non-DICOM file is reported by the caller's count check
            continue
        found[str(ds.SOPInstanceUID)] = (path, bytes(ds.PixelData))
    return found


def check_stored(container: Container, directory: str, sent: dict[str, bytes]) -> str:
    found = stored(container, directory)
    missing = [uid for uid in sent if uid not in found]
    if missing:
        listing = container.sh(f"ls -laR {directory}", check=False).stdout[-2000:]
        raise StepFailed(f"{len(missing)} of {len(sent)} sent objects are not in {directory}:\n{listing}")
    wrong = [uid for uid, pixels in sent.items() if found[uid][1] != pixels]
    if wrong:
        raise StepFailed(f"pixel data differ from what was sent for {wrong}")
    passwd = {line.split(":")[0]: int(line.split(":")[2])
              for line in container.path("/etc/passwd").read_text().splitlines() if line.count(":") >= 3}
    owner_uid = passwd.get("storescpd", -1)
    foreign = [str(found[uid][0]) for uid in sent if found[uid][0].stat().st_uid != owner_uid]
    if foreign:
        raise StepFailed(f"files not owned by the storescpd user: {foreign}")
    sample = found[next(iter(sent))][0]
    return f"{len(sent)} objects in {directory}, e.g. {sample.relative_to(container.path(directory))}"


def last_exit(container: Container) -> str:
    """'$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS' of storescpd.service's last stop (see the drop-in)."""
    path = container.path("/run/storescpd-e2e-exit")
    text = path.read_text().strip() if path.exists() else "(not recorded)"
    path.unlink(missing_ok=True)
    return text


def wait_active(container: "Container") -> None:
    wait_for(lambda: container.show("storescpd", "ActiveState")["ActiveState"] == "active", 20,
             "storescpd to be active (not reloading)")


def reload_and_wait(container: "Container") -> None:
    """systemctl reload returns once SIGHUP is sent; the daemon then says RELOADING=1 ... READY=1
    (with the new workers started): wait for that, so what follows runs on the new configuration."""
    before = container.sh("journalctl --no-pager -o cat -u storescpd.service", check=False).stdout.count(
        "configuration reloaded")
    container.sh("systemctl reload storescpd", timeout=120)
    wait_for(lambda: container.sh("journalctl --no-pager -o cat -u storescpd.service", check=False).stdout.count(
        "configuration reloaded") > before, 20, "storescpd to log 'configuration reloaded'")
    wait_active(container)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# Reporting


class Steps:
    """Prints each step as it runs and fails the test at the first broken one."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.started = time.monotonic()
        self.diagnostics: Callable[[], str] = lambda: ""

    def log(self, message: str) -> None:
        self.write(f"          {message}")

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        self.write(f"[e2e] {name} ...")
        failure: Exception | None = None
        try:
            yield
        except (StepFailed, AssertionError, subprocess.TimeoutExpired) as error:
            failure = error
        if failure is None:
            self.write(f"[e2e] {name}: ok ({time.monotonic() - began:.1f}s)")
            return
        self.write(f"[e2e] {name}: FAILED after {time.monotonic() - began:.1f}s")
        try:
            details = self.diagnostics()
        except Exception as diag_error:  # diagnostics must not hide the failure
            details = f"(no diagnostics: {diag_error})"
        try:
            pytest.fail(f"step '{name}' failed: {failure}\n{details}", pytrace=False)
        except pytest.fail.Exception as failed:
            raise failed from None  # the message says it all; no "during handling" chain

    def skipped(self, name: str, reason: str) -> None:
        self.write(f"[e2e] {name}: SKIPPED ({reason})")

    def done(self) -> None:
        self.write(f"[e2e] all steps passed in {time.monotonic() - self.started:.0f}s")


@pytest.fixture
def steps(request: pytest.FixtureRequest) -> Steps:
    # Live progress even under output capture, the way pytest's live logging does it.
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None or capture is None:
            print(line, flush=True)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    return Steps(write)


# ---------------------------------------------------------------------------------------------
# The test


E2E_BUDGET_SECONDS = 300  # the steps in a booted system, root file system cached (issue 7)


@pytest.mark.timeout(900)  # a first run debootstraps; with the cache a run takes 1-2 minutes
def test_deb_in_booted_debian(steps: Steps, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        skip_or_fail("the packaging test needs root (debootstrap, mounts, systemd-nspawn)")
    missing = missing_host_packages()
    if missing:
        steps.log(f"installing host packages: {' '.join(missing)}")
        failure = install_host_packages(missing)
        if failure and (shutil.which("debootstrap") is None or shutil.which("systemd-nspawn") is None):
            skip_or_fail(f"the packaging test cannot install debootstrap/systemd-container:\n{failure}")
        if failure:
            pytest.fail(f"cannot install host packages {missing}:\n{failure}", pytrace=False)

    debs = tmp_path / "deb"
    with steps.step("build the .deb (packaging/build-deb)"):
        result = subprocess.run([str(REPO / "packaging" / "build-deb"), "--out", str(debs)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise StepFailed(f"packaging/build-deb failed:\n{(result.stdout + result.stderr)[-4000:]}")
        deb = Path(result.stdout.strip().splitlines()[-1])
        for line in result.stderr.splitlines():
            steps.log(line)
        steps.log(f"{deb.name}, {deb.stat().st_size / 1e6:.1f} MB")

    with steps.step("lintian"):
        result = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                                capture_output=True, text=True, timeout=300)
        for line in result.stdout.splitlines():
            steps.log(line)
        if result.returncode != 0:
            raise StepFailed(f"lintian reports tags that are neither fixed nor overridden:\n{result.stdout}{result.stderr}")

    with steps.step("root file system (debootstrap, cached)"):
        rootfs = cached_rootfs(debian_mirror(), steps.log)
    booted_from_cache = time.monotonic()

    archives = CACHE / "apt-archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="storescpd-e2e-", dir="/var/tmp"))
    container = Container(rootfs, workdir, [f"{debs}:/root/deb", f"{archives}:/var/cache/apt/archives"])
    steps.diagnostics = container.diagnostics
    try:
        drive(container, deb, steps, tmp_path)
    finally:
        container.shutdown()
    steps.done()
    spent = time.monotonic() - booted_from_cache
    assert spent < E2E_BUDGET_SECONDS, f"the steps in the booted system took {spent:.0f} s (budget {E2E_BUDGET_SECONDS} s)"


def drive(container: Container, deb: Path, steps: Steps, tmp_path: Path) -> None:
    inside_deb = f"/root/deb/{deb.name}"

    with steps.step("fetch the package's dependencies (container not booted, host network)"):
        fetch = f"apt-get install -y -q --download-only {inside_deb}"
        result = run_unbooted(container.root, fetch, container.binds)
        if result.returncode != 0:  # stale package lists in the cached image
            result = run_unbooted(container.root, f"apt-get update -q && {fetch}", container.binds)
        if result.returncode != 0:
            raise StepFailed(f"apt-get --download-only failed:\n{result.stdout[-3000:]}")

    with steps.step("boot the container (systemd-nspawn -b --private-network)"):
        state = container.boot()
        steps.log(f"container PID 1 = {container.pid1}, system state: {state}")
        if state == "degraded":
            steps.log(container.sh("systemctl --failed --no-legend", check=False).stdout.strip())

    with steps.step(f"apt-get install {inside_deb}"):
        container.sh(f"apt-get install -y -q {inside_deb}", timeout=300)
        on_path = container.sh("dpkg -L storescpd | grep -E '^/usr/s?bin/' || true").stdout.split()
        if on_path != ["/usr/bin/storescpd"]:
            raise StepFailed(f"the package must put exactly /usr/bin/storescpd on the PATH, it has {on_path}")
        for name in ("storescp", "storescu", "echoscu"):
            if container.sh(f"command -v {name}", check=False).returncode == 0:
                raise StepFailed(f"{name} is on the PATH inside the container: it belongs to dcmtk, not storescpd")
        container.sh("getent passwd storescpd && test -d /var/lib/storescpd/incoming")
        state = container.sh("systemctl is-active storescpd.service storescpd.socket", check=False).stdout.split()
        if state != ["inactive", "inactive"]:
            raise StepFailed(f"installing must not start anything (the admin chooses the unit), got {state}")
        version = container.sh("storescpd --version", check=False)
        steps.log(f"storescpd --version: {(version.stdout + version.stderr).strip().splitlines()[:1]}")

    with steps.step("unit files: systemd-analyze verify and security"):
        units = "storescpd.service storescpd.socket storescpd-inetd.socket storescpd-inetd@0.service"
        result = container.sh(f"cd /lib/systemd/system && systemd-analyze verify {units}", check=False)
        complaints = [line for line in (result.stdout + result.stderr).splitlines()
                      if line.strip() and "man storescpd(8)" not in line]
        # Its exit status is 1 for the Documentation=man: line alone (no man-db in the image):
        # judge by what it prints.
        if complaints:
            raise StepFailed(f"systemd-analyze verify ({result.returncode}):\n" + "\n".join(complaints))
        for unit in ("storescpd.service", "storescpd-inetd@0.service"):
            result = container.sh(f"systemd-analyze security --no-pager {unit} | tail -n 1", check=False)
            steps.log(result.stdout.strip())

    with steps.step("record how storescpd.service ends (test drop-in)"):
        # An inactive unit is unloaded at once, taking ExecMainCode/ExecMainStatus with it:
        # ExecStopPost (unsandboxed, "+") writes them down for the stop steps.
        container.sh(
            "mkdir -p /run/systemd/system/storescpd.service.d && cat > "
            "/run/systemd/system/storescpd.service.d/e2e-exit.conf <<'EOF'\n"
            "[Service]\n"
            "ExecStopPost=+/bin/sh -c 'echo \"$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS\" > /run/storescpd-e2e-exit'\n"
            "EOF\n"
            "systemctl daemon-reload"
        )

    with steps.step("the shipped configuration validates (storescpd --check-config)"):
        result = container.sh(f"runuser -u storescpd -- storescpd --check-config --config {CONFIG}", check=False)
        if result.returncode != 0:
            raise StepFailed(f"the shipped {CONFIG} does not validate:\n{result.stdout}{result.stderr}")

    with steps.step("systemctl start storescpd"):
        container.sh("systemctl start storescpd", timeout=120)
        props = container.show("storescpd", "ActiveState", "SubState", "MainPID", "StatusText")
        if props["ActiveState"] != "active":
            raise StepFailed(f"storescpd is {props['ActiveState']}/{props['SubState']} after start")
        steps.log(f"active ({props['SubState']}), MainPID {props['MainPID']}, status: {props.get('StatusText', '')!r}")
        main_pid = props["MainPID"]

    with steps.step("send a study with DCMTK storescu to 127.0.0.1:11112"):
        sent = make_study(tmp_path / "study1", 5, "study1")
        send(container, sorted((tmp_path / "study1").iterdir()))
        steps.log(check_stored(container, INCOMING, sent))

    with steps.step("GET /metrics on the control API"):
        result = container.in_network(["curl", "-fsS", "-m", "10", f"http://127.0.0.1:{API_PORT}/metrics"])
        if result.returncode != 0:
            raise StepFailed(f"curl /metrics failed ({result.returncode}): {result.stderr}")
        samples = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
        if not samples:
            raise StepFailed(f"/metrics has no samples:\n{result.stdout[:1000]}")
        # Prometheus' view of the study just sent: 5 C-STORE requests answered.
        objects = [line for line in samples if line.startswith("storescpd_objects_stored_total")]
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in objects if 'status="success"' in line)
        if counted != len(sent):
            raise StepFailed(f"storescpd_objects_stored_total{{status=\"success\"}} is {counted:g}, "
                             f"{len(sent)} were stored:\n" + "\n".join(objects or samples[:20]))
        steps.log(f"{len(samples)} samples; " + "; ".join(objects))
        for probe in ("healthz", "readyz"):
            answer = container.in_network(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                                           f"http://127.0.0.1:{API_PORT}/{probe}"])
            if answer.stdout != "200":
                body = container.in_network(["curl", "-sS", "-m", "10", f"http://127.0.0.1:{API_PORT}/{probe}"])
                raise StepFailed(f"GET /{probe}: HTTP {answer.stdout or answer.stderr} {body.stdout[:500]}")
            steps.log(f"GET /{probe}: 200")
        status = container.sh("storescpd ctl status", check=False)
        if status.returncode != 0:
            raise StepFailed(f"`storescpd ctl status` exited {status.returncode}:\n{status.stdout}{status.stderr}")
        steps.log("storescpd ctl status: " + " | ".join(status.stdout.strip().splitlines()[:3]))

    with steps.step("the receipt journal lists the study (storescpd ctl receipts)"):
        receipts: dict[str, dict] = {}

        def listed() -> bool:
            answer = container.sh("storescpd ctl receipts --json --limit 1000", check=False)
            if answer.returncode == 0:
                receipts.update({r["sop_instance_uid"]: r for r in json.loads(answer.stdout)["receipts"]})
            return set(sent) <= set(receipts)

        wait_for(listed, 30, f"receipts of the {len(sent)} objects sent")
        wrong = [r for uid, r in receipts.items() if uid in sent and (
            r["calling_ae"] != "E2E" or not r["path"].startswith(INCOMING + "/")
            or container.path(r["path"]).stat().st_size != r["size"])]
        if wrong:
            raise StepFailed(f"receipts that do not describe the stored files: {wrong}")
        owner = container.sh("stat -c %U /var/lib/storescpd/journal.sqlite").stdout.strip()
        if owner != "storescpd":
            raise StepFailed(f"/var/lib/storescpd/journal.sqlite belongs to {owner!r}, not storescpd")
        steps.log(f"{len(receipts)} receipts; /var/lib/storescpd/journal.sqlite owned by {owner}")

    original_config = container.path(CONFIG).read_text()

    with steps.step("systemctl reload storescpd (new output_directory)"):
        container.sh(f"install -d -o storescpd -g storescpd -m 0750 {RELOADED}")
        new_config = re.sub(r'(?m)^output_directory\s*=.*$', f'output_directory = "{RELOADED}"', original_config)
        container.path(CONFIG).write_text(new_config)
        reload_and_wait(container)
        props = container.show("storescpd", "ActiveState", "MainPID")
        if props["ActiveState"] != "active" or props["MainPID"] != main_pid:
            raise StepFailed(f"after reload: {props} (expected active, MainPID {main_pid})")
        sent = make_study(tmp_path / "study2", 2, "study2")
        send(container, sorted((tmp_path / "study2").iterdir()))
        steps.log(check_stored(container, RELOADED, sent))

    with steps.step("systemctl reload with a broken config: refused, old config kept"):
        container.path(CONFIG).write_text(new_config + "\nno_such_setting = 1\n")
        result = container.sh("systemctl reload storescpd", check=False, timeout=120)
        if result.returncode == 0:
            raise StepFailed("`systemctl reload` succeeded with a broken config (it should fail and say why)")
        steps.log(f"systemctl reload exited {result.returncode}: {result.stderr.strip().splitlines()[:1]}")
        why = container.sh("journalctl --no-pager -n 20 -u storescpd", check=False).stdout
        reason = [line for line in why.splitlines() if "no_such_setting" in line]
        steps.log(f"journal: {reason[-1].split(': ', 1)[-1] if reason else '(no line naming the bad key)'}")
        # The daemon's own guard, without ExecReload's check in front: a bare SIGHUP.
        def complaints() -> int:
            journal = container.sh("journalctl --no-pager -o cat -u storescpd.service", check=False).stdout
            return journal.count("no_such_setting")

        before = complaints()
        container.sh("systemctl kill -s HUP --kill-who=main storescpd")
        wait_for(lambda: complaints() > before, 15, "storescpd to log why it refused the new configuration")
        wait_active(container)
        props = container.show("storescpd", "ActiveState", "MainPID")
        if props["ActiveState"] != "active" or props["MainPID"] != main_pid:
            raise StepFailed(f"after a broken reload: {props} (expected active, MainPID {main_pid})")
        sent = make_study(tmp_path / "study3", 1, "study3")
        send(container, sorted((tmp_path / "study3").iterdir()))
        steps.log("still running the old config: " + check_stored(container, RELOADED, sent))
        container.path(CONFIG).write_text(original_config)
        reload_and_wait(container)

    with steps.step("systemctl stop during an association: it is drained, not cut"):
        # storescp's --sleep-after stretches the association (2 objects x 2 s) across the stop.
        container.path(CONFIG).write_text(original_config + "\nsleep_after = 2\n")
        reload_and_wait(container)
        sent = make_study(tmp_path / "study-drain", 2, "drain")
        files = sorted((tmp_path / "study-drain").iterdir())
        client = subprocess.Popen(
            ["nsenter", "-t", str(container.pid1), "-n", STORESCU, "-aet", "E2E", "-aec", "STORESCP",
             "127.0.0.1", str(PORT), *map(str, files)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # The first object on disk: the association has about 2 s (a sleep, one more object) to go.
            wait_for(lambda: bool(set(sent) & set(stored(container, INCOMING))) or client.poll() is not None,
                     15, "the first object of the association")
            began = time.monotonic()
            container.sh("systemctl stop storescpd", timeout=120)
            took = time.monotonic() - began
            output, _ = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        if client.returncode != 0:
            raise StepFailed(f"storescu failed while storescpd stopped ({client.returncode}):\n{output[-2000:]}")
        if took < 1.5:
            raise StepFailed(f"the stop took {took:.1f}s: the association was over before it, nothing was drained")
        steps.log(f"stop waited {took:.1f}s for the association; " + check_stored(container, INCOMING, sent))
        ended = last_exit(container)
        if ended != "success exited 0":
            raise StepFailed(f"unclean stop: {ended!r} (expected 'success exited 0')")
        container.path(CONFIG).write_text(original_config)

    with steps.step("systemctl stop storescpd (clean exit)"):
        container.sh("systemctl start storescpd", timeout=120)
        began = time.monotonic()
        container.sh("systemctl stop storescpd", timeout=120)
        took = time.monotonic() - began
        state = container.show("storescpd", "ActiveState")["ActiveState"]
        ended = last_exit(container)
        # "exited 0": the daemon drained and exited by itself, not killed by a signal.
        if state != "inactive" or ended != "success exited 0":
            raise StepFailed(f"unclean stop: state {state}, result/code/status: {ended!r} (expected 'success exited 0')")
        steps.log(f"stopped in {took:.1f}s: {ended}")

    with steps.step("socket activation: storescpd.socket, the first association starts the service"):
        container.sh("systemctl start storescpd.socket")
        if container.show("storescpd", "ActiveState")["ActiveState"] != "inactive":
            raise StepFailed("starting storescpd.socket started the service before any association")
        sent = make_study(tmp_path / "study4", 2, "study4")
        send(container, sorted((tmp_path / "study4").iterdir()))
        props = container.show("storescpd", "ActiveState", "TriggeredBy", "MainPID")
        if props["ActiveState"] != "active":
            raise StepFailed(f"the association did not leave storescpd.service running: {props}")
        steps.log(f"service {props['ActiveState']} (MainPID {props['MainPID']}, triggered by {props['TriggeredBy']})")
        steps.log(check_stored(container, INCOMING, sent))
        container.sh("systemctl stop storescpd.socket storescpd.service", timeout=120)
        ended = last_exit(container)
        if ended != "success exited 0":
            raise StepFailed(f"the socket-activated service did not stop cleanly: {ended!r}")

    with steps.step("inetd style: storescpd-inetd.socket, one storescpd-inetd@ instance per association"):
        container.sh("systemctl start storescpd-inetd.socket")
        for label in ("study5", "study6"):
            sent = make_study(tmp_path / label, 2, label)
            send(container, sorted((tmp_path / label).iterdir()))
            steps.log(check_stored(container, INCOMING, sent))

        def instances_done() -> bool:
            out = container.sh("systemctl list-units --all --no-legend --plain 'storescpd-inetd@*'", check=False).stdout
            return not any(" active " in f" {line} " or "activating" in line or "deactivating" in line
                           for line in out.splitlines())

        wait_for(instances_done, 30, "the per-association instances to exit")
        accepted = container.show("storescpd-inetd.socket", "NAccepted")["NAccepted"]
        if accepted != "2":
            raise StepFailed(f"storescpd-inetd.socket accepted {accepted} connections, expected 2")
        failed = container.sh("systemctl list-units --failed --no-legend --plain 'storescpd-inetd@*'").stdout.strip()
        if failed:
            raise StepFailed(f"failed instances:\n{failed}")
        container.sh("systemctl stop storescpd-inetd.socket")

    with steps.step("upgrade in place (dpkg -i again): restarted, the admin's config edit kept"):
        container.sh("systemctl start storescpd", timeout=120)
        before = container.show("storescpd", "MainPID")["MainPID"]
        edited = container.path(CONFIG).read_text().replace('log_level = "info"', 'log_level = "debug"')
        container.path(CONFIG).write_text(edited)
        container.sh(f"dpkg -i {inside_deb}", timeout=300)
        props = container.show("storescpd", "ActiveState", "MainPID")
        if props["ActiveState"] != "active" or props["MainPID"] == before:
            raise StepFailed(f"after the upgrade storescpd should run again in a new process: {props} (was {before})")
        if container.path(CONFIG).read_text() != edited:
            raise StepFailed(f"the upgrade replaced the administrator's {CONFIG}")
        sent = make_study(tmp_path / "study7", 1, "study7")
        send(container, sorted((tmp_path / "study7").iterdir()))
        steps.log(f"MainPID {before} -> {props['MainPID']}; " + check_stored(container, INCOMING, sent))
        container.sh("systemctl stop storescpd", timeout=120)
        ended = last_exit(container)
        if ended != "success exited 0":
            raise StepFailed(f"unclean stop after the upgrade: {ended!r}")

    with steps.step("the journal has no Python tracebacks"):
        journal = container.sh("journalctl --no-pager -o cat -u storescpd.service -u 'storescpd-inetd@*'").stdout
        if "Traceback (most recent call last)" in journal:
            start = journal.index("Traceback (most recent call last)")
            raise StepFailed(f"a traceback in the journal:\n{journal[max(0, start - 500):start + 2500]}")
        steps.log(f"{len(journal.splitlines())} journal lines from storescpd units")

    with steps.step("apt-get purge storescpd"):
        container.sh("apt-get purge -y -q storescpd", timeout=300)
        leftovers = container.sh(
            "for p in /opt/storescpd /etc/storescpd /var/lib/storescpd /usr/bin/storescpd "
            "/lib/systemd/system/storescpd.service /lib/systemd/system/storescpd-inetd@.service; "
            "do test -e $p -o -L $p && echo $p; done; getent passwd storescpd; getent group storescpd; true"
        ).stdout.split()
        if leftovers:
            raise StepFailed(f"left behind after purge: {leftovers}")
        status = container.sh("dpkg-query -W -f='${Status}' storescpd 2>&1", check=False).stdout
        if "installed" in status and "not-installed" not in status:
            raise StepFailed(f"dpkg still lists storescpd: {status}")
