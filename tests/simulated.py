"""Frames of the simulated microscope fed to a real pipeline, segmented by the simulator's own
truth: for tests about what comes after segmentation (tracking, frame state, the window)."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from emstream.frame import Calibration, Frame


def _key(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


class SimulatedSource:
    """``SimFrame`` s as a stream source delivers them (calibrated by the simulator's header)."""

    def __init__(self, sims):
        self.sims = list(sims)

    def frames(self, stop):
        for i, s in enumerate(self.sims):
            if stop.is_set():
                return
            cal = Calibration((s.nm_per_px, s.nm_per_px), "stream", "simulator header")
            yield Frame(s.image, f"sim/run/{i}", s.t_acq, time.time(), cal, -1, {"mode": s.mode})

    def describe(self) -> str:
        return "simulated microscope (test)"

    def close(self) -> None:
        pass


class TruthSegmenter:
    """Returns the simulator's ground-truth instances of each frame (looked up by its pixels)."""

    name = "ground-truth"
    thread_safe = True

    def __init__(self, sims):
        self.by_image = {_key(s.image): s.labels for s in sims}

    def segment(self, prepared):
        return self.by_image[_key(prepared.raw)]
