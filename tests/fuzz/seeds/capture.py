"""Record what DCMTK's tools send to an SCP, as fuzzing seeds (run once; the captures are committed).

    .venv/bin/python -m tests.fuzz.seeds.capture

A recording TCP relay sits between each DCMTK client (/usr/bin/echoscu, /usr/bin/storescu) and
DCMTK's own /usr/bin/storescp, so the captures are what a real modality's software sends when its
association is accepted. Only the client's bytes are kept (``<name>.bin``): the A-ASSOCIATE-RQ,
every P-DATA-TF and the A-RELEASE-RQ, as they came off the wire.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from tests.support.paths import DCMTK, TEST_FILES
from tests.support.processes import free_port, wait_listening

SEEDS = Path(__file__).resolve().parent

# storescu's association profile with SCP/SCU role selection and SOP class extended negotiation:
# requests that take pynetdicom's negotiation path in the engine.
PROFILE = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = OppositeEndianExplicit
TransferSyntax3 = LittleEndianImplicit
[[PresentationContexts]]
[Contexts]
PresentationContext1 = RTPlanStorage\\Uncompressed
PresentationContext2 = SecondaryCaptureImageStorage\\Uncompressed
[[SCPSCURoleSelection]]
[Roles]
Role1 = RTPlanStorage\\SCU
Role2 = SecondaryCaptureImageStorage\\BOTH
[[ExtendedNegotiation]]
[Extended]
ExtendedNegotiation1 = SecondaryCaptureImageStorage\\0100
[[Profiles]]
[Fuzz]
PresentationContexts = Contexts
SCPSCURoleSelection = Roles
ExtendedNegotiation = Extended
"""

# name -> (client, its options, the files it sends after host and port)
CLIENTS: dict[str, tuple[str, list[str], list[str]]] = {
    "echoscu": ("echoscu", [], []),
    # storescu proposes ~120 contexts; rtplan.dcm arrives in several P-DATA-TF PDUs (-pdu 4096)
    "storescu-rtplan": ("storescu", [], [str(TEST_FILES / "rtplan.dcm")]),
    # implicit VR only; two objects in one association
    "storescu-implicit-two": ("storescu", ["-xi"], [str(TEST_FILES / "SC_rgb_small_odd.dcm"),
                                                   str(TEST_FILES / "rtplan.dcm")]),
    "storescu-roles-extneg": ("storescu", ["-xf", "{profile}", "Fuzz"], [str(TEST_FILES / "SC_rgb_small_odd.dcm")]),
}


def _relay(listener: socket.socket, upstream: int, recorded: bytearray) -> None:
    client, _ = listener.accept()
    server = socket.create_connection(("127.0.0.1", upstream))

    def pump(src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:
        while data := src.recv(65536):
            if keep is not None:
                keep += data
            dst.sendall(data)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    back = threading.Thread(target=pump, args=(server, client, None))
    back.start()
    pump(client, server, recorded)
    back.join(10)
    client.close()
    server.close()


def capture(name: str, program: str, args: list[str], files: list[str], workdir: Path) -> bytes:
    scp_port = free_port()
    scp = subprocess.Popen([str(DCMTK / "storescp"), "-pdu", "4096", "-od", str(workdir), str(scp_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(scp_port)
        listener = socket.create_server(("127.0.0.1", 0))
        recorded = bytearray()
        relay = threading.Thread(target=_relay, args=(listener, scp_port, recorded), daemon=True)
        relay.start()
        profile = workdir / "profile.cfg"
        profile.write_text(PROFILE)
        argv = [a.replace("{profile}", str(profile)) for a in args]
        done = subprocess.run([str(DCMTK / program), "-pdu", "4096", *argv, "127.0.0.1",
                               str(listener.getsockname()[1]), *files], capture_output=True, text=True, timeout=60)
        relay.join(20)
        listener.close()
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {program} failed: {done.stderr}")
        return bytes(recorded)
    finally:
        scp.kill()
        scp.wait()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, (program, args, files) in CLIENTS.items():
            data = capture(name, program, args, files, Path(tmp))
            (SEEDS / f"{name}.bin").write_bytes(data)
            print(f"{name}.bin: {len(data)} bytes")


if __name__ == "__main__":
    main()
