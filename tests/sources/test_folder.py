"""Folder source on a real folder: completeness, ignore rules, quarantine, stacks, restart."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emstream.frame import Frame
from emstream.results import FrameRecord
from emstream.sinks.ledger import Ledger, connect_readonly
from emstream.sources.base import TrackedRecord, file_version_of
from emstream.sources.folder import FolderSource, content_version, ignored_name

tifffile = pytest.importorskip("tifffile")
mrcfile = pytest.importorskip("mrcfile")


def write_tif(path: Path, seed: int = 0, shape=(32, 40)) -> None:
    img = np.random.default_rng(seed).integers(0, 4000, shape, dtype=np.uint16)
    tmp = path.with_name(path.name + ".tmp")
    tifffile.imwrite(tmp, img)
    os.replace(tmp, path)


def write_mrc(path: Path, n: int, shape=(16, 16)) -> None:
    data = np.stack([np.full(shape, k, np.float32) for k in range(n)])
    tmp = path.with_name(path.name + ".tmp")
    with mrcfile.new(tmp, overwrite=True) as m:
        m.set_data(data)
        m.set_image_stack()
        m.voxel_size = 5.0
    os.replace(tmp, path)


class Runner:
    """Drives the source in a thread; records frames into the ledger like the pipeline would."""

    def __init__(self, folder: Path, session: Path, **kw):
        self.ledger = Ledger(session)
        kw = {"poll_s": 0.05, "min_age_s": 0.1, "quarantine_after_s": 0.6, **kw}
        self.source = FolderSource(folder, self.ledger, **kw)
        self.items: list[Frame | FrameRecord] = []
        self.stop = threading.Event()
        self.seq = self.ledger.next_seq()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for item in self.source.frames(self.stop):
            self.items.append(item)
            if isinstance(item, Frame):
                rec = TrackedRecord(self.seq, item.source_id, "ok", item.t_arrival,
                                    file_version=file_version_of(item))
            else:
                item.seq = self.seq
                rec = item
            self.seq += 1
            self.ledger.frame_done(rec)

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while len(self.items) < n and time.time() < deadline:
            time.sleep(0.02)
        assert len(self.items) >= n, f"only {len(self.items)} of {n} items arrived"

    def wait_quiet(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while self.source.busy and time.time() < deadline:
            time.sleep(0.05)

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.ledger.close()


def test_ignore_rules():
    assert ignored_name("a.tif.tmp") and ignored_name("~a.tif") and ignored_name(".a.tif")
    assert ignored_name("a.part") and not ignored_name("a.tif")


def test_whole_files_once_and_ignored_names(tmp_path):
    acq, ses = tmp_path / "acq", tmp_path / "ses"
    acq.mkdir()
    r = Runner(acq, ses)
    try:
        for i in range(3):
            write_tif(acq / f"f{i}.tif", i)
        (acq / "notes.txt").write_text("not an image")
        write_tif(acq / "~lock.tif")
        write_tif(acq / ".hidden.tif")
        (acq / "x.tif.part").write_bytes(b"II*\x00")
        r.wait_for(3)
        r.wait_quiet()
        time.sleep(0.3)  # a few more polls: nothing else may appear
        frames = [i for i in r.items if isinstance(i, Frame)]
        assert sorted(Path(f.source_id).name for f in frames) == ["f0.tif", "f1.tif", "f2.tif"]
        assert len(r.items) == 3
        assert all(file_version_of(f) for f in frames)
        # a new content version of the same path is processed again, once
        time.sleep(0.01)
        write_tif(acq / "f1.tif", 99)
        r.wait_for(4)
        r.wait_quiet()
        time.sleep(0.3)
        assert len(r.items) == 4 and Path(r.items[3].source_id).name == "f1.tif"
    finally:
        r.close()
    # files are never moved or deleted
    assert {p.name for p in acq.iterdir()} >= {"f0.tif", "f1.tif", "f2.tif", "notes.txt"}


def test_bad_files_quarantined_with_reason(tmp_path):
    acq, ses = tmp_path / "acq", tmp_path / "ses"
    acq.mkdir()
    (acq / "empty.tif").write_bytes(b"")
    (acq / "corrupt.tif").write_bytes(b"this is not a tiff at all" * 10)
    write_tif(acq / "good.tif")
    full = (acq / "good.tif").read_bytes()
    (acq / "truncated.tif").write_bytes(full[: len(full) // 2])
    write_mrc(acq / "stack.mrc", 3)
    mrc = (acq / "stack.mrc").read_bytes()
    (acq / "cut.mrc").write_bytes(mrc[: 1024 + 16 * 16 * 4 + 100])  # header + 1.4 slices of 3
    r = Runner(acq, ses)
    try:
        r.wait_for(1 + 3 + 3 + 1, timeout=40)  # good, 3 stack slices, 3 bad tifs, cut.mrc (≥1 item)
        r.wait_quiet(40)
    finally:
        r.close()
    con = connect_readonly(ses)
    rows = {r["source"]: dict(r) for r in con.execute("SELECT * FROM frames")}
    for name in ("empty.tif", "corrupt.tif", "truncated.tif"):
        row = rows[str(acq / name)]
        assert row["status"] == "quarantined" and row["reason"], name
    assert rows[str(acq / "good.tif")]["status"] == "ok"
    assert [rows[f"{acq / 'stack.mrc'}#{k}"]["status"] for k in range(3)] == ["ok"] * 3
    # the cut stack: its complete slice may be used, the rest is quarantined with a reason
    cut = [v for k, v in rows.items() if k.startswith(str(acq / "cut.mrc"))]
    assert any(v["status"] == "quarantined" and v["reason"] for v in cut)
    files = dict(con.execute("SELECT path, status FROM files").fetchall())
    assert files[str(acq / "empty.tif")] == "quarantined"
    assert files[str(acq / "good.tif")] == "done"
    sources = [r[0] for r in con.execute("SELECT source FROM frames")]
    assert len(sources) == len(set(sources))


def test_growing_stack_each_slice_once_and_restart(tmp_path):
    acq, ses = tmp_path / "acq", tmp_path / "ses"
    acq.mkdir()
    stack = acq / "growing.mrc"
    write_mrc(stack, 2)
    r = Runner(acq, ses)
    try:
        r.wait_for(2)
        r.wait_quiet()
        write_mrc(stack, 4)  # grew by two slices
        r.wait_for(4)
        r.wait_quiet()
        time.sleep(0.3)
    finally:
        r.close()
    assert [f.source_id for f in r.items] == [f"{stack}#{k}" for k in range(4)]
    assert [float(f.pixels[0, 0]) for f in r.items] == [0.0, 1.0, 2.0, 3.0]
    # restart: nothing is read twice; the stack grows once more while we were away
    write_tif(acq / "later.tif")
    write_mrc(stack, 5)
    r2 = Runner(acq, ses)
    try:
        r2.wait_for(2)
        r2.wait_quiet()
        time.sleep(0.3)
    finally:
        r2.close()
    assert sorted(i.source_id for i in r2.items) == sorted([f"{stack}#4", str(acq / "later.tif")])
    con = connect_readonly(ses)
    seqs = [r[0] for r in con.execute("SELECT seq FROM frames ORDER BY seq")]
    assert seqs == list(range(6))
    assert con.execute("SELECT COUNT(*) FROM files WHERE status='pending'").fetchone()[0] == 0


def test_stack_touched_without_new_slices_is_finished(tmp_path):
    """A stack whose mtime changes with no new slice (header rewrite) is read once and closed."""
    acq, ses = tmp_path / "acq", tmp_path / "ses"
    acq.mkdir()
    stack = acq / "done.mrc"
    write_mrc(stack, 3)
    r = Runner(acq, ses)
    try:
        r.wait_for(3)
        st = stack.stat()
        os.utime(stack, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        time.sleep(0.5)
        r.wait_quiet()
        time.sleep(0.3)
    finally:
        r.close()
    assert len(r.items) == 3
    con = connect_readonly(ses)
    rows = con.execute("SELECT version, status FROM files").fetchall()
    assert len(rows) == 2 and all(s == "done" for _, s in rows), rows


def test_stack_found_complete_after_a_restart_is_finished(tmp_path):
    """Killed after the stack's last version was seen but before it was closed: the restart
    reads nothing again and closes that version (CI once found it left 'pending')."""
    acq, ses = tmp_path / "acq", tmp_path / "ses"
    acq.mkdir()
    stack = acq / "s.mrc"
    write_mrc(stack, 3)
    r = Runner(acq, ses)
    try:
        r.wait_for(3)
        r.wait_quiet()
    finally:
        r.close()
    st = stack.stat()
    os.utime(stack, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the writer's last header update
    led = Ledger(ses)
    led.file_pending(str(stack), content_version(stack.stat()))  # seen, then the monitor was killed
    led.close()
    r2 = Runner(acq, ses)
    try:
        time.sleep(0.5)
        r2.wait_quiet()
        time.sleep(0.3)
    finally:
        r2.close()
    assert r2.items == []
    con = connect_readonly(ses)
    assert con.execute("SELECT COUNT(*) FROM files WHERE status='pending'").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 3


def test_restart_without_duplicates(tmp_path):
    acq, ses = tmp_path / "acq", tmp_path / "ses"
    acq.mkdir()
    for i in range(4):
        write_tif(acq / f"f{i}.tif", i)
    r = Runner(acq, ses)
    try:
        r.wait_for(4)
    finally:
        r.close()
    r2 = Runner(acq, ses)
    try:
        write_tif(acq / "f4.tif", 4)
        r2.wait_for(1)
        r2.wait_quiet()
        time.sleep(0.4)
    finally:
        r2.close()
    assert [Path(i.source_id).name for i in r2.items] == ["f4.tif"]
    con = connect_readonly(ses)
    assert con.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 5


def test_stack_slices_are_read_while_the_stack_grows(tmp_path):
    import emstream.sources.simulate.writers as writers
    acq, ses = tmp_path / "acq", tmp_path / "ses"
    acq.mkdir()
    stack = writers.MrcStackWriter(acq / "live.mrc", 0.3)
    r = Runner(acq, ses)
    try:
        for k in range(3):
            stack.append(np.full((16, 16), k, np.uint16))
        # the writer is not done: the slices so far must come through before it goes on
        r.wait_for(3)
        for k in range(3, 6):
            stack.append(np.full((16, 16), k, np.uint16))
        r.wait_for(6)
        r.wait_quiet()
        time.sleep(0.3)
    finally:
        r.close()
    assert [f.source_id for f in r.items] == [f"{acq / 'live.mrc'}#{k}" for k in range(6)]
    assert [int(f.pixels[0, 0]) for f in r.items] == list(range(6))
