"""Builders shared by the rules/watchdog tests: FrameResults from particle tables or drawn disks."""

from __future__ import annotations

import numpy as np

from emstream.frame import Calibration, Frame
from emstream.results import PARTICLE_COLUMNS, FrameResult, FrameSummary, empty_particle_table


def table(**cols) -> dict[str, np.ndarray]:
    """A particle table with the given columns set (others zero), one row per value."""
    n = len(next(iter(cols.values()))) if cols else 0
    t = {k: np.zeros(n, dtype=dt) for k, (dt, _) in PARTICLE_COLUMNS.items()}
    t["label"] = np.arange(1, n + 1, dtype=np.int32)
    for k, v in cols.items():
        t[k] = np.asarray(v, dtype=PARTICLE_COLUMNS[k][0])
    return t


def result(
    seq: int,
    particles: dict | None = None,
    *,
    t: float | None = None,
    nm_per_px: float | None = 0.5,
    **summary,
) -> FrameResult:
    particles = particles if particles is not None else empty_particle_table()
    cal = Calibration((nm_per_px, nm_per_px), "override") if nm_per_px else Calibration.none()
    frame = Frame(
        np.zeros((4, 4), np.uint16),
        f"sim/{seq}",
        t_acq=float(seq if t is None else t),
        t_arrival=float(seq if t is None else t),
        calibration=cal,
        seq=seq,
    )
    n = len(particles["label"])
    d = particles["equivalent_diameter_nm"]
    s = FrameSummary(
        count=summary.pop("count", n),
        coverage=summary.pop("coverage", 0.1),
        unit=cal.unit,
        d50=summary.pop("d50", float(np.median(d)) if n else float("nan")),
        **summary,
    )
    return FrameResult(
        frame=frame, particles=particles, summary=s, backend="test", t_done=frame.t_acq
    )


def disk_labels(centres_radii, shape=(200, 200)) -> np.ndarray:
    """An int32 label image with one disk per ``(cy, cx, r)``, labels 1..N."""
    from skimage.draw import disk

    labels = np.zeros(shape, np.int32)
    for k, (cy, cx, r) in enumerate(centres_radii, start=1):
        rr, cc = disk((cy, cx), r, shape=shape)
        labels[rr, cc] = k
    return labels
