"""The synthetic E-TEM microscope: frames with ground truth for the demo, the tests and training.

- :mod:`.render`: the one renderer (:mod:`.particles`, :mod:`.optics`, :mod:`.overlays`).
- :mod:`.training`: ``training_sample(rng, size)`` — domain-randomised samples for the segmenter.
- :mod:`.scene`: ``Microscope(SceneConfig, seed).next_frame()`` — an evolving, calibrated session.
- :mod:`.writers`: ``write_session(out_dir, ...)`` — files written as acquisition software does,
  with the manifest ``simulator-manifest.jsonl``.
- :mod:`.stream`: ``send_stream(endpoint, ...)`` — the same over ZeroMQ (emstream v1).
- :mod:`.source`: ``SimulatedSource(config, seed, frames, fps)`` — in-process frames with truth
  (a :class:`emstream.sources.base.Source`; no files, no sockets).

:func:`run_simulate` is what ``emstream simulate`` and ``emstream demo`` call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .scene import Microscope, SceneConfig, SimFrame

__all__ = ["Microscope", "SceneConfig", "SimFrame", "run_simulate"]

DEFAULT_MODES = ("whole", "chunked", "temp_rename", "mrc_stack")


def run_simulate(
    out: str | Path | None = None,
    zmq: str | None = None,
    frames: int = 100,
    fps: float = 2.0,
    seed: int = 0,
    modes: Sequence[str] = DEFAULT_MODES,
    inject_bad: bool = False,
    stop: threading.Event | None = None,
    config: SceneConfig | None = None,
    on_frame: Callable[[dict[str, Any]], None] | None = None,
    mode: str = "bf",
    shape: tuple[int, int] = (1024, 1024),
    nm_per_px: float = 0.25,
    script: str | None = None,
) -> Path | dict[str, Any]:
    """Run the simulated microscope into a folder (``out``) or a ZeroMQ endpoint (``zmq``).

    Parameters
    ----------
    out : folder to write frames into (see :func:`.writers.write_session`).
    zmq : endpoint to send to instead, e.g. ``tcp://127.0.0.1:5555`` (the simulator binds;
        see :func:`.stream.send_stream`). Exactly one of ``out`` / ``zmq``.
    frames, fps, seed : how many frames, real-time pace, reproducibility.
    modes : write modes for ``out`` (``whole``, ``chunked``, ``temp_rename``, ``mrc_stack``).
    inject_bad : ``out``: also write zero-byte / truncated / random-bytes TIFFs and a short MRC;
        ``zmq``: also send malformed / oversized / wrong-shape messages.
    stop : set to stop early.
    config : the microscope (default :class:`SceneConfig` at ``fps``, coverage ramp over
        ``frames``).
    on_frame : progress callback with each manifest record.
    mode, shape, nm_per_px : imaging mode (``"bf"`` / ``"haadf"``), frame size and calibration
        of the default microscope (ignored when ``config`` is given).
    script : scripted trouble, e.g. ``"defocus:40-59,blank:80-84,jump:100"`` (:mod:`.script`).

    Returns
    -------
    The manifest path (folder) or the sender's summary dict (ZeroMQ).
    """
    if (out is None) == (zmq is None):
        raise ValueError("give exactly one of out (a folder) or zmq (an endpoint)")
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    if mode not in ("bf", "haadf"):
        raise ValueError(f"mode must be 'bf' or 'haadf', got {mode!r}")
    if config is None:  # sparse → crowded over the session's own length
        config = SceneConfig(fps=fps if fps > 0 else 2.0, ramp_frames=max(frames, 1), mode=mode,
                             shape=(int(shape[0]), int(shape[1])), nm_per_px=float(nm_per_px))
    if out is not None:
        from .writers import write_session

        return write_session(out, frames=frames, fps=fps, seed=seed, modes=tuple(modes),
                             inject_bad=inject_bad, stop=stop, config=config, on_frame=on_frame,
                             script=script)
    from .stream import send_stream

    return send_stream(zmq, frames=frames, fps=fps, seed=seed, malformed=inject_bad, stop=stop,
                       config=config, on_frame=on_frame, script=script)
