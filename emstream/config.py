"""Session folders and the record of how a session was run (``SESSION/config.json``)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

#: Packages whose versions are recorded with every session (those not installed are omitted).
VERSIONED_PACKAGES = (
    "emstream", "numpy", "scipy", "scikit-image", "opencv-python-headless", "tifffile", "mrcfile",
    "pyzmq", "watchdog", "onnxruntime", "torch", "tensorrt", "PySide6-Essentials", "pyqtgraph", "ncempy",
    "rosettasciio", "distributed",
)

DEFAULT_SESSIONS_ROOT = Path("sessions")


def versions() -> dict[str, str]:
    """Python, platform and the installed versions of the packages that shape results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def new_session_dir(session_dir: str | Path | None = None, *, root: str | Path | None = None) -> Path:
    """The session folder to use: ``session_dir`` if given, else ``./sessions/<timestamp>/``.

    An existing ``session_dir`` is reused (a restarted monitor resumes its ledger).
    """
    if session_dir is not None:
        p = Path(session_dir)
    else:
        base = Path(root) if root is not None else DEFAULT_SESSIONS_ROOT
        stamp = time.strftime("%Y%m%d-%H%M%S")
        p = base / stamp
        n = 1
        while p.exists():
            n += 1
            p = base / f"{stamp}-{n}"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def write_config(session_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config.json`` atomically; earlier runs of a resumed session are kept in ``runs``."""
    path = Path(session_dir) / "config.json"
    runs: list[Any] = []
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            runs = list(old.get("runs", [])) + [{k: v for k, v in old.items() if k != "runs"}]
        except (OSError, ValueError):
            runs = []
    doc = dict(_jsonable(config))
    if runs:
        doc["runs"] = runs
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_config(session_dir: str | Path) -> dict[str, Any]:
    path = Path(session_dir) / "config.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
