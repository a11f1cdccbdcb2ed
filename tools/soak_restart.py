"""Kill-and-restart soak: the monitor is killed with SIGKILL again and again while the simulated
microscope writes, and the ledger must still hold every frame exactly once.

``emstream simulate`` writes ``--frames`` frames (every write mode, bad files injected) into a
folder at ``--fps``; ``emstream watch`` runs on it and is killed (``kill -9``) ``--kills`` times at
random moments and restarted on the same session; a last run ends with ``--exit-when-idle``. The
ledger is then checked against the simulator's manifest: as many ``ok`` and ``quarantined`` frames
as it wrote, no frame twice, every file terminal.

Usage::

    python tools/soak_restart.py --frames 600 --kills 6 --out runs/soak
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def emstream(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.Popen([sys.executable, "-m", "emstream", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep the folders here")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="emstream-soak-"))
    acq, session = work / "acq", work / "session"
    acq.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sim = emstream("simulate", "--out", str(acq), "--frames", str(a.frames), "--fps", str(a.fps),
                   "--size", str(a.size), "--seed", str(a.seed), "--inject-bad")
    watch_args = ["watch", str(acq), "--session-dir", str(session), "--segmenter", "classical",
                  "--headless", "--no-report"]
    span = a.frames / a.fps
    kills = 0
    while kills < a.kills:
        w = emstream(*watch_args)
        time.sleep(rng.uniform(0.1, 1.2) * span / (a.kills + 1))
        w.send_signal(signal.SIGKILL)
        w.wait()
        kills += 1
    sim.wait()
    final = emstream(*watch_args, "--exit-when-idle", "5")
    _, err = final.communicate(timeout=1800)
    if final.returncode != 0:
        print(err[-2000:], file=sys.stderr)
        return 1
    manifest = [json.loads(x) for x in (acq / "simulator-manifest.jsonl").read_text().splitlines()]
    want = {"ok": sum(1 for r in manifest if r.get("kind") == "frame"),
            "quarantined": sum(1 for r in manifest if r.get("kind") == "bad")}
    con = sqlite3.connect(session / "ledger.sqlite")
    got = dict(con.execute("SELECT status, COUNT(*) FROM frames GROUP BY status").fetchall())
    dup = con.execute("SELECT COUNT(*) FROM (SELECT source, file_version FROM frames "
                      "GROUP BY source, file_version HAVING COUNT(*) > 1)").fetchone()[0]
    pending = con.execute("SELECT COUNT(*) FROM files WHERE status = 'pending'").fetchone()[0]
    restarts = len(json.loads(con.execute(
        "SELECT value FROM session WHERE key = 'starts'").fetchone()[0])) - 1
    con.close()
    out = {"frames_written": want["ok"], "bad_files_written": want["quarantined"],
           "ok": got.get("ok", 0), "quarantined": got.get("quarantined", 0),
           "skipped": got.get("skipped", 0), "duplicates": dup, "files_pending": pending,
           "kills": kills, "restarts": restarts, "seconds": round(time.time() - t0, 1)}
    passed = (out["ok"] == want["ok"] and out["quarantined"] == want["quarantined"]
              and dup == 0 and pending == 0)
    out["result"] = "passed" if passed else "FAILED"
    print(json.dumps(out, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
