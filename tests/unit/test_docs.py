"""docs/options.md is generated from the settings table and committed: they must agree."""

from __future__ import annotations

from storescpd.config.docs import render
from tests.support.paths import ROOT


def test_committed_options_reference_is_generated() -> None:
    committed = (ROOT / "docs" / "options.md").read_text()
    assert committed == render(), "docs/options.md is stale: run .venv/bin/python -m storescpd.config.docs > docs/options.md"


def test_every_flag_has_a_status() -> None:
    text = render()
    for marker in ("`+te` `--write-xfer-little`", "`-xf` `--config-file`", "`+B` `--bit-preserving`"):
        line = next(line for line in text.splitlines() if line.startswith(f"| {marker}"))
        assert line.endswith("| supported |"), line


def test_committed_conformance_statement_is_generated() -> None:
    from storescpd.config.conformance import render as conformance

    committed = (ROOT / "docs" / "conformance.md").read_text()
    assert committed == conformance(), "docs/conformance.md is stale: run .venv/bin/python -m storescpd.config.conformance > docs/conformance.md"


def test_man_page_configuration_section_names_every_toml_key() -> None:
    from storescpd.config.settings import SETTINGS
    from storescpd.config.docs import man_configuration_section

    text = man_configuration_section()
    assert text.startswith("[CONFIGURATION FILE]")
    keys = [line.split("\\fB", 1)[1].split("\\fR", 1)[0] for line in text.splitlines()
            if line.startswith("\\fB") and " = " in line]
    assert sorted(keys) == sorted(s.name for s in SETTINGS if s.in_file)  # what a TOML file may hold
