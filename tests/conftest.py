"""pytest fixtures shared by the tests; the helpers they use live in tests/support/."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.daemons import Daemon
from tests.support.peers import DcmtkStorescp
from tests.support.pki import Pki, make_pki


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start storescpd daemons (args as on its command line); every one is killed at teardown."""
    started: list[Daemon] = []

    def make(*args: str, output: Path | None = None, ready: bool = True,
             env: dict[str, str] | None = None, od: bool = True) -> Daemon:
        d = Daemon(tmp_path, args, output=output, od=od)
        started.append(d)
        return d.start(ready=ready, extra_env=env)

    yield make
    for d in started:
        d.stop(signal.SIGKILL)


@pytest.fixture
def dcmtk_storescp(tmp_path: Path) -> Iterator[Callable[..., DcmtkStorescp]]:
    """Start DCMTK's storescp with the given flags; every one is stopped at teardown."""
    started: list[DcmtkStorescp] = []

    def make(*args: str) -> DcmtkStorescp:
        s = DcmtkStorescp(tmp_path, args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One test PKI for the session (make_pki)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
