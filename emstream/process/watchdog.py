"""Built-in alerts that need no rules file (pure: times and disk space are passed in).

* ``stall``: no new frame for ``stall_s`` seconds (the writer or the detector stopped).
* ``falling behind``: processing lag over ``behind_s`` or the queue deeper than ``behind_queue``,
  sustained for ``behind_for_s``.
* ``calibration missing``: a frame arrives without a pixel size (measurements fall back to px).
* ``calibration changed``: the pixel size differs from the previous calibrated frame's (a
  magnification change mid-session makes sizes before and after incomparable).
* ``disk nearly full``: free space on the session's disk below ``disk_low_bytes`` or
  ``disk_low_fraction`` of the total. The caller measures it (``shutil.disk_usage``) and passes it in.

Each alert fires once and re-arms when its condition has cleared, so a long stall raises one alert,
not one per tick. The pipeline calls :meth:`Watchdog.on_frame` for every frame record and
:meth:`Watchdog.tick` periodically (about once a second).
"""

from __future__ import annotations

import math
from typing import Any

from emstream.frame import Calibration
from emstream.results import Alert, FrameRecord

__all__ = ["Watchdog"]

_ACTIONS = ["banner", "log", "publish"]


class Watchdog:
    """Stall, falling-behind, calibration and disk-space alerts.

    Parameters
    ----------
    stall_s : seconds without a new frame before a stall alert (``None`` disables).
    behind_s : processing lag (acquisition to done, seconds) that counts as falling behind.
    behind_queue : queue depth that counts as falling behind.
    behind_for_s : how long the lag/queue condition must last before the alert.
    disk_low_bytes : free bytes under which the disk counts as nearly full.
    disk_low_fraction : free fraction of the total under which it does (either threshold fires).
    calibration_rtol : relative pixel-size difference that counts as a calibration change.
    """

    def __init__(
        self,
        stall_s: float | None = 30.0,
        behind_s: float = 10.0,
        *,
        behind_queue: int = 50,
        behind_for_s: float = 5.0,
        disk_low_bytes: int = 2 * 1024**3,
        disk_low_fraction: float = 0.02,
        calibration_rtol: float = 1e-3,
    ) -> None:
        self.stall_s = stall_s
        self.behind_s = behind_s
        self.behind_queue = behind_queue
        self.behind_for_s = behind_for_s
        self.disk_low_bytes = disk_low_bytes
        self.disk_low_fraction = disk_low_fraction
        self.calibration_rtol = calibration_rtol

        self._t_start: float | None = None
        self._last_frame_t: float | None = None
        self._last_seq: int | None = None
        self._stalled = False
        self._behind_since: float | None = None
        self._ok_since: float | None = None
        self._behind_fired = False
        self._disk_fired = False
        self._calib: tuple[float, float] | None = None
        self._calib_missing_fired = False

    # -- frames --------------------------------------------------------------------------------
    def on_frame(self, record: FrameRecord, now: float) -> list[Alert]:
        """Note a frame's arrival (any status); check its calibration."""
        if self._t_start is None:
            self._t_start = now
        self._last_frame_t = now
        self._last_seq = record.seq
        self._stalled = False
        calib = self._calibration_of(record)
        if record.status != "ok" or calib is None:
            return []
        alerts: list[Alert] = []
        if not calib.calibrated:
            if not self._calib_missing_fired:
                self._calib_missing_fired = True
                alerts.append(
                    Alert(
                        rule="calibration missing",
                        severity="warning",
                        seq=record.seq,
                        message=(
                            f"frame {record.seq} has no pixel size ({calib.detail or 'no calibration'}):"
                            " sizes are in pixels; pass --pixel-size to calibrate"
                        ),
                        t=now,
                        actions=list(_ACTIONS),
                        builtin=True,
                    )
                )
            return alerts
        self._calib_missing_fired = False  # re-arm: a later uncalibrated frame is news again
        assert calib.nm_per_px is not None
        if self._calib is not None and not _close(
            self._calib, calib.nm_per_px, self.calibration_rtol
        ):
            old = self._calib
            alerts.append(
                Alert(
                    rule="calibration changed",
                    severity="warning",
                    seq=record.seq,
                    message=(
                        f"pixel size changed at frame {record.seq}: {_fmt(old)} -> "
                        f"{_fmt(calib.nm_per_px)} nm/px ({calib.source}"
                        f"{': ' + calib.detail if calib.detail else ''}); sizes before and after "
                        "are not comparable"
                    ),
                    t=now,
                    actions=list(_ACTIONS),
                    builtin=True,
                )
            )
            self._calib = calib.nm_per_px
        elif self._calib is None:
            self._calib = calib.nm_per_px
        # within tolerance the reference stays put, so a slow drift still adds up to an alert
        return alerts

    @staticmethod
    def _calibration_of(record: FrameRecord) -> Calibration | None:
        if record.result is not None:
            return record.result.calibration
        return record.calibration

    # -- periodic ------------------------------------------------------------------------------
    def tick(
        self,
        now: float,
        stats: Any = None,
        *,
        disk_free_bytes: int | None = None,
        disk_total_bytes: int | None = None,
    ) -> list[Alert]:
        """Check the time-based conditions.

        ``stats`` is the pipeline's stats object (or a dict) with ``lag_s`` and ``queue_depth``;
        disk space comes from the arguments or from ``stats.disk_free_bytes`` /
        ``stats.disk_total_bytes`` where present.
        """
        if self._t_start is None:
            self._t_start = now
        alerts: list[Alert] = []
        alerts += self._check_stall(now)
        alerts += self._check_behind(now, stats)
        if disk_free_bytes is None:
            disk_free_bytes = _get(stats, "disk_free_bytes")
        if disk_total_bytes is None:
            disk_total_bytes = _get(stats, "disk_total_bytes")
        alerts += self._check_disk(now, disk_free_bytes, disk_total_bytes)
        return alerts

    def _check_stall(self, now: float) -> list[Alert]:
        if self.stall_s is None or self._stalled:
            return []
        since = self._last_frame_t if self._last_frame_t is not None else self._t_start
        assert since is not None
        quiet = now - since
        if quiet < self.stall_s:
            return []
        self._stalled = True
        if self._last_frame_t is None:
            msg = f"no frame has arrived in the {quiet:.0f} s since the session started"
        else:
            msg = f"no new frame for {quiet:.0f} s (last frame {self._last_seq}): is the writer stalled?"
        return [Alert("stall", "warning", None, msg, t=now, actions=list(_ACTIONS), builtin=True)]

    def _check_behind(self, now: float, stats: Any) -> list[Alert]:
        lag = _get(stats, "lag_s")
        depth = _get(stats, "queue_depth")
        lag_bad = lag is not None and math.isfinite(lag) and lag > self.behind_s
        depth_bad = depth is not None and depth > self.behind_queue
        if lag_bad or depth_bad:
            self._ok_since = None
            if self._behind_since is None:
                self._behind_since = now
            if not self._behind_fired and now - self._behind_since >= self.behind_for_s:
                self._behind_fired = True
                parts = []
                if lag_bad:
                    parts.append(f"lag {lag:.1f} s > {self.behind_s:g} s")
                if depth_bad:
                    parts.append(f"queue depth {depth} > {self.behind_queue}")
                return [
                    Alert(
                        "falling behind",
                        "warning",
                        None,
                        "processing is falling behind acquisition: " + ", ".join(parts),
                        t=now,
                        actions=list(_ACTIONS),
                        builtin=True,
                    )
                ]
            return []
        self._behind_since = None
        if self._behind_fired:
            if self._ok_since is None:
                self._ok_since = now
            if now - self._ok_since >= self.behind_for_s:
                self._behind_fired = False  # caught up for a while: re-arm
        return []

    def _check_disk(self, now: float, free: int | None, total: int | None) -> list[Alert]:
        if free is None:
            return []
        limit = self.disk_low_bytes
        if total:
            limit = max(limit, int(self.disk_low_fraction * total))
        if free >= limit:
            if self._disk_fired and free >= 1.5 * limit:
                self._disk_fired = False
            return []
        if self._disk_fired:
            return []
        self._disk_fired = True
        msg = f"disk nearly full: {free / 1024**3:.2f} GiB free"
        if total:
            msg += f" of {total / 1024**3:.0f} GiB"
        msg += "; frames and the ledger may stop being written"
        return [
            Alert(
                "disk nearly full",
                "critical",
                None,
                msg,
                t=now,
                actions=list(_ACTIONS),
                builtin=True,
            )
        ]


def _get(stats: Any, name: str) -> Any:
    if stats is None:
        return None
    if isinstance(stats, dict):
        return stats.get(name)
    return getattr(stats, name, None)


def _close(a: tuple[float, float], b: tuple[float, float], rtol: float) -> bool:
    return all(math.isclose(x, y, rel_tol=rtol) for x, y in zip(a, b, strict=True))


def _fmt(p: tuple[float, float]) -> str:
    y, x = p
    return f"{y:.4g}" if math.isclose(y, x, rel_tol=1e-6) else f"{y:.4g}×{x:.4g}"
