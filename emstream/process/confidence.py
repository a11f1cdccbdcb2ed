"""Is a frame's segmentation to be trusted? Flags and the built-in ``segmentation doubtful`` alert.

Pure: the figures come in with each :class:`~emstream.results.FrameResult`, in acquisition order.

A frame is flagged (``FrameResult.seg_flag``, the ledger's ``frames.seg_flag``) when

* **low confidence**: the segmenter's own confidence (``FrameResult.confidence``; for the learned
  model its probability margin, or the agreement of its mirror views where it runs several,
  see :func:`emstream.backends.segmenter.confidence`) is below ``low``: the frame looks unlike
  anything the model was trained on;
* **count collapse**: it has fewer than ``collapse_fraction`` of the particles of the median of
  the last ``window`` unflagged frames, while that median is at least ``min_reference``. A real
  field does not lose three quarters of its particles between two frames; a segmenter that
  misses a slightly dimmer frame does (this is how the classical baseline's 0-particle frames in
  a run of ~800 were found). It works for any segmenter, with or without a confidence.

Flagged frames stay in the ledger with their particles, but never silently: the flag is shown in
the window's status bar, listed in the report and raises the alert once per run of flagged
frames (re-armed by an unflagged frame). They do not enter the reference window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from emstream.results import Alert

__all__ = ["CONFIDENCE_LOW", "SegmentationCheck", "confidence_flag"]

#: Default confidence below which a frame is flagged (the learned model's mirror-view agreement;
#: the model card gives its distribution on each real image family).
CONFIDENCE_LOW = 0.7

_ACTIONS = ["banner", "log", "publish"]


def confidence_flag(confidence: float | None, low: float = CONFIDENCE_LOW) -> str | None:
    """The flag of one frame from its confidence alone (``analyze`` has no neighbours)."""
    if confidence is None or not np.isfinite(confidence) or confidence >= low:
        return None
    return f"low confidence {confidence:.2f} < {low:.2f}"


@dataclass
class SegmentationCheck:
    """Flags doubtful frames (module docstring); call :meth:`check` for every ``ok`` frame, in order."""

    low: float = CONFIDENCE_LOW
    window: int = 9
    collapse_fraction: float = 0.25
    min_reference: int = 20

    def __post_init__(self) -> None:
        self._counts: deque[int] = deque(maxlen=self.window)
        self._armed = True

    def check(self, result: Any, now: float) -> list[Alert]:
        """Set ``result.seg_flag`` (``None`` when fine); return the alert to raise, if any."""
        reasons = []
        flag = confidence_flag(getattr(result, "confidence", None), self.low)
        if flag:
            reasons.append(flag)
        count = int(result.summary.count)
        if len(self._counts) >= min(3, self.window):
            ref = float(np.median(self._counts))
            if ref >= self.min_reference and count < self.collapse_fraction * ref:
                reasons.append(f"count collapsed: {count} particles against a median of "
                               f"{ref:.0f} on the previous {len(self._counts)} frames")
        result.seg_flag = "; ".join(reasons) or None
        if result.seg_flag is None:
            self._counts.append(count)
            self._armed = True
            return []
        if not self._armed:
            return []
        self._armed = False
        return [Alert("segmentation doubtful", "warning", result.seq,
                      f"frame {result.seq}: {result.seg_flag}; its particles are recorded but "
                      "should be checked", t=now, actions=list(_ACTIONS), builtin=True)]
