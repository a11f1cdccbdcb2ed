"""The interface every segmenter implements (classical baseline and learned backends alike)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from emstream.frame import Prepared


@runtime_checkable
class Segmenter(Protocol):
    """Turns a prepared frame into an instance label image.

    ``segment`` returns an int32 array of the prepared image's shape: 0 = background,
    1..N = particles (touching particles get different labels). Pixels where
    ``prepared.valid`` is False must be 0.
    """

    #: e.g. ``"classical"``, ``"unet-s@onnxruntime:CPUExecutionProvider"``
    name: str

    def segment(self, prepared: Prepared) -> np.ndarray: ...
