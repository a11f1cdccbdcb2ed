"""On-disk cache of TensorRT plans (engines) and timing caches.

A plan is only valid for the exact model, TensorRT version, GPU and optimisation profile it was
built for. Its cache key is the sha256 of a canonical JSON of

``{"model_sha256", "tensorrt", "gpu", "compute_capability", "profile", "precision"}``

and it is stored as ``<cache>/<model>-<key16>.plan`` with a JSON sidecar
``<model>-<key16>.json`` that repeats the full key (plus build facts: time, build seconds,
verification against ONNX Runtime). Loading checks, in order: plan present, sidecar present and
parseable, sidecar key identical to the wanted key, plan size and sha256 equal to the sidecar's,
and finally that the runtime deserialises it. Any failure returns a *reason* and no engine; the
caller rebuilds (a foreign, stale or corrupt plan is never used). Writes are atomic
(temporary file + rename), so a crash mid-write leaves no half plan behind.

The default directory is ``platformdirs.user_cache_dir("emstream") / "tensorrt"``
(``EMSTREAM_CACHE_DIR`` overrides it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Shape = tuple[int, int, int, int]


def default_cache_dir() -> Path:
    env = os.environ.get("EMSTREAM_CACHE_DIR")
    if env:
        return Path(env) / "tensorrt"
    import platformdirs

    return Path(platformdirs.user_cache_dir("emstream")) / "tensorrt"


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimisation profile for the input ``image`` (N, C, H, W)."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        for a, b in ((self.min, self.opt), (self.opt, self.max)):
            if len(a) != 4 or len(b) != 4 or any(x > y for x, y in zip(a, b, strict=True)):
                raise ValueError(f"profile shapes must satisfy min <= opt <= max, got {self}")

    @classmethod
    def for_frames(cls, sizes, multiple: int = 16, batch: int = 1, channels: int = 1) -> Profile:
        """Profile covering frames of the given ``(h, w)`` sizes (padded to ``multiple``) for a
        model of ``channels`` input channels; ``opt`` is the largest (the one that must be
        fast)."""
        sizes = [tuple(int(v) for v in s) for s in sizes]
        if not sizes:
            raise ValueError("need at least one frame size")

        def pad(v: int) -> int:
            return -(-v // multiple) * multiple

        hs = [pad(h) for h, _ in sizes]
        ws = [pad(w) for _, w in sizes]
        big = max(range(len(sizes)), key=lambda i: hs[i] * ws[i])
        c = int(channels)
        return cls((1, c, min(hs), min(ws)), (batch, c, hs[big], ws[big]),
                   (batch, c, max(hs), max(ws)))

    def as_lists(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class PlanKey:
    """Everything a plan depends on."""

    model: str
    model_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    profile: Profile
    precision: str = "fp16"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = self.profile.as_lists()
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def stem(self) -> str:
        return f"{self.model}-{self.digest[:16]}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PlanCache:
    """Plans and timing caches under one directory (see module docstring)."""

    def __init__(self, directory: str | Path | None = None):
        self.dir = Path(directory) if directory is not None else default_cache_dir()

    def plan_path(self, key: PlanKey) -> Path:
        return self.dir / f"{key.stem}.plan"

    def sidecar_path(self, key: PlanKey) -> Path:
        return self.dir / f"{key.stem}.json"

    def timing_cache_path(self, key: PlanKey) -> Path:
        gpu = hashlib.sha256(f"{key.gpu}|{key.compute_capability}".encode()).hexdigest()[:12]
        return self.dir / f"timing-trt{key.tensorrt}-{gpu}.cache"

    # -- plans -------------------------------------------------------------------------------
    def check(self, key: PlanKey) -> tuple[bytes | None, str]:
        """``(plan bytes, "ok")`` when a plan for ``key`` exists and its sidecar matches, else
        ``(None, reason)``."""
        plan, side = self.plan_path(key), self.sidecar_path(key)
        if not plan.is_file():
            return None, "no cached plan"
        if not side.is_file():
            return None, f"plan {plan.name} has no sidecar"
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            return None, f"sidecar {side.name} unreadable ({e})"
        if meta.get("key") != key.as_dict():
            diff = sorted(k for k in key.as_dict() if (meta.get("key") or {}).get(k) != key.as_dict()[k])
            return None, f"plan {plan.name} was built for another {', '.join(diff) or 'key'}"
        data = plan.read_bytes()
        if len(data) != meta.get("plan_bytes") or hashlib.sha256(data).hexdigest() != meta.get(
                "plan_sha256"):
            return None, f"plan {plan.name} does not match its sidecar (truncated or modified)"
        return data, "ok"

    def load(self, key: PlanKey, deserialize: Callable[[bytes], Any]) -> tuple[Any | None, str]:
        """Deserialised engine for ``key`` or ``(None, reason)``; a plan that the runtime
        refuses (returns None or raises) is reported, and the caller rebuilds it."""
        data, reason = self.check(key)
        if data is None:
            return None, reason
        try:
            engine = deserialize(data)
        except Exception as e:  # the runtime's own error types
            return None, f"plan {self.plan_path(key).name} failed to deserialize ({e})"
        if engine is None:
            return None, f"plan {self.plan_path(key).name} failed to deserialize"
        return engine, "ok"

    def save(self, key: PlanKey, plan: bytes, facts: dict[str, Any] | None = None) -> Path:
        """Store a plan and its sidecar (plan first: a sidecar never points to a missing plan)."""
        plan = bytes(plan)
        path = self.plan_path(key)
        _atomic_write(path, plan)
        meta = {"key": key.as_dict(), "plan_bytes": len(plan),
                "plan_sha256": hashlib.sha256(plan).hexdigest(), "created": time.time(),
                **(facts or {})}
        _atomic_write(self.sidecar_path(key), json.dumps(meta, indent=2).encode())
        return path

    def discard(self, key: PlanKey) -> None:
        for p in (self.plan_path(key), self.sidecar_path(key)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def entries(self, model: str | None = None) -> list[dict[str, Any]]:
        """Sidecars of cached plans (for ``engine info``)."""
        out = []
        if not self.dir.is_dir():
            return out
        for side in sorted(self.dir.glob("*.json")):
            try:
                meta = json.loads(side.read_text())
            except (OSError, ValueError):
                continue
            k = meta.get("key", {})
            if model and k.get("model") != model:
                continue
            out.append({"plan": str(side.with_suffix(".plan")), **meta})
        return out

    # -- timing cache -----------------------------------------------------------------------
    def load_timing_cache(self, key: PlanKey) -> bytes:
        p = self.timing_cache_path(key)
        try:
            return p.read_bytes()
        except OSError:
            return b""

    def save_timing_cache(self, key: PlanKey, data: bytes) -> None:
        if data:
            _atomic_write(self.timing_cache_path(key), bytes(data))
