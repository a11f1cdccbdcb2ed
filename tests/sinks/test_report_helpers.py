"""A realistic simulated session folder for the export and report tests.

Frames are drawn (bright-field-like: carbon film noise, dark sphere-profile particles that grow
slowly, Poisson noise), measured with the real ``measure`` and ``summarize``, run through the
real rule engine, watchdog and actions sink, and recorded with the real ``Ledger``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from emstream.frame import Calibration, Frame
from emstream.process.measure import measure
from emstream.process.rules import RuleEngine, RuleSet
from emstream.process.stats import summarize
from emstream.process.watchdog import Watchdog
from emstream.results import Event, FrameRecord, FrameResult
from emstream.sinks.actions import ActionsSink
from emstream.sinks.base import Session
from emstream.sinks.ledger import Ledger

RULES = """
[[rules]]
name = "large particles"
severity = "warning"
particles.equivalent_diameter_nm = [15, 40]
particles.roundness = {min = 0.6}
for_frames = 2
clear_frames = 3
cooldown_s = 30
actions = ["banner", "log", "snapshot", "publish"]

[[rules]]
name = "crowded"
severity = "info"
frame.coverage = [0.12, 1.0]
for_frames = 3
actions = ["log", "publish"]
"""


def _draw(rng, particles, shape, nm_per_px):
    """particles: list of (cy, cx, r_nm). Returns raw uint16 image and int32 labels."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    thick = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx, r_nm) in enumerate(particles, start=1):
        r = r_nm / nm_per_px
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
        inside = d2 < 1
        labels[inside & (labels == 0)] = k
        thick[inside] += np.sqrt(1 - d2[inside]) * 1.2
    carbon = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5) * 0.05 + 1
    img = 1000 * carbon * np.exp(-thick)
    img = ndimage.gaussian_filter(img, 0.8)
    raw = rng.poisson(np.clip(img, 1, None)).astype(np.uint16)
    return raw, labels


def build_session(
    session_dir: Path,
    *,
    n_frames: int = 40,
    target_from: int = 25,
    seed: int = 1,
    shape=(256, 256),
    uncalibrated_from: int | None = None,
) -> dict:
    """Write a complete session folder; returns facts the tests check against."""
    session_dir = Path(session_dir)
    session_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    T0 = time.time() - 2.5 * n_frames - 60  # a session that just ended
    nm = 0.4
    cal = Calibration((nm, nm), "file", "TIFF ResolutionUnit + XResolution")
    h, w = shape
    # non-overlapping seeds for small particles (radii 1.5–3.5 nm, growing 1 % per frame)
    targets = [(0.27 * h, 0.74 * w, 9.0), (0.74 * h, 0.27 * w, 8.5)]  # 18 and 17 nm diameter
    seeds = [(cy, cx, 99.0) for cy, cx, _ in targets]  # keep small ones clear of the targets
    want = len(targets) + int(28 * h * w / 256**2)
    for _ in range(20_000):  # bounded: dense random packing can run out of room
        if len(seeds) >= want:
            break
        cy, cx = rng.uniform(12, h - 12), rng.uniform(12, w - 12)
        if all((cy - a) ** 2 + (cx - b) ** 2 > (26 if r < 5 else 40) ** 2 for a, b, r in seeds):
            seeds.append((cy, cx, rng.uniform(1.5, 3.5)))
    seeds = seeds[len(targets) :]

    config = {
        "command": "watch",
        "source": "folder /data/etem/run-042",
        "segmenter": "classical",
        "backend": "classical",
        "model": None,
        "policy": "all",
        "rules": "rules.toml",
        "pixel_size": None,
        "versions": {"emstream": "0.1.0", "python": "3.11.7", "numpy": np.__version__},
    }
    (session_dir / "config.json").write_text(json.dumps(config, indent=2))
    session = Session(session_dir, config["source"], "classical", config, config["versions"], T0)
    ledger = Ledger(session_dir)
    actions = ActionsSink(session_dir)
    engine = RuleEngine(RuleSet.from_toml_text(RULES))
    dog = Watchdog(stall_s=20)
    for s in (ledger, actions):
        s.open(session)
    dog.tick(T0)

    alerts_all = []
    t = T0
    for i in range(n_frames):
        t += 2.0 if i != 21 else 45.0  # the writer pauses before frame 21
        for a in dog.tick(t - 0.5):
            alerts_all.append(a)
            actions.alert(a)
            ledger.alert(a)
        src = f"/data/etem/run-042/img_{i:04d}.tif"
        if i == 12:
            rec = FrameRecord(
                i,
                src,
                "quarantined",
                t,
                reason="unreadable TIFF: page 0 truncated (2.1 MB of 4.2 MB)",
                t_acq=t,
            )
        elif i == 30:
            rec = FrameRecord(
                i, src, "skipped", t, reason="policy latest: superseded by a newer frame", t_acq=t
            )
        else:
            growth = 1 + 0.012 * i
            parts = [(cy, cx, r * growth) for cy, cx, r in seeds]
            if i >= target_from:
                parts += targets
            raw, labels = _draw(rng, parts, shape, nm)
            fcal = (
                cal
                if uncalibrated_from is None or i < uncalibrated_from
                else Calibration.none("no tags")
            )
            p = measure(labels, raw, fcal)
            summary = summarize(p, valid_area_px=float(h * w), unit=fcal.unit)
            frame = Frame(raw, src, t_acq=t, t_arrival=t + 0.3, calibration=fcal, seq=i)
            res = FrameResult(
                frame,
                p,
                summary,
                "classical",
                timings_ms={
                    "read": 4.0 + rng.random(),
                    "prepare": 6.1,
                    "segment": 38.0 + 5 * rng.random(),
                    "measure": 7.2,
                },
                labels=labels,
                t_done=t + 0.9 + 0.2 * rng.random(),
                confidence=0.45 if i == 17 else 0.93 + 0.04 * rng.random(),
                seg_flag="low confidence 0.45 < 0.70" if i == 17 else None,
            )
            rec = FrameRecord(i, src, "ok", t + 0.3, result=res, t_acq=t, calibration=fcal)
        frame_alerts = list(dog.on_frame(rec, t + 0.3))
        if rec.result is not None:
            frame_alerts += engine.evaluate(rec.result)
        ledger.frame_done(rec)
        actions.frame_done(rec)
        for a in frame_alerts:
            alerts_all.append(a)
            actions.alert(a)
            ledger.alert(a)
    ledger.event(Event("gap", "stream gap: no frames for 45 s", t=T0 + 2 * 21 + 10))
    for s in (actions, ledger):
        s.close()
    return {"alerts": alerts_all, "n_frames": n_frames, "engine": engine}
