"""A part CI installs is never silently missing there: skip_or_fail skips locally and fails under CI."""

from __future__ import annotations

import pytest

from tests.support.ci import in_ci, skip_or_fail


@pytest.mark.parametrize("value,expected", [("true", True), ("1", True), ("", False), ("false", False),
                                            ("0", False), (None, False)])
def test_ci_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_skips_on_a_developer_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        skip_or_fail("needs root")


def test_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs root.*CI must provide this"):
        skip_or_fail("needs root")
