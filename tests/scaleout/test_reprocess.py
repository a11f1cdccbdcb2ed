"""emstream reprocess (issue 23): dask.distributed re-analysis into one ordinary session.

Real components: an embedded LocalCluster of worker processes, real `dask scheduler` / `dask
worker` processes for the cluster test, real files written by the simulator, the real ledger.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from emstream.cli import main  # noqa: E402
from emstream.scaleout.plan import FileTask, Missing, plan_sources  # noqa: E402
from emstream.sources.simulate.scene import SceneConfig  # noqa: E402
from emstream.sources.simulate.writers import write_session  # noqa: E402


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A recorded folder as microscope software leaves it: TIFFs, an MRC stack, bad files."""
    d = tmp_path_factory.mktemp("recorded")
    write_session(d, frames=10, fps=1000, seed=3, inject_bad=True,
                  config=SceneConfig(shape=(256, 256), fps=1000), stack_size=3)
    return d


def _frames(session: Path) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(session / "ledger.sqlite")
    try:
        return sorted(con.execute("SELECT source, status, reason FROM frames"))
    finally:
        con.close()


def _particles(session: Path) -> list[tuple]:
    """Every particle with its file, ordering (seq, track) aside."""
    con = sqlite3.connect(session / "ledger.sqlite")
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(particles)")
                if r[1] not in ("seq", "track_id")]
        q = (f"SELECT f.source, {', '.join('p.' + c for c in cols)} FROM particles p "
             "JOIN frames f ON f.seq = p.seq")
        return sorted(tuple(r) for r in con.execute(q))
    finally:
        con.close()


def _sources_once(session: Path) -> None:
    rows = _frames(session)
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), "a frame recorded twice"


def test_plan_orders_files_and_splits_stacks(recorded, tmp_path):
    plan, notes = plan_sources([recorded])
    assert notes == [] and all(isinstance(t, FileTask) for t in plan)
    mtimes = [t.mtime_ns for t in plan]
    assert mtimes == sorted(mtimes)
    stacks = [t for t in plan if t.stack]
    assert stacks and all(t.count and t.total for t in stacks)
    # the incomplete stack (header declares more than it holds) is read whole: one row
    bad = [t for t in plan if t.path.endswith(".mrc") and "bad" in t.path]
    assert len(bad) == 1 and bad[0].count is None
    with pytest.raises(FileNotFoundError):
        plan_sources([recorded / "nothing-here"])


@pytest.mark.timeout(300)
def test_reprocess_equals_watch_and_resumes(recorded, tmp_path, capfd):
    """The particle table of reprocess equals watch's on the same files (issue 23 item 2);
    bad files are quarantined as watch does; a rerun adds only what is new."""
    watched, redone = tmp_path / "watched", tmp_path / "redone"
    assert main(["watch", str(recorded), "--session-dir", str(watched), "--headless",
                 "--exit-when-idle", "1.5", "--quarantine-after", "0.5", "--no-report"]) == 0
    capfd.readouterr()
    assert main(["reprocess", str(recorded), "--out", str(redone), "--workers", "2"]) == 0
    said = capfd.readouterr().err
    assert "2 worker(s)" in said and "frames/s" in said  # the progress line
    a, b = _particles(watched), _particles(redone)
    assert len(a) > 50 and a == b
    w = {s: st for s, st, _ in _frames(watched)}
    r = {s: st for s, st, _ in _frames(redone)}
    assert w == r and list(r.values()).count("quarantined") >= 3
    assert (redone / "report.html").is_file() and (redone / "exports" / "particles.csv").is_file()
    _sources_once(redone)

    # resumable: new files appear; a rerun processes only them
    n_before = len(r)
    more = tmp_path / "more"
    write_session(more, frames=3, fps=1000, seed=9, modes=("whole",),
                  config=SceneConfig(shape=(256, 256), fps=1000))
    for p in more.glob("*.tif"):
        shutil.copy2(p, recorded / f"later_{p.name}")
    try:
        assert main(["reprocess", str(recorded), "--out", str(redone), "--workers", "1",
                     "--no-report"]) == 0
        rows = _frames(redone)
        assert len(rows) == n_before + 3
        _sources_once(redone)
        # and a session folder as SOURCE: the files it saw, read again
        again = tmp_path / "again"
        assert main(["reprocess", str(watched), "--out", str(again), "--workers", "1",
                     "--no-report", "--segmenter", "classical"]) == 0
        assert {s for s, _, _ in _frames(again)} == set(w)
    finally:
        for p in recorded.glob("later_*"):
            p.unlink()


def test_session_source_names_files_that_changed(recorded, tmp_path):
    """A session whose files were rewritten or removed since: each such file one quarantined
    row with the reason, nothing read that the session did not see."""
    src = tmp_path / "frames"
    shutil.copytree(recorded, src)
    session = tmp_path / "session"
    assert main(["watch", str(src), "--session-dir", str(session), "--headless",
                 "--exit-when-idle", "1.5", "--quarantine-after", "0.5", "--no-report",
                 "--segmenter", "classical"]) == 0
    tifs = sorted(p for p in src.glob("frame_*.tif"))
    tifs[0].unlink()
    os.utime(tifs[1], ns=(time.time_ns(), time.time_ns()))
    plan, _ = plan_sources([session])
    missing = {Path(t.path).name: t.reason for t in plan if isinstance(t, Missing)}
    assert missing[tifs[0].name] == "no longer exists"
    assert missing[tifs[1].name].startswith("rewritten since the session saw it")


def test_unreachable_scheduler_fails_fast(recorded, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    rc = main(["reprocess", str(recorded), "--out", str(tmp_path / "s"), "--scheduler",
               f"tcp://127.0.0.1:{port}", "--connect-timeout", "2"])
    assert rc == 1 and time.monotonic() - t0 < 30
    assert not (tmp_path / "s").exists()  # a refused command leaves no session folder


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_cluster_survives_a_killed_worker(tmp_path):
    """`dask scheduler` + two `dask worker` processes; one worker is killed mid-run: every
    frame still has exactly one row, all processed (issue 23 item 3)."""
    frames = tmp_path / "frames"
    write_session(frames, frames=40, fps=1000, seed=5, modes=("whole",),
                  config=SceneConfig(shape=(384, 384), fps=1000))
    n_files = len(list(frames.glob("*.tif")))
    sched_file = tmp_path / "scheduler.json"
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(sched_file)], tmp_path / "scheduler.log")]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        import json

        address = json.loads(sched_file.read_text())["address"]
        for k in range(2):
            procs.append(_start(["worker", address, "--nthreads", "1", "--no-nanny",
                                 "--name", f"w{k}", "--no-dashboard"], tmp_path / f"w{k}.log"))
        out = tmp_path / "session"
        run = subprocess.Popen([sys.executable, "-m", "emstream", "reprocess", str(frames),
                                "--out", str(out), "--scheduler", address, "--no-report",
                                "--in-flight", "4"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        killed = False
        deadline = time.monotonic() + 400
        while run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if killed or not (out / "ledger.sqlite").exists():
                continue
            try:
                con = sqlite3.connect(f"file:{out / 'ledger.sqlite'}?mode=ro", uri=True)
                n = con.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
                con.close()
            except sqlite3.Error:
                continue
            if n >= 6:
                os.killpg(procs[1].pid, signal.SIGKILL)  # worker w0, mid-run
                killed = True
        output = run.communicate(timeout=60)[0].decode(errors="replace")
        assert killed and run.returncode == 0, output
        rows = _frames(out)
        assert len(rows) == n_files == len({s for s, _, _ in rows}), output
        assert all(st == "ok" for _, st, _ in rows), rows
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)


@pytest.mark.timeout(300)
def test_recorded_stream_reprocesses_to_the_same_particles(tmp_path):
    """`listen --record DIR` keeps a stream's frames; `reprocess DIR` finds the same particles."""
    import threading

    from emstream.sources.simulate.stream import send_stream

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        ep = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    sender = threading.Thread(target=send_stream, args=(ep,), kwargs=dict(
        frames=6, fps=4, seed=2, config=SceneConfig(shape=(256, 256), fps=4)), daemon=True)
    sender.start()
    kept, live, again = tmp_path / "kept", tmp_path / "live", tmp_path / "again"
    assert main(["listen", ep, "--session-dir", str(live), "--headless", "--exit-when-idle", "3",
                 "--record", str(kept), "--no-report"]) == 0
    sender.join(30)
    assert len(list(kept.glob("*.tif"))) == 6 and not list(kept.glob(".*"))
    assert main(["reprocess", str(kept), "--out", str(again), "--no-report"]) == 0
    a, b = _particles(live), _particles(again)
    # the stream's frames are named by the stream, the recorded ones by their files: compare
    # what was measured, frame by frame in order
    strip = [r[1:] for r in a]
    assert len(a) > 10 and sorted(strip) == sorted(r[1:] for r in b)
    con = sqlite3.connect(again / "ledger.sqlite")
    t_again = [r[0] for r in con.execute("SELECT t_acq FROM frames ORDER BY seq")]
    con.close()
    con = sqlite3.connect(live / "ledger.sqlite")
    t_live = [r[0] for r in con.execute("SELECT t_acq FROM frames ORDER BY seq")]
    con.close()
    assert t_again == pytest.approx(t_live)  # acquisition times kept


@pytest.mark.timeout(300)
def test_client_sends_the_files_where_workers_do_not_share_them(recorded, tmp_path):
    """--paths send: the workers get each file's bytes and find the same particles."""
    shared, sent = tmp_path / "shared", tmp_path / "sent"
    for out, how in ((shared, "shared"), (sent, "send")):
        assert main(["reprocess", str(recorded), "--out", str(out), "--paths", how,
                     "--segmenter", "classical", "--no-report"]) == 0
    assert _particles(shared) == _particles(sent) and len(_particles(sent)) > 50
    assert _frames(shared) == _frames(sent)


def test_a_task_that_kills_its_workers_is_quarantined():
    """dask gives up on a task after allowed-failures dead workers: its frames are quarantined
    with the reason, one row each (stack slices included), and the run goes on."""
    from distributed.scheduler import KilledWorker

    from emstream.scaleout.source import ClusterSource

    class Dead:
        def result(self):
            from types import SimpleNamespace

            raise KilledWorker("emstream-1", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)

    src = ClusterSource.__new__(ClusterSource)
    from emstream.scaleout.source import Progress

    src.progress, src._events = Progress(), []
    import threading

    src._lock = threading.Lock()
    stack = FileTask("/d/s.mrc", "10:1", 1, start=4, count=3, stack=True, total=7)
    recs = src._collect(Dead(), stack)
    assert [r.source_id for r in recs] == ["/d/s.mrc#4", "/d/s.mrc#5", "/d/s.mrc#6"]
    assert all(r.status == "quarantined" and "died repeatedly" in r.reason for r in recs)
    assert src.progress.tasks_retried == 1 and len(src.drain_events()) == 1
