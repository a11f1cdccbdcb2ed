"""Benchmark the ledger at session sizes a long acquisition reaches (1M frames by default).

Fills a fresh ``ledger.sqlite`` with ``--rows`` frame rows (single files and stack slices, as a
day at 10+ frames/s writes them) and ``files`` rows, then times what a monitor does per file and
at start-up: ``recorded_sources`` (the exactly-once lookup, per new file), ``file_state`` (asked once per file
found), ``next_seq`` (start-up), ``Ledger()`` opening an existing session, and for comparison
``terminal_versions`` (every finished file at once, which start-up used to read).

Usage::

    python tools/bench_ledger.py --rows 1000000 --out runs/bench_ledger.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "tools"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import machine_info  # noqa: E402

from emstream.sinks.ledger import Ledger  # noqa: E402


def fill(session: Path, rows: int) -> None:
    led = Ledger(session)
    con = led._con
    con.execute("BEGIN")
    batch = []
    for i in range(rows):
        if i % 10 < 8:  # single files
            src = f"/data/run/img_{i:07d}.tif"
            batch.append((i, src, "ok", "1000:1"))
        else:  # slices of stacks of 20
            src = f"/data/run/stack_{i // 20:06d}.mrc#{i % 20}"
            batch.append((i, src, "ok", "2000:1"))
        if len(batch) == 50_000:
            con.executemany("INSERT INTO frames (seq, source, status, file_version) "
                            "VALUES (?, ?, ?, ?)", batch)
            batch = []
    if batch:
        con.executemany("INSERT INTO frames (seq, source, status, file_version) VALUES (?, ?, ?, ?)",
                        batch)
    con.execute("INSERT INTO files (path, version, status) SELECT DISTINCT "
                "substr(source, 1, CASE instr(source, '#') WHEN 0 THEN length(source) "
                "ELSE instr(source, '#') - 1 END), file_version, 'done' FROM frames")
    con.execute("COMMIT")
    led.close()


def timed(fn, n: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        session = Path(d)
        t0 = time.perf_counter()
        fill(session, a.rows)
        fill_s = time.perf_counter() - t0
        open_ms = timed(lambda: Ledger(session).close())
        led = Ledger(session)
        out = {
            "machine": machine_info(),
            "rows": a.rows,
            "fill_s": round(fill_s, 1),
            "open_ms": round(open_ms, 2),
            "recorded_sources_new_file_ms": round(timed(
                lambda: led.recorded_sources("/data/run/new_0000001.tif"), 200), 3),
            "recorded_sources_stack_ms": round(timed(
                lambda: led.recorded_sources("/data/run/stack_000100.mrc"), 200), 3),
            # the query recorded_sources used before (OR + LIKE: a full scan), for comparison
            "recorded_sources_old_like_query_ms": round(timed(lambda: led._con.execute(
                "SELECT source, file_version FROM frames WHERE source=? OR source LIKE ? "
                "ESCAPE '\\'", ("/data/run/new_0000001.tif", "/data/run/new\\_0000001.tif#%")
            ).fetchall(), 5), 1),
            "next_seq_ms": round(timed(led.next_seq, 50), 3),
            # what the folder source asks once per file it finds (start-up reads nothing else)
            "file_state_ms": round(timed(
                lambda: led.file_state("/data/run/img_0000001.tif", "1000:1"), 200), 3),
            "terminal_versions_all_files_ms": round(timed(led.terminal_versions, 3), 1),
        }
        led.close()
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
