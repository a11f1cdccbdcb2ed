"""The layering of DESIGN.md, checked: pure processing, Qt only in gui/, GPU runtimes only in backends/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed")
    proc = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_processing_modules_import_without_io_frameworks():
    """Import the pure modules in a fresh interpreter and check no GPU runtime or Qt came along."""
    code = (
        "import sys, emstream.process.measure, emstream.process.stats, emstream.process.prepare;"
        "bad = [m for m in ('torch', 'onnxruntime', 'PySide6', 'pyqtgraph', 'zmq', 'sqlite3')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
