"""The readers against everything emstream's simulator writes, checked against its manifest."""

from __future__ import annotations

import json

import pytest

import emstream.sources.simulate.scene as scene
import emstream.sources.simulate.writers as writers
from emstream.errors import IncompleteFile, UnreadableFile
from emstream.sources.readers import check_complete, is_supported, read_frames


def test_simulated_session_reads_as_the_manifest_says(tmp_path):
    cfg = scene.SceneConfig(shape=(96, 128), nm_per_px=0.37)
    manifest = writers.write_session(tmp_path, frames=12, fps=1000.0, seed=5, inject_bad=True,
                                     config=cfg, chunks=2, stack_size=4)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    entries = [r for r in records if "file" in r]
    assert entries and any(r["status"] == "quarantined" for r in entries)
    for rec in entries:
        path = tmp_path / rec["file"]
        assert is_supported(path)
        if rec["status"] == "ok":
            k = rec["slice"] or 0
            frames = read_frames(path, start=k)
            fr = frames[0]
            assert fr.shape == tuple(rec["shape"])
            assert fr.calibration.source == "file"
            assert fr.calibration.nm_per_px == (pytest.approx(rec["nm_per_px"], rel=1e-5),) * 2
            if rec["slice"] is None:
                assert fr.source_id == str(path)
                assert fr.t_acq == pytest.approx(rec["t_acq"])
            else:
                assert fr.source_id == f"{path}#{rec['slice']}"
        else:
            with pytest.raises(UnreadableFile) as info:
                check_complete(path)
            assert info.value.reason
            if rec["defect"] == "mrc_short":
                assert isinstance(info.value, IncompleteFile)
            else:
                with pytest.raises(UnreadableFile):
                    read_frames(path)
