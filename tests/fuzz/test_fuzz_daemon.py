"""Fuzzing a real daemon over loopback: the supervisor's peek at each connection's first PDU header,
the hand-over to a pool worker, and the worker's association, fed the mutated DCMTK captures, cut
anywhere and closed, half-closed or left open.

Properties, one daemon for every input: each connection is answered or closed within the bounds of
the protocol (the A-ASSOCIATE timeout for a request that never completes); after every input the
daemon still answers DCMTK's echoscu; no traceback in its log; nothing written beside the output
directory, and after the last input nothing left in its staging folder.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.daemons import Daemon
from tests.support.fuzzing import CAPTURES, captured, examples, mutated, split_pdus
from tests.support.peers import echoscu, require_dcmtk

ACSE_TIMEOUT = 3  # -ta: a request that never completes is dropped after this many seconds


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    require_dcmtk()
    workdir = tmp_path_factory.mktemp("daemon")
    d = Daemon(workdir, ["-ta", str(ACSE_TIMEOUT), "-td", "5"], output=workdir / "out")
    d.start()
    yield d
    d.stop(signal.SIGKILL)


@st.composite
def connections(draw: st.DrawFn) -> tuple[bytes, str]:
    units = split_pdus(captured(draw(st.sampled_from(CAPTURES))))
    stream = b"".join(units[:draw(st.integers(1, len(units)))])
    if draw(st.integers(0, 3)):
        stream = draw(mutated(stream, max_mutations=3))
    return stream, draw(st.sampled_from(["close", "half-close", "wait"]))


def _answer(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:  # closed with bytes of ours unread: closed all the same
            return data + b"<closed>"
        if not chunk:
            return data + b"<closed>"
        data += chunk
    return data


@settings(max_examples=examples(30))
@given(case=connections())
def test_a_real_daemon_survives_any_connection(daemon: Daemon, case: tuple[bytes, str]) -> None:
    stream, ending = case
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        try:
            sock.sendall(stream)
            if ending == "half-close":
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if ending != "close":
            # every connection ends: answered and closed, or dropped at the A-ASSOCIATE timeout
            answer = _answer(sock, time.monotonic() + ACSE_TIMEOUT + 12)
            assert answer.endswith(b"<closed>"), (
                f"connection still open after {ACSE_TIMEOUT + 12} s (got {answer[:16]!r}); daemon "
                f"{'running' if daemon.proc and daemon.proc.poll() is None else 'gone'}; its log:\n{daemon.log()[-3000:]}")
    done = echoscu(daemon.port, "-to", "10")
    assert done.returncode == 0, f"the daemon stopped answering: {done.stderr}\n{daemon.log()[-2000:]}"
    assert daemon.proc is not None and daemon.proc.poll() is None
    # pynetdicom logs a traceback of its own before it raises (main's role-selection path): ours are
    # an internal error of an association or a failed worker
    assert "internal error" not in daemon.log() and " failed\n" not in daemon.log(), daemon.log()[-4000:]
    beside = [p.name for p in daemon.output.parent.iterdir() if p != daemon.output]
    assert all(name.startswith(("notify-", "daemon-")) for name in beside), beside


def test_nothing_is_left_in_staging_after_the_fuzzing(daemon: Daemon) -> None:
    """Runs after the fuzz test above (same module, same daemon): every partial object was dropped."""
    daemon.wait_no_partial_files(timeout=20)
    assert list(daemon.output.iterdir()) == [] or all(p.is_file() or p.name == ".storescpd-staging"
                                                       for p in daemon.output.iterdir())
