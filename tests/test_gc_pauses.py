"""The pipeline keeps the garbage collector's full walks off the objects that live for the whole
session: frozen once the first frames have warmed every stage up, given back when it ends."""

from __future__ import annotations

import gc
import weakref

from simulated import SimulatedSource, TruthSegmenter

from emstream.gc_pauses import freeze_startup_objects, thaw
from emstream.pipeline import FREEZE_AFTER_FRAMES, Pipeline
from emstream.sinks.base import Session
from emstream.sinks.ledger import Ledger
from emstream.sources.simulate.scene import Microscope, SceneConfig


class _Cycle:
    def __init__(self):
        self.me = self


def test_freeze_hides_objects_from_full_collections_and_thaw_returns_them():
    assert gc.get_freeze_count() == 0
    keep = [_Cycle() for _ in range(1000)]
    freeze_startup_objects()
    try:
        assert gc.get_freeze_count() >= 1000
        gc.collect()
        assert all(c.me is c for c in keep)
        freeze_startup_objects()  # nested: the first thaw keeps them frozen
        thaw()
        assert gc.get_freeze_count() >= 1000
    finally:
        thaw()
    assert gc.get_freeze_count() == 0
    thaw()  # more thaws than freezes: nothing happens
    assert gc.get_freeze_count() == 0


def test_cycles_that_die_while_frozen_are_collected_after_thaw():
    c = _Cycle()
    ref = weakref.ref(c)
    freeze_startup_objects()
    del c
    gc.collect()
    assert ref() is not None  # frozen: the collector does not look at it
    thaw()
    gc.collect()
    assert ref() is None


def test_pipeline_freezes_after_warm_up_and_thaws_at_the_end(tmp_path):
    cfg = SceneConfig(shape=(256, 256), nm_per_px=0.25, mode="haadf", t0=1.7e9, fps=2.0)
    mic = Microscope(cfg, seed=3)
    sims = [mic.next_frame() for _ in range(FREEZE_AFTER_FRAMES + 4)]
    seen: list[tuple[int, int]] = []
    p = Pipeline(SimulatedSource(sims), TruthSegmenter(sims), [Ledger(tmp_path)],
                 session=Session(tmp_path, "sim", "ground-truth"))
    p.add_listener(lambda rec: seen.append((rec.seq, gc.get_freeze_count())))
    p.run()
    frozen = [n for _, n in sorted(seen)]
    assert frozen[: FREEZE_AFTER_FRAMES - 1] == [0] * (FREEZE_AFTER_FRAMES - 1)
    assert all(n > 0 for n in frozen[FREEZE_AFTER_FRAMES:])
    assert gc.get_freeze_count() == 0
