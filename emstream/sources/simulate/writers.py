"""Write a simulated session into a folder the way acquisition software does, with a manifest.

Write modes (frames cycle through ``modes`` in order):

``whole``
    ``frame_NNNNNN.tif`` opened, written in one go, closed.
``chunked``
    ``frame_NNNNNN.tif`` opened under its final name and written in ``chunks`` pieces with
    sleeps in between (a slow network share / a camera writer that streams), then closed. A
    watcher sees the file grow and must wait until it is complete.
``temp_rename``
    written to ``frame_NNNNNN.tif.tmp`` (in chunks with sleeps), closed, then
    ``os.replace``-d to ``frame_NNNNNN.tif`` (atomic on the same volume).
``mrc_stack``
    slices appended in place to ``stack_NNN.mrc`` (uint16, MRC mode 6, ``ispg`` 0 = image
    stack, voxel size in Å): the slice data are appended first, *then* the header's ``nz``
    (and ``mz``, cell z) is updated, so a reader that trusts ``nz`` never reads a partial
    slice. A new stack starts every ``stack_size`` slices.

TIFFs are 16-bit, single page, ImageJ-flavoured: ImageJ ``unit=nm`` with X/YResolution = px per
nm, and the emstream JSON (``generator``, ``nm_per_px`` [y, x], ``t_acq``, ``seq``, ``mode``,
``shape``) in the ImageJ ``Info`` property (ImageJ owns the ImageDescription tag in such files;
tifffile drops any other description).

Injected bad files (``inject_bad=True``; spread over the session, each kind at least once when
``frames >= 8``), all ``expected status "quarantined"``:

- ``zero_bytes``: ``bad_NNNNNN.tif`` created empty and never written.
- ``truncated``: ``bad_NNNNNN.tif`` holding the first 40 % of a valid TIFF; never completed.
- ``random_bytes``: ``bad_NNNNNN.tif`` of random bytes (no TIFF magic).
- ``mrc_short``: ``bad_stack_NNN.mrc`` whose header declares 4 slices but holds 2.

Manifest ``simulator-manifest.jsonl`` (one JSON object per line, appended and flushed when the
file or slice it describes is complete; a second session into the same folder appends to it and
numbers its files after the first one's):

- per frame/file: ``kind`` (``"frame"``, or ``"bad"`` for an injected bad file), ``file``
  (relative to ``out_dir``), ``slice`` (index in the MRC stack or
  ``null``), ``seq`` (simulator frame number; ``null`` for injected bad files), ``t_acq``,
  ``write_mode``, ``nm_per_px``, ``imaging`` (``bf``/``haadf``), ``shape`` [h, w],
  ``status`` (``"ok"`` or ``"quarantined"``), ``defect`` (``null`` or the injected kind),
  ``particles`` (truth list, see :class:`.scene.SimFrame`), ``stage_offset_px`` [y, x] (the
  accumulated stage drift), ``events`` (coalescence / nucleation / dissolution with the
  particle ids involved; :class:`.scene.SimFrame`) and ``state`` (the frame state a scripted
  event should produce, ``ok`` otherwise: :mod:`.script`). Particle ``id`` s persist.
- last line: ``{"kind": "end", "event": "end", "frames": good frames written, "bad_files": n,
  "stopped": bool, "t_end": ..., "seed": ..., "modes": [...]}``.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import tifffile

from . import script as script_mod
from .scene import Microscope, SceneConfig, SimFrame

__all__ = ["WRITE_MODES", "MANIFEST_NAME", "write_session", "tiff_bytes", "MrcStackWriter"]

WRITE_MODES = ("whole", "chunked", "temp_rename", "mrc_stack")
MANIFEST_NAME = "simulator-manifest.jsonl"
BAD_KINDS = ("zero_bytes", "truncated", "random_bytes", "mrc_short")


def _meta(frame: SimFrame) -> dict[str, Any]:
    return {
        "generator": "emstream-simulate",
        "nm_per_px": [frame.nm_per_px, frame.nm_per_px],
        "unit": "nm",
        "t_acq": frame.t_acq,
        "seq": frame.seq,
        "mode": frame.mode,
        "shape": list(frame.image.shape),
    }


def tiff_bytes(frame: SimFrame) -> bytes:
    """A 16-bit ImageJ TIFF of the frame with its calibration (ImageJ unit/resolution + JSON)."""
    px_per_nm = 1.0 / frame.nm_per_px
    buf = io.BytesIO()
    tifffile.imwrite(
        buf, frame.image.astype(np.uint16, copy=False), imagej=True,
        resolution=(px_per_nm, px_per_nm),
        metadata={"unit": "nm", "Info": json.dumps(_meta(frame))},
    )
    return buf.getvalue()


class MrcStackWriter:
    """An MRC image stack that grows in place, one slice at a time."""

    HEADER = 1024

    def __init__(self, path: Path, nm_per_px: float) -> None:
        self.path = Path(path)
        self.nm_per_px = float(nm_per_px)
        self.nz = 0
        self._min = math.inf
        self._max = -math.inf
        self._sum = 0.0
        self._sumsq = 0.0
        self._count = 0

    def _stats(self, img: np.ndarray) -> tuple[float, float, float, float]:
        """Running dmin, dmax, dmean, rms of the whole stack (kept valid after every slice)."""
        v = img.astype(np.float64)
        self._min = min(self._min, float(v.min()))
        self._max = max(self._max, float(v.max()))
        self._sum += float(v.sum())
        self._sumsq += float((v * v).sum())
        self._count += v.size
        mean = self._sum / self._count
        rms = math.sqrt(max(self._sumsq / self._count - mean * mean, 0.0))
        return self._min, self._max, mean, rms

    def append(self, image: np.ndarray) -> int:
        """Append one slice; returns its index. Data first, then the header's ``nz``."""
        img = np.ascontiguousarray(image, dtype=np.uint16)
        dmin, dmax, dmean, rms = self._stats(img)
        if self.nz == 0:
            with mrcfile.new(self.path, overwrite=True) as m:
                m.set_data(img[None])
                m.set_image_stack()
                m.voxel_size = self.nm_per_px * 10.0  # Å
                m.update_header_stats()
            self.nz = 1
            return 0
        with open(self.path, "r+b") as fh:
            fh.seek(0, os.SEEK_END)
            fh.write(img.tobytes())
            fh.flush()
            nz = self.nz + 1
            # nz (word 3), mz (word 10) and cella.z (word 13, Å) after the data are in place
            fh.seek(8)
            fh.write(np.int32(nz).tobytes())
            fh.seek(36)
            fh.write(np.int32(nz).tobytes())
            fh.seek(48)
            fh.write(np.float32(nz * self.nm_per_px * 10.0).tobytes())
            fh.seek(76)  # dmin, dmax, dmean (words 20-22) and rms (word 55)
            fh.write(np.array([dmin, dmax, dmean], np.float32).tobytes())
            fh.seek(216)
            fh.write(np.float32(rms).tobytes())
            fh.flush()
        self.nz += 1
        return self.nz - 1


def _resume_numbering(manifest: Path) -> tuple[int, int]:
    """``(next frame number, next stack number)`` after a session already in the folder."""
    if not manifest.exists():
        return 0, 0
    seqs, stacks = [-1], set()
    for line in manifest.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("kind") == "frame" and isinstance(rec.get("seq"), int):
            seqs.append(rec["seq"])
            if rec.get("write_mode") == "mrc_stack":
                stacks.add(rec.get("file"))
    return max(seqs) + 1, len(stacks)


def _write_chunked(path: Path, data: bytes, chunks: int, pause: float,
                   stop: threading.Event) -> None:
    n = max(int(chunks), 1)
    step = -(-len(data) // n)
    with open(path, "wb") as fh:
        for k in range(n):
            fh.write(data[k * step:(k + 1) * step])
            fh.flush()
            if k < n - 1 and pause > 0:
                stop.wait(pause)


def _bad_schedule(frames: int, rng: np.random.Generator) -> dict[int, str]:
    """Frame index -> bad kind injected just after that frame."""
    if frames < 2:
        return {0: "zero_bytes"} if frames == 1 else {}
    n_each = max(1, frames // 50)
    kinds = [k for k in BAD_KINDS for _ in range(n_each)]
    slots = rng.choice(np.arange(1, frames), size=min(len(kinds), frames - 1), replace=False)
    return {int(s): k for s, k in zip(sorted(slots), kinds, strict=False)}


def write_session(
    out_dir: str | os.PathLike,
    *,
    frames: int,
    fps: float,
    seed: int,
    modes: Sequence[str] = WRITE_MODES,
    inject_bad: bool = False,
    stop: threading.Event | None = None,
    config: SceneConfig | None = None,
    stack_size: int = 10,
    chunks: int = 4,
    on_frame: Callable[[dict[str, Any]], None] | None = None,
    script: str | None = None,
) -> Path:
    """Simulate ``frames`` frames and write them into ``out_dir`` as acquisition software does.

    Parameters
    ----------
    out_dir : folder to write into (created).
    frames : number of good frames to write.
    fps : real-time pacing (frames per second); ``<= 0`` writes as fast as possible.
    seed : seeds the sample, the noise and the bad-file schedule.
    modes : write modes to cycle through (see module docstring).
    inject_bad : also write zero-byte, truncated, random-bytes TIFFs and a short MRC.
    stop : set it to stop early (the manifest still gets its end line).
    config : the simulated microscope (default :class:`SceneConfig` with ``fps`` and the
        coverage ramp over ``frames``).
    stack_size : slices per MRC stack before a new one starts.
    chunks : pieces per chunked / temp-then-rename write.
    on_frame : called with each manifest record after it is written (progress display).

    Returns
    -------
    Path of the manifest ``out_dir/simulator-manifest.jsonl``.
    """
    unknown = set(modes) - set(WRITE_MODES)
    if unknown or not modes:
        raise ValueError(f"unknown write mode(s) {sorted(unknown)}; choose from {WRITE_MODES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    if config is None:  # sparse → crowded over the session's own length
        config = SceneConfig(fps=fps if fps > 0 else 2.0, ramp_frames=max(frames, 1))
    scope = Microscope(config, seed=seed)
    rng = np.random.default_rng([seed, 0xBAD])
    events = script_mod.parse_script(script)  # scripted trouble (focus, beam, stage...)
    bad_at = _bad_schedule(frames, rng) if inject_bad else {}
    period = 1.0 / fps if fps > 0 else 0.0
    pause = min(0.5 * period, 1.0) / max(chunks, 1) if period else 0.0
    manifest = out / MANIFEST_NAME
    # a folder that already holds a simulated session: go on numbering after it (acquisition
    # software never overwrites a file it wrote earlier)
    first, n_stacks = _resume_numbering(manifest)
    stack: MrcStackWriter | None = None
    n_good = n_bad = 0
    last_tiff: bytes | None = None
    t_start = time.monotonic()
    with open(manifest, "a", encoding="utf-8") as mf:

        def record(rec: dict[str, Any]) -> None:
            mf.write(json.dumps(rec) + "\n")
            mf.flush()
            if on_frame is not None:
                on_frame(rec)

        for i in range(frames):
            if period:
                wait = t_start + i * period - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    break
            if stop.is_set():
                break
            script_mod.before_frame(events, scope, i)
            frame = scope.next_frame(t_acq=time.time())
            expected_state = script_mod.apply(events, scope, frame, i)
            frame.seq += first
            mode = modes[i % len(modes)]
            rec: dict[str, Any] = {
                "kind": "frame", "file": None, "slice": None, "seq": frame.seq,
                "t_acq": frame.t_acq,
                "write_mode": mode, "nm_per_px": frame.nm_per_px, "imaging": frame.mode,
                "shape": list(frame.image.shape), "status": "ok", "defect": None,
                "particles": frame.particles,
                "stage_offset_px": list(frame.stage_offset_px), "events": frame.events,
                "state": expected_state,
            }
            if mode == "mrc_stack":
                if stack is None or stack.nz >= stack_size:
                    stack = MrcStackWriter(out / f"stack_{n_stacks:03d}.mrc", frame.nm_per_px)
                    n_stacks += 1
                rec["slice"] = stack.append(frame.image)
                rec["file"] = stack.path.name
            else:
                name = f"frame_{frame.seq:06d}.tif"
                data = tiff_bytes(frame)
                last_tiff = data
                if mode == "whole":
                    with open(out / name, "wb") as fh:
                        fh.write(data)
                elif mode == "chunked":
                    _write_chunked(out / name, data, chunks, pause, stop)
                else:
                    tmp = out / (name + ".tmp")
                    _write_chunked(tmp, data, chunks, pause, stop)
                    os.replace(tmp, out / name)
                rec["file"] = name
            record(rec)
            n_good += 1
            kind = bad_at.get(i)
            if kind is not None:
                _write_bad(out, kind, first + i, frame, last_tiff, rng, record)
                n_bad += 1
        record({"kind": "end", "event": "end", "frames": n_good, "bad_files": n_bad,
                "stopped": stop.is_set() or n_good < frames, "t_end": time.time(),
                "seed": seed, "modes": list(modes)})
    return manifest


def _write_bad(out: Path, kind: str, i: int, frame: SimFrame, last_tiff: bytes | None,
               rng: np.random.Generator, record: Callable[[dict[str, Any]], None]) -> None:
    rec: dict[str, Any] = {
        "kind": "bad", "file": None, "slice": None, "seq": None, "t_acq": time.time(),
        "write_mode": "bad",
        "nm_per_px": frame.nm_per_px, "imaging": frame.mode, "shape": list(frame.image.shape),
        "status": "quarantined", "defect": kind, "particles": [],
    }
    if kind == "mrc_short":
        name = f"bad_stack_{i:06d}.mrc"
        path = out / name
        # Built under a temporary name and renamed, so a watcher never sees the two complete
        # slices before the header claims four (that would be a legitimate growing stack).
        tmp = out / f"{name}.tmp"
        w = MrcStackWriter(tmp, frame.nm_per_px)
        w.append(frame.image)
        w.append(frame.image)
        with open(tmp, "r+b") as fh:  # header claims 4 slices, the file holds 2
            fh.seek(8)
            fh.write(np.int32(4).tobytes())
            fh.seek(36)
            fh.write(np.int32(4).tobytes())
        os.replace(tmp, path)
    else:
        name = f"bad_{i:06d}.tif"
        path = out / name
        if kind == "zero_bytes":
            path.touch()
        elif kind == "truncated":
            data = last_tiff if last_tiff is not None else tiff_bytes(frame)
            path.write_bytes(data[: int(len(data) * 0.4)])
        else:
            n = int(rng.integers(2000, 200_000))
            junk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            if junk[:2] in (b"II", b"MM"):
                junk = b"\x00\x00" + junk[2:]
            path.write_bytes(junk)
    rec["file"] = name
    record(rec)
