"""The simulated microscope as an in-process source (no files, no sockets).

For benchmarks, GUI tests and demos that want frames with truth without going through a folder
or ZeroMQ. Each :class:`~emstream.frame.Frame` carries the truth in its metadata under
``"truth"`` (``particles`` list as in :class:`.scene.SimFrame`) and the truth label image is
kept in :attr:`SimulatedSource.truth` by ``source_id``, so a test can score a segmenter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np

from emstream.frame import Calibration, Frame

from .scene import Microscope, SceneConfig

__all__ = ["SimulatedSource"]


class SimulatedSource:
    """Frames straight from :class:`~.scene.Microscope`.

    Parameters
    ----------
    config : the microscope (default :class:`SceneConfig`).
    seed : reproducibility.
    frames : how many frames (``None`` = until stopped).
    fps : real-time pace (``<= 0``: as fast as they render).
    keep_truth : how many truth label images to keep in :attr:`truth` (oldest dropped).
    """

    def __init__(self, config: SceneConfig | None = None, seed: int = 0,
                 frames: int | None = 100, fps: float = 0.0, keep_truth: int = 64) -> None:
        self.config = config or SceneConfig()
        self.seed = seed
        self.n_frames = frames
        self.fps = fps
        self.keep_truth = keep_truth
        self.truth: dict[str, np.ndarray] = {}
        self._scope = Microscope(self.config, seed=seed)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        t_start = time.monotonic()
        i = 0
        while (self.n_frames is None or i < self.n_frames) and not stop.is_set():
            if period:
                wait = t_start + i * period - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    return
            sim = self._scope.next_frame(t_acq=time.time())
            source_id = f"simulate/{self.seed}/{sim.seq}"
            self.truth[source_id] = sim.labels
            while len(self.truth) > self.keep_truth:
                self.truth.pop(next(iter(self.truth)))
            nm = sim.nm_per_px
            yield Frame(
                pixels=sim.image, source_id=source_id, t_acq=sim.t_acq, t_arrival=time.time(),
                calibration=Calibration((nm, nm), "stream", "simulator"),
                metadata={"simulator": {"seed": self.seed, "seq": sim.seq, "mode": sim.mode},
                          "truth": {"particles": sim.particles}},
            )
            i += 1

    def describe(self) -> str:
        c = self.config
        return (f"simulate seed={self.seed} {c.mode} {c.shape[0]}x{c.shape[1]} "
                f"{c.nm_per_px} nm/px")

    def close(self) -> None:
        self.truth.clear()
