"""Tests import shared helpers from tests/support/, never from another test module or a conftest."""

from __future__ import annotations

from pathlib import Path

import tests
from tests.support.imports import import_graph

TESTS = Path(tests.__file__).parent


def is_test_module(module: str) -> bool:
    """A module pytest collects or loads by itself: test_*.py and conftest.py."""
    last = module.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def imports_of_test_modules(root: Path) -> list[str]:
    """Every import of a test module or conftest, by any module under `root`, as readable lines."""
    return [f"{module} imports {target}: move what it uses to {root.name}/support/ and import it from there"
            for module, targets in sorted(import_graph(root).items())
            for target in sorted(targets) if is_test_module(target)]


def test_no_module_imports_a_test_module_or_conftest() -> None:
    problems = imports_of_test_modules(TESTS)
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_test_module_importing_another(tmp_path: Path) -> None:
    root = tmp_path / "tests"
    for name, text in {
        "__init__.py": "",
        "conftest.py": "HELPER = 1\n",
        "support/__init__.py": "",
        "support/peers.py": "def storescu():\n    pass\n",
        "unit/__init__.py": "",
        "unit/test_a.py": "from tests.support.peers import storescu\nfrom tests.conftest import HELPER\n",
        "integration/__init__.py": "",
        "integration/test_b.py": "def test_b():\n    from tests.unit import test_a\n",
    }.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert imports_of_test_modules(root) == [
        "tests.integration.test_b imports tests.unit.test_a: move what it uses to tests/support/ and import it from there",
        "tests.unit.test_a imports tests.conftest: move what it uses to tests/support/ and import it from there",
    ]
