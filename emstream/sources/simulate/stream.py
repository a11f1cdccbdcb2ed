"""Send a simulated session over ZeroMQ as emstream v1 messages (like a detector would).

The sender binds (a detector is the fixed end) and the listener connects; ``bind=False`` turns
that round. PUSH by default (blocks, no silent loss, while no listener is connected; ``stop``
still aborts), PUB optional (drops while nobody subscribes). Messages are built with
:func:`emstream.sources.protocol.encode_v1`; series name ``sim-<seed>``, ``seq`` = the
simulator's frame number.

Malformed-message injection (``malformed=True``), each kind once per ~50 good frames, spread
over the session (at least once each when ``frames >= len(BAD_MESSAGES)``):

=================  ==========================================================================
``not_json``       header part is not JSON
``one_part``       a single-part message (no payload)
``three_parts``    an extra third part
``bad_version``    header ``"v": 2``
``wrong_shape``    header ``shape`` does not match the payload (payload of a different frame)
``bad_dtype``      header dtype ``"object"``
``negative_seq``   header ``seq`` -1
``oversized``      a valid message with a frame 4x the normal size (2x each side); a receiver
                   with ``max_frame_bytes`` below that must refuse it. Sent once, after the
                   last good frame (ZeroMQ drops a connection on a message above
                   ``ZMQ_MAXMSGSIZE`` and loses what was queued behind it)
=================  ==========================================================================

``manifest`` (optional path) gets one JSON line per message sent, as in
:mod:`.writers` (``series``, ``seq``, ``t_acq``, ``nm_per_px``, ``status`` ``"ok"`` /
``"rejected"``, ``defect``, ``particles``) and a final ``{"event": "end", ...}`` line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from emstream.sources.protocol import encode_v1
from emstream.sources.zmq import check_endpoint

from . import script as script_mod
from .scene import Microscope, SceneConfig

__all__ = ["BAD_MESSAGES", "send_stream"]

BAD_MESSAGES = ("not_json", "one_part", "three_parts", "bad_version", "wrong_shape",
                "bad_dtype", "negative_seq", "oversized")


def _check_local(endpoint: str, bind: bool, allow_remote: bool) -> None:
    """Loopback by default (the same rule and messages as the listener)."""
    check_endpoint(endpoint, bind=bind, allow_remote=allow_remote)


def _bad_message(kind: str, parts: list[bytes], image: np.ndarray, seq: int, series: str,
                 t_acq: float, nm: float) -> list[bytes]:
    header = json.loads(parts[0])
    if kind == "not_json":
        return [b"\xff{not json", parts[1]]
    if kind == "one_part":
        return [parts[0]]
    if kind == "three_parts":
        return [parts[0], parts[1], b"extra"]
    if kind == "bad_version":
        header["v"] = 2
    elif kind == "wrong_shape":
        header["shape"] = [max(image.shape[0] - 1, 1), image.shape[1]]
    elif kind == "bad_dtype":
        header["dtype"] = "object"
    elif kind == "negative_seq":
        header["seq"] = -1
    elif kind == "oversized":
        big = np.tile(image, (2, 2))
        return encode_v1(big, seq=seq, series=series, t_acq=t_acq, pixel_size_nm=(nm, nm),
                         meta={"simulator": "oversized"})
    return [json.dumps(header).encode(), parts[1]]


def _schedule(frames: int, rng: np.random.Generator) -> dict[int, list[str]]:
    """Frame index -> malformed kinds sent right after that frame.

    ``oversized`` goes after the last good frame: a receiver with ``ZMQ_MAXMSGSIZE`` drops the
    connection on it, and ZeroMQ then discards whatever was still queued for that peer.
    """
    n_each = max(1, frames // 50)
    kinds = [k for k in BAD_MESSAGES if k != "oversized" for _ in range(n_each)]
    slots = rng.integers(0, max(frames, 1), size=len(kinds))
    out: dict[int, list[str]] = {}
    for s, k in zip(slots.tolist(), kinds, strict=True):
        out.setdefault(int(s), []).append(k)
    out.setdefault(max(frames - 1, 0), []).append("oversized")
    return out


def send_stream(
    endpoint: str,
    *,
    frames: int,
    fps: float,
    seed: int,
    bind: bool = True,
    pattern: str = "push",
    malformed: bool = False,
    stop: threading.Event | None = None,
    config: SceneConfig | None = None,
    allow_remote: bool = False,
    manifest: str | os.PathLike | None = None,
    on_bound: Callable[[str], None] | None = None,
    on_frame: Callable[[dict[str, Any]], None] | None = None,
    linger_ms: int = 5000,
    context: zmq.Context | None = None,
    script: str | None = None,
) -> dict[str, Any]:
    """Simulate ``frames`` frames and send them as emstream v1 messages.

    Parameters
    ----------
    endpoint : e.g. ``tcp://127.0.0.1:5555`` (``tcp://127.0.0.1:*`` binds a free port; see
        ``on_bound``). Loopback only unless ``allow_remote``.
    frames : number of good frames.
    fps : real-time pacing; ``<= 0`` as fast as the socket takes them.
    seed : seeds the sample and the bad-message schedule; series name ``sim-<seed>``.
    bind : bind (default, like a detector) or connect.
    pattern : ``"push"`` or ``"pub"``.
    malformed : also send the malformed / oversized / wrong-shape messages listed above.
    stop : set to stop early.
    config : the simulated microscope (default :class:`SceneConfig`, coverage ramp over
        ``frames``).
    manifest : optional JSONL truth file (see module docstring).
    on_bound : called with the actual endpoint once bound/connected.
    on_frame : called with each manifest record after the message is handed to ZeroMQ.
    linger_ms : how long closing waits for queued messages to leave.
    context : ZeroMQ context (default: the process-wide instance).

    Returns
    -------
    dict with ``endpoint``, ``sent`` (good frames), ``bad`` (list of kinds sent), ``stopped``.
    """
    if pattern not in ("push", "pub"):
        raise ValueError(f"pattern must be 'push' or 'pub', got {pattern!r}")
    _check_local(endpoint.replace(":*", ":0"), bind, allow_remote)
    stop = stop or threading.Event()
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH if pattern == "push" else zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 16)
    series = f"sim-{seed}"
    if config is None:  # sparse → crowded over the session's own length
        config = SceneConfig(fps=fps if fps > 0 else 2.0, ramp_frames=max(frames, 1))
    scope = Microscope(config, seed=seed)
    rng = np.random.default_rng([seed, 0x5EED])
    bad_at = _schedule(frames, rng) if malformed else {}
    mf = open(manifest, "a", encoding="utf-8") if manifest is not None else None  # noqa: SIM115
    sent = 0
    bad: list[str] = []
    try:
        if bind:
            sock.bind(endpoint)
            actual = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            sock.connect(endpoint)
            actual = endpoint
        if on_bound is not None:
            on_bound(actual)

        def send(parts: list[bytes]) -> bool:
            while not stop.is_set():
                try:
                    sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    return True
                except zmq.Again:
                    stop.wait(0.01)
            return False

        def record(rec: dict[str, Any]) -> None:
            if mf is not None:
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
            if on_frame is not None:
                on_frame(rec)

        period = 1.0 / fps if fps > 0 else 0.0
        events = script_mod.parse_script(script)  # scripted trouble (process.quality)
        t_start = time.monotonic()
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
            nm = frame.nm_per_px
            parts = encode_v1(frame.image, seq=frame.seq, series=series, t_acq=frame.t_acq,
                              pixel_size_nm=(nm, nm),
                              meta={"simulator": "emstream", "mode": frame.mode})
            if not send(parts):
                break
            sent += 1
            record({"kind": "frame", "series": series, "seq": frame.seq, "t_acq": frame.t_acq,
                    "nm_per_px": nm, "imaging": frame.mode, "shape": list(frame.image.shape),
                    "status": "ok", "defect": None, "particles": frame.particles,
                    "stage_offset_px": list(frame.stage_offset_px), "events": frame.events,
                    "state": expected_state})
            for kind in bad_at.get(i, []):
                msg = _bad_message(kind, parts, frame.image, frame.seq, series, frame.t_acq, nm)
                if not send(msg):
                    break
                bad.append(kind)
                record({"kind": "bad", "series": series, "seq": None, "t_acq": frame.t_acq, "nm_per_px": nm,
                        "imaging": frame.mode, "shape": None, "status": "rejected",
                        "defect": kind, "particles": []})
        summary = {"endpoint": actual, "sent": sent, "bad": bad,
                   "stopped": stop.is_set() or sent < frames}
        record({"kind": "end", "event": "end", "frames": sent, "bad_messages": len(bad), "series": series,
                "stopped": summary["stopped"], "t_end": time.time(), "seed": seed})
        return summary
    finally:
        sock.close(linger=0 if stop.is_set() else linger_ms)
        if mf is not None:
            mf.close()
