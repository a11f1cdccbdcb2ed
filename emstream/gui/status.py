"""The status bar: where frames come from, how fast they are processed, how far behind we are."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from PySide6 import QtWidgets

from emstream.gui import theme
from emstream.results import clock_ahead

__all__ = ["StatusBar", "stats_as_dict"]

_FIELDS = (
    "source",
    "backend",
    "frames_in",
    "processed",
    "quarantined",
    "skipped",
    "fps",
    "lag_s",
    "queue_depth",
    "confidence",
    "flagged",
    "last_flag",
    "not_ok",
    "last_state",
)


def stats_as_dict(stats: Any) -> dict[str, Any]:
    """Pipeline statistics as a dict, whether given a dict, a dataclass or an object."""
    if stats is None:
        return {}
    if isinstance(stats, Mapping):
        return dict(stats)
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    return {k: getattr(stats, k) for k in _FIELDS if hasattr(stats, k)}


def _num(v: Any, fmt: str = "{:,}") -> str:
    if v is None:
        return "–"
    try:
        if isinstance(v, float) and not math.isfinite(v):
            return "–"
        return fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def segmentation_text(d: Mapping[str, Any]) -> str:
    """'Confidence 0.94 · 2 flagged' for the status bar (rich text, flagged count in colour)."""
    conf = d.get("confidence")
    text = f"Confidence <b>{_num(conf, '{:.2f}')}</b>"
    flagged = d.get("flagged") or 0
    if flagged:
        text += f" · <span style='color:{theme.WARN}'>{flagged:,} flagged</span>"
    not_ok = d.get("not_ok") or 0
    if not_ok:  # frames left out of the statistics by their state (process.quality)
        text += (f" · <span style='color:{theme.WARN}'>{not_ok:,} not ok "
                 f"({d.get('last_state') or ''})</span>")
    return text


class StatusBar(QtWidgets.QStatusBar):
    """Source · backend · frames in/processed/quarantined/skipped · fps · lag · queue · folder."""

    def __init__(self, stats: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.stats_fn = stats
        self.session_dir = ""
        self.extra = ""
        self.last: dict[str, Any] = {}
        self.labels: dict[str, QtWidgets.QLabel] = {}
        for key in ("source", "backend", "frames", "rate", "lag", "queue", "segmentation", "display",
                    "session"):
            lab = QtWidgets.QLabel("")
            self.labels[key] = lab
            self.addWidget(lab) if key != "session" else self.addPermanentWidget(lab, 1)
        # a long session path must not widen the window: elide it, full path in the tooltip
        self.labels["session"].setSizePolicy(
            QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred
        )
        self.labels["session"].setMinimumWidth(160)

    def refresh(self, display_fps: float | None = None, drawn: int = 0) -> None:
        d: dict[str, Any] = {}
        if self.stats_fn is not None:
            try:
                d = stats_as_dict(self.stats_fn())
            except Exception as exc:  # a stats bug must not break the window
                d = {"source": f"stats unavailable: {exc}"}
        self.last = d
        L = self.labels
        L["source"].setText(f"Source: <b>{d.get('source') or '–'}</b>")
        L["backend"].setText(f"Backend: <b>{d.get('backend') or '–'}</b>")
        q, s = d.get("quarantined") or 0, d.get("skipped") or 0
        qs = f"<span style='color:{theme.WARN}'>{q:,}</span>" if q else "0"
        ss = f"<span style='color:{theme.WARN}'>{s:,}</span>" if s else "0"
        L["frames"].setText(
            f"Frames in <b>{_num(d.get('frames_in'))}</b> · processed "
            f"<b>{_num(d.get('processed'))}</b> · quarantined {qs} · skipped {ss}"
        )
        L["rate"].setText(f"<b>{_num(d.get('fps'), '{:.1f}')}</b> frames/s")
        lag = d.get("lag_s")
        colour, note, tip = theme.TEXT, "", "seconds from acquisition to the end of processing"
        if isinstance(lag, (int, float)) and math.isfinite(lag):
            colour = theme.OK if lag < 2 else theme.WARN if lag < 10 else theme.CRITICAL
            if clock_ahead(lag):
                colour, note = theme.WARN, " (clock ahead)"
                tip = (f"the frames' acquisition times are {-lag:.1f} s ahead of this computer's "
                       "clock: check the microscope PC's clock (or a simulator running faster "
                       "than its nominal frame rate)")
        L["lag"].setText(f"Lag <b style='color:{colour}'>{_num(lag, '{:.2f}')} s</b>{note}")
        L["lag"].setToolTip(tip)
        L["queue"].setText(f"Queue <b>{_num(d.get('queue_depth'))}</b>")
        L["segmentation"].setText(segmentation_text(d))
        L["segmentation"].setToolTip(
            (d.get("last_flag") or "no frame flagged") + " (the segmenter's confidence in "
            "the frame, 0..1: the learned model's probability margin, or the agreement of its "
            "mirror views; a frame is flagged when it is low or its count collapses against its "
            "neighbours)")
        disp = f"Display {display_fps:.0f} Hz" if display_fps is not None else "Display idle"
        if drawn:
            disp += f" · {drawn:,} drawn"
        L["display"].setText(disp)
        folder = self.session_dir or "–"
        L["session"].setText(f"{self.extra}Session: <b>{folder}</b>")
        L["session"].setToolTip(folder)
