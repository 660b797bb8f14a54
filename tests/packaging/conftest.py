"""The packaging test builds a .deb and boots Debian 12 in systemd-nspawn: opt-in only.

It runs when selected by marker (`pytest -m packaging tests/packaging`) or with
STORESCPD_PACKAGING=1, so that a plain `pytest` of the unit and integration tests does not
start containers as a side effect.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = "packaging" in (config.option.markexpr or "") or os.environ.get("STORESCPD_PACKAGING") == "1"
    if selected:
        return
    skip = pytest.mark.skip(reason="boots a container: run with `pytest -m packaging tests/packaging`")
    for item in items:
        if item.get_closest_marker("packaging"):
            item.add_marker(skip)
