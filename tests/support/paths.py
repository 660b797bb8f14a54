"""Where things are: the repository, the storescpd under test, DCMTK's tools and pydicom's test files."""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[2]
# The storescpd installed in the venv that runs pytest (`pip install -e .`), not one on PATH.
STORESCPD = str(Path(sys.executable).parent / "storescpd")
# By absolute path: pynetdicom installs its own storescp/storescu/echoscu first on the venv's PATH.
DCMTK = Path("/usr/bin")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
