"""The package is layered: imports point down (storescpd.LAYERS) and no modules import each other in a cycle."""

from __future__ import annotations

from pathlib import Path

import storescpd
from tests.support.imports import cycles, import_graph, upward_imports

PACKAGE = Path(storescpd.__file__).parent


def test_no_import_points_up_a_layer() -> None:
    problems = upward_imports(import_graph(PACKAGE), "storescpd", storescpd.LAYERS)
    assert not problems, "\n".join(problems)


def test_no_import_cycle() -> None:
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_check_sees_a_function_local_cycle(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from pkg.low import b\n",
        "low/b.py": "from . import a\n",
    })
    assert cycles(import_graph(root)) == [["pkg.low.a", "pkg.low.b"]]


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "top/__init__.py": "",
        "top/t.py": "from pkg.low.l import x\n",
        "low/__init__.py": "",
        "low/l.py": "x = 1\ndef f():\n    from ..top import t\n",
        "stray.py": "",
    })
    problems = upward_imports(import_graph(root), "pkg", ("top", "low"))
    assert problems == ["pkg.low.l (low) imports pkg.top.t (top), a layer above it", "pkg.stray is in no declared layer"]
    assert cycles(import_graph(root)) == [["pkg.low.l", "pkg.top.t"]]
