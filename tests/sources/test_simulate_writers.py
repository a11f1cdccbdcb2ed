"""Folder writer: every write mode gives readable, calibrated files; manifest; bad files are bad."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from emstream.sources.simulate import run_simulate
from emstream.sources.simulate.scene import SceneConfig
from emstream.sources.simulate.writers import (
    MANIFEST_NAME,
    MrcStackWriter,
    _write_chunked,
    write_session,
)

SMALL = dict(shape=(96, 128), nm_per_px=0.4, coverage_start=0.1)


def _manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("acq")
    manifest = write_session(out, frames=20, fps=0, seed=3, inject_bad=True, stack_size=3,
                             config=SceneConfig(**SMALL))
    return out, _manifest(manifest)


def test_manifest_is_complete_and_consistent(session):
    out, recs = session
    assert recs[-1]["event"] == "end" and recs[-1]["kind"] == "end"
    assert recs[-1]["frames"] == 20 and recs[-1]["stopped"] is False
    frames = [r for r in recs if r["kind"] == "frame"]
    bad = [r for r in recs if r["kind"] == "bad"]
    assert [r["seq"] for r in frames] == list(range(20))
    assert {r["write_mode"] for r in frames} == {"whole", "chunked", "temp_rename", "mrc_stack"}
    assert all(r["status"] == "ok" and r["defect"] is None for r in frames)
    assert {r["defect"] for r in bad} == {"zero_bytes", "truncated", "random_bytes", "mrc_short"}
    assert all(r["status"] == "quarantined" for r in bad) and recs[-1]["bad_files"] == len(bad)
    for r in recs[:-1]:
        assert (out / r["file"]).is_file()
        assert not Path(r["file"]).is_absolute()
    # one record per TIFF file, one per MRC slice; slices numbered 0.. per stack
    tifs = [r["file"] for r in frames if r["write_mode"] != "mrc_stack"]
    assert len(tifs) == len(set(tifs))
    by_stack: dict[str, list[int]] = {}
    for r in frames:
        if r["write_mode"] == "mrc_stack":
            by_stack.setdefault(r["file"], []).append(r["slice"])
        else:
            assert r["slice"] is None
    assert len(by_stack) == 2  # 5 mrc frames, 3 per stack
    for slices in by_stack.values():
        assert slices == list(range(len(slices)))
    # truth particles are carried along
    assert sum(len(r["particles"]) for r in frames) > 0
    p = next(p for r in frames for p in r["particles"])
    assert {"id", "centroid_yx_px", "equivalent_diameter_nm"} <= p.keys()
    # nothing temporary left behind
    assert not list(out.glob("*.tmp"))
    listed = {r["file"] for r in recs[:-1]} | {MANIFEST_NAME}
    assert {p.name for p in out.iterdir()} == listed


def test_tiffs_read_back_with_calibration(session):
    out, recs = session
    for r in recs:
        if r.get("kind") != "frame" or r["write_mode"] == "mrc_stack":
            continue
        with tifffile.TiffFile(out / r["file"]) as tif:
            img = tif.asarray()
            assert img.dtype == np.uint16 and img.shape == (96, 128)
            assert tif.is_imagej and tif.imagej_metadata["unit"] == "nm"
            info = json.loads(tif.imagej_metadata["Info"])
            page = tif.pages[0]
            num, den = page.tags["XResolution"].value
            assert num / den == pytest.approx(1 / 0.4, rel=1e-4)  # px per nm
            num, den = page.tags["YResolution"].value
            assert num / den == pytest.approx(1 / 0.4, rel=1e-4)
        assert info["nm_per_px"] == [0.4, 0.4] and info["seq"] == r["seq"]
        assert info["t_acq"] == pytest.approx(r["t_acq"])
        assert img.max() > img.min()


def test_mrc_stacks_read_back_with_voxel_size(session):
    out, recs = session
    stacks = {r["file"] for r in recs if r.get("write_mode") == "mrc_stack"}
    for name in stacks:
        n = sum(1 for r in recs if r.get("file") == name)
        with mrcfile.open(out / name, permissive=False) as m:
            assert m.data.shape == (n, 96, 128) and m.data.dtype == np.uint16
            assert float(m.voxel_size.x) == pytest.approx(4.0)  # Å
            assert float(m.voxel_size.y) == pytest.approx(4.0)
            assert m.header.ispg == 0  # image stack


def test_readers_agree(session):
    """B's readers (when present) read every good file and refuse every bad one."""
    import emstream.sources.readers as readers
    from emstream.errors import IncompleteFile, UnreadableFile

    out, recs = session
    for r in recs[:-1]:
        path = out / r["file"]
        if r["status"] == "ok":
            readers.check_complete(path)
            frames = readers.read_frames(path)
            k = r["slice"] or 0
            assert frames[k].calibration.nm_per_px == pytest.approx((0.4, 0.4))
        else:
            with pytest.raises((IncompleteFile, UnreadableFile)):
                readers.check_complete(path)
                readers.read_frames(path)


def test_bad_files_are_really_bad(session):
    out, recs = session
    bad = {r["defect"]: out / r["file"] for r in recs if r.get("kind") == "bad"}
    assert bad["zero_bytes"].stat().st_size == 0
    with pytest.raises(Exception):  # noqa: B017 - any tifffile error
        tifffile.imread(bad["random_bytes"])
    with open(bad["random_bytes"], "rb") as fh:
        assert fh.read(4) not in (b"II*\x00", b"MM\x00*")
    with pytest.raises(Exception):  # noqa: B017
        tifffile.imread(bad["truncated"])
    with mrcfile.open(bad["mrc_short"], permissive=True, header_only=True) as m:
        nz, ny, nx = int(m.header.nz), int(m.header.ny), int(m.header.nx)
    declared = 1024 + nz * ny * nx * 2
    assert nz == 4 and bad["mrc_short"].stat().st_size < declared
    with pytest.raises(Exception):  # noqa: B017
        with mrcfile.open(bad["mrc_short"], permissive=False) as m:
            _ = m.data.shape


def test_growing_mrc_stack_is_valid_after_every_slice(tmp_path):
    path = tmp_path / "stack_000.mrc"
    w = MrcStackWriter(path, nm_per_px=0.25)
    rng = np.random.default_rng(0)
    slices = [rng.integers(0, 4000, (40, 56), dtype=np.uint16) for _ in range(5)]
    for k, s in enumerate(slices):
        assert w.append(s) == k
        with mrcfile.open(path, permissive=False) as m:
            data = m.data.reshape(-1, 40, 56)  # mrcfile gives a single-slice stack as 2-D
            assert data.shape == (k + 1, 40, 56)
            assert np.array_equal(data[k], s)
            assert float(m.voxel_size.x) == pytest.approx(2.5)
            assert int(m.header.mz) == k + 1
        assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))  # noqa: SIM115
        assert path.stat().st_size == 1024 + (k + 1) * 40 * 56 * 2


class _Watch(threading.Event):
    """A stop event whose waits record what a watcher would see on disk at that moment."""

    def __init__(self, paths):
        super().__init__()
        self.paths = paths
        self.seen = []

    def wait(self, timeout=None):
        self.seen.append(tuple(p.stat().st_size if p.exists() else None for p in self.paths))
        return False


def test_chunked_write_grows_the_file_in_place(tmp_path):
    path = tmp_path / "frame_000001.tif"
    data = bytes(range(256)) * 40
    watch = _Watch([path])
    _write_chunked(path, data, chunks=4, pause=0.01, stop=watch)
    sizes = [s[0] for s in watch.seen]
    assert len(sizes) == 3 and sizes == sorted(sizes) and 0 < sizes[0] < len(data)
    assert path.read_bytes() == data


def test_temp_then_rename_never_shows_a_partial_final_file(tmp_path):
    out = tmp_path / "acq"
    out.mkdir()
    final, tmp = out / "frame_000000.tif", out / "frame_000000.tif.tmp"
    watch = _Watch([final, tmp])
    import emstream.sources.simulate.writers as wr

    real = wr._write_chunked

    def spy(path, data, chunks, pause, stop):
        return real(path, data, chunks, 0.01, watch)

    wr._write_chunked = spy
    try:
        write_session(out, frames=1, fps=0, seed=1, modes=("temp_rename",),
                      config=SceneConfig(**SMALL))
    finally:
        wr._write_chunked = real
    assert watch.seen and all(f is None and t is not None for f, t in watch.seen)
    assert final.is_file() and not tmp.exists()


def test_stop_aborts_and_manifest_still_ends(tmp_path):
    stop = threading.Event()
    seen = []

    def on_frame(rec):
        seen.append(rec)
        if len(seen) == 3:
            stop.set()

    manifest = run_simulate(out=tmp_path, frames=50, fps=0, seed=2, stop=stop,
                            config=SceneConfig(**SMALL), on_frame=on_frame, modes=("whole",))
    recs = _manifest(manifest)
    assert recs[-1]["event"] == "end" and recs[-1]["stopped"] is True
    assert recs[-1]["frames"] == 3 == sum(r.get("kind") == "frame" for r in recs)


def test_pacing_and_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_session(tmp_path, frames=1, fps=0, seed=0, modes=("floppy",))
    with pytest.raises(ValueError):
        run_simulate(out=tmp_path, zmq="tcp://127.0.0.1:5555")
    with pytest.raises(ValueError):
        run_simulate()


def test_second_session_in_the_same_folder_overwrites_nothing(tmp_path):
    cfg = SceneConfig(**SMALL)
    write_session(tmp_path, frames=5, fps=0, seed=1, config=cfg, stack_size=2)
    first = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name != MANIFEST_NAME}
    manifest = write_session(tmp_path, frames=5, fps=0, seed=2, config=SceneConfig(**SMALL),
                             stack_size=2)
    for name, mtime in first.items():
        assert (tmp_path / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    frames = [r for r in _manifest(manifest) if r.get("kind") == "frame"]
    assert [r["seq"] for r in frames] == list(range(10))
    keys = [(r["file"], r["slice"]) for r in frames]
    assert len(keys) == len(set(keys))
    assert sum(r.get("event") == "end" for r in _manifest(manifest)) == 2


def test_run_simulate_haadf_small_frames(tmp_path):
    manifest = run_simulate(out=tmp_path, frames=2, fps=0, seed=1, mode="haadf", shape=(64, 96),
                            nm_per_px=0.5, modes=("whole",))
    recs = _manifest(manifest)
    assert [r["imaging"] for r in recs[:-1]] == ["haadf", "haadf"]
    assert tifffile.imread(tmp_path / recs[0]["file"]).shape == (64, 96)
    with pytest.raises(ValueError):
        run_simulate(out=tmp_path, frames=1, mode="sem")
