"""Hostile files (issue 21): every read of an untrusted file is bounded, and the watcher goes on.

Each file here is made the way an adversary (or a broken writer) would: an IFD chain that loops,
a compressed TIFF that declares 40000² pixels. The readers must refuse them quickly with a reason,
and a watched folder holding them beside a good file must process the good one and quarantine
the others, under an address-space limit that a decompression bomb would break.
"""

from __future__ import annotations

import io
import os
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from emstream.errors import UnreadableFile
from emstream.sources.readers import check_complete, read_frames

REPO = Path(__file__).resolve().parents[2]


def _ifd(b: bytes) -> tuple[int, int]:
    first = struct.unpack("<I", b[4:8])[0]
    return first, struct.unpack("<H", b[first:first + 2])[0]


def looping_tiff() -> bytes:
    """A valid 64² TIFF whose next-IFD pointer points back at its own IFD."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((64, 64), np.uint16))
    b = bytearray(buf.getvalue())
    first, n = _ifd(b)
    nxt = first + 2 + n * 12
    b[nxt:nxt + 4] = struct.pack("<I", first)
    return bytes(b)


def bomb_tiff(side: int = 40000) -> bytes:
    """A few hundred bytes of deflated TIFF that declares ``side``² 16-bit pixels."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((64, 64), np.uint16), compression="zlib")
    b = bytearray(buf.getvalue())
    first, n = _ifd(b)
    for k in range(n):
        e = first + 2 + 12 * k
        tag, typ = struct.unpack("<HH", b[e:e + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            b[e + 8:e + 12] = (struct.pack("<H", side) + b"\0\0" if typ == 3
                               else struct.pack("<I", side))
    return bytes(b)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("make, words", [(looping_tiff, "loops back"),
                                         (bomb_tiff, "MPx limit")])
def test_readers_refuse_hostile_tiffs_quickly(tmp_path, make, words):
    p = tmp_path / "hostile.tif"
    p.write_bytes(make())
    t0 = time.monotonic()
    for fn in (check_complete, read_frames):
        with pytest.raises(UnreadableFile, match=words):
            fn(p)
    assert time.monotonic() - t0 < 5


def test_a_long_but_honest_page_chain_is_still_read(tmp_path):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, np.arange(30 * 16 * 16, dtype=np.uint16).reshape(30, 16, 16))
    assert len(read_frames(p)) == 30


def _good_tiff_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.random.default_rng(seed).random((96, 96)) * 1000).astype(np.uint16),
                     resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "nm"}, imagej=True)
    return buf.getvalue()


def _watch_once(acq: Path, session: Path, python: tuple[str, ...] = ("-m", "emstream")) -> None:
    """``emstream watch`` on ``acq`` until idle, as a user runs it (``python``: how Python is
    told to start emstream)."""
    proc = subprocess.run(
        [sys.executable, *python, "watch", str(acq), "--session-dir", str(session),
         "--segmenter", "classical", "--headless", "--exit-when-idle", "3", "--no-report"],
        capture_output=True, text=True, timeout=240, cwd=REPO,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_watcher_quarantines_hostile_files_and_processes_the_good_one(tmp_path):
    """The real CLI under a 3 GiB address-space limit: it ends by itself, nothing is lost."""
    acq = tmp_path / "acq"
    acq.mkdir()
    (acq / "good.tif").write_bytes(_good_tiff_bytes(0))
    (acq / "loop.tif").write_bytes(looping_tiff())
    (acq / "bomb.tif").write_bytes(bomb_tiff())
    session = tmp_path / "session"
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
        "from emstream.cli import main; sys.exit(main())"
    )
    _watch_once(acq, session, python=("-c", code))

    con = sqlite3.connect(session / "ledger.sqlite")
    rows = dict(con.execute("SELECT path, status || ': ' || COALESCE(reason, '') FROM files")
                .fetchall())
    con.close()
    by_name = {Path(k).name: v for k, v in rows.items()}
    assert by_name["good.tif"].startswith("done")
    assert by_name["loop.tif"].startswith("quarantined") and "loops back" in by_name["loop.tif"]
    assert by_name["bomb.tif"].startswith("quarantined") and "MPx" in by_name["bomb.tif"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform == "win32", reason="Windows file names are always Unicode")
def test_a_file_name_that_is_not_utf8_is_processed_and_recorded_readably(tmp_path):
    acq = tmp_path / "acq"
    acq.mkdir()
    with open(os.path.join(os.fsencode(acq), b"a_caf\xe9.tif"), "wb") as fh:
        fh.write(_good_tiff_bytes(1))
    (acq / "b.tif").write_bytes(_good_tiff_bytes(2))
    session = tmp_path / "session"
    for _ in range(2):  # and again: a restart must not count it twice
        _watch_once(acq, session)

    con = sqlite3.connect(session / "ledger.sqlite")
    frames = con.execute("SELECT source, status FROM frames ORDER BY seq").fetchall()
    files = con.execute("SELECT path, status FROM files").fetchall()
    con.close()
    assert sorted(Path(s).name for s, _ in frames) == ["a_caf\\xe9.tif", "b.tif"]
    assert {st for _, st in frames} == {"ok"}
    assert {Path(p).name: st for p, st in files}["a_caf\\xe9.tif"] == "done"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_touched_file_is_not_counted_again_but_a_rewritten_one_is(tmp_path):
    """``touch`` makes a new (size, mtime) version; its content decides (issue 21 item 9)."""

    acq = tmp_path / "acq"
    acq.mkdir()
    (acq / "a.tif").write_bytes(_good_tiff_bytes(1))
    (acq / "b.tif").write_bytes(_good_tiff_bytes(2))
    session = tmp_path / "session"
    _watch_once(acq, session)
    later = time.time_ns() + 5_000_000_000
    os.utime(acq / "a.tif", ns=(later, later))  # touched: same bytes
    (acq / "b.tif").write_bytes(_good_tiff_bytes(3))  # rewritten: same size, other bytes
    os.utime(acq / "b.tif", ns=(later, later))
    _watch_once(acq, session)
    con = sqlite3.connect(session / "ledger.sqlite")
    frames = [Path(s).name for (s,) in con.execute("SELECT source FROM frames ORDER BY seq")]
    files = con.execute("SELECT path, status, reason FROM files ORDER BY rowid").fetchall()
    con.close()
    assert sorted(frames) == ["a.tif", "b.tif", "b.tif"]
    touched = [r for r in files if Path(r[0]).name == "a.tif"]
    assert len(touched) == 2 and all(st == "done" for _, st, _ in touched)
    assert "same content" in (touched[1][2] or "")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform == "win32", reason="symlinks and FIFOs")
def test_links_folders_and_fifos_named_like_images_are_recorded_as_skipped(tmp_path):
    acq = tmp_path / "acq"
    acq.mkdir()
    (acq / "good.tif").write_bytes(_good_tiff_bytes(4))
    (acq / "link.tif").symlink_to(acq / "good.tif")
    (acq / "folder.tif").mkdir()
    os.mkfifo(acq / "pipe.tif")  # reading it would block for ever
    session = tmp_path / "session"
    _watch_once(acq, session)
    _watch_once(acq, session)  # a restart records nothing twice
    con = sqlite3.connect(session / "ledger.sqlite")
    rows = {Path(s).name: (st, r) for s, st, r in
            con.execute("SELECT source, status, reason FROM frames")}
    n = con.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    con.close()
    assert n == 4
    assert rows["good.tif"][0] == "ok"
    assert rows["link.tif"] == ("skipped", "a symbolic link: links are not followed")
    assert rows["folder.tif"][0] == "skipped" and "folder" in rows["folder.tif"][1]
    assert rows["pipe.tif"][0] == "skipped" and "FIFO" in rows["pipe.tif"][1]


def test_a_long_stack_is_read_a_few_slices_at_a_time(tmp_path, monkeypatch):
    """Memory per file, not per frame (issue 21 item 4): the folder source never holds more than
    STACK_PART slices of a stack, and still records every slice once."""
    import mrcfile

    from emstream.sinks.ledger import Ledger
    from emstream.sources import folder as folder_mod
    from emstream.sources import readers

    acq = tmp_path / "acq"
    acq.mkdir()
    data = (np.random.default_rng(0).random((22, 64, 64)) * 1000).astype(np.float32)
    with mrcfile.new(acq / "stack.mrc") as m:
        m.set_data(data)
        m.set_image_stack()
        m.voxel_size = 5.0
    sizes = []
    real = readers.read_frames

    def spy(*a, **k):
        out = real(*a, **k)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(readers, "read_frames", spy)
    led = Ledger(tmp_path / "s")
    src = folder_mod.FolderSource(acq, led, poll_s=0.05, min_age_s=0.0, use_watchdog=False)
    import threading

    stop = threading.Event()
    got = []
    t0 = time.monotonic()
    for f in src.frames(stop):
        got.append(f)
        np.testing.assert_array_equal(f.pixels, data[len(got) - 1])
        if len(got) == 22 or time.monotonic() - t0 > 30:
            stop.set()
    led.close()
    assert [f.source_id.rsplit("#", 1)[1] for f in got] == [str(k) for k in range(22)]
    assert max(sizes) <= folder_mod.STACK_PART and len(sizes) >= 22 // folder_mod.STACK_PART
