"""Frame states through the real pipeline (issue 22): scripted trouble in, states in the ledger,
statistics and rules from trusted frames only, the built-in alerts raised."""

from __future__ import annotations

import sqlite3

import pytest
from simulated import SimulatedSource, TruthSegmenter

from emstream.pipeline import Pipeline
from emstream.process.rules import RuleEngine, RuleSet
from emstream.sinks.base import Session
from emstream.sinks.ledger import Ledger
from emstream.sinks.report import collect
from emstream.sources.simulate import script
from emstream.sources.simulate.scene import Microscope, SceneConfig

SCRIPT = "defocus:8-11,blank:15-16,saturate:20-21,jump:25,empty:28-30"


@pytest.fixture(scope="module")
def scripted():
    scope = Microscope(SceneConfig(shape=(1024, 1024), mode="haadf", t0=1.7e9), seed=4)
    events = script.parse_script(SCRIPT)
    out = []
    for k in range(34):
        script.before_frame(events, scope, k)
        f = scope.next_frame()
        out.append((f, script.apply(events, scope, f, k)))
    return out


RULES = '''
[[rules]]
name = "any particle"
frame.count = [1, inf]
clear_frames = 1

[[rules]]
name = "defocused now"
frame.state = ["out_of_focus"]
'''


@pytest.mark.timeout(300)
def test_scripted_states_reach_the_ledger_and_gate_the_statistics(scripted, tmp_path):
    engine = RuleEngine(RuleSet.from_toml_text(RULES))
    frames = [f for f, _ in scripted]
    p = Pipeline(SimulatedSource(frames), TruthSegmenter(frames), [Ledger(tmp_path)],
                 session=Session(tmp_path, "sim", "truth"), rules=engine)
    p.run()
    con = sqlite3.connect(tmp_path / "ledger.sqlite")
    states = [r[0] for r in con.execute("SELECT state FROM frames ORDER BY seq")]
    alerts = con.execute("SELECT name, seq FROM alerts ORDER BY id").fetchall()
    con.close()
    want = [s for _, s in scripted]
    assert states == want
    assert p.stats.not_ok == sum(s not in ("ok", "moved") for s in want)  # status bar, terminal
    names = [a[0] for a in alerts]
    for built_in in ("focus lost", "beam off", "field moved", "empty field"):
        assert built_in in names, names
    # the frame.state rule fires on the defocused stretch; the count rule never on it
    assert ("defocused now", 8) in alerts
    assert all(not (8 <= seq <= 11) for name, seq in alerts if name == "any particle")
    # the report's size statistics come from trusted frames only
    rep = collect(tmp_path)
    trusted = {k for k, s in enumerate(want) if s in ("ok", "moved")}
    n_trusted = sum(len([p for p in scripted[k][0].particles if not p["touches_border"]])
                    for k in trusted)
    assert rep["size"]["n"] <= n_trusted
    assert {r["state"] for r in rep["frame_states"]} == set(want)


def test_report_can_include_other_states(scripted, tmp_path):
    from emstream.cli import main

    frames = [f for f, _ in scripted]
    Pipeline(SimulatedSource(frames), TruthSegmenter(frames), [Ledger(tmp_path)],
             session=Session(tmp_path, "sim", "truth")).run()
    default = collect(tmp_path)["size"]["n"]
    wider = collect(tmp_path, ("ok", "moved", "out_of_focus"))["size"]["n"]
    assert wider > default
    assert main(["report", str(tmp_path), "--include-states", "ok,defocused"]) == 2
    assert main(["report", str(tmp_path), "--include-states", "ok,moved,out_of_focus"]) == 0


def test_demo_and_the_stream_take_a_script(tmp_path):
    """Issue 22 item 6: scripted trouble in `emstream demo` and over ZeroMQ, in the manifest."""
    import json
    import threading

    import zmq

    from emstream.cli import main

    assert main(["demo", "--script", "melt:3", "--headless"]) == 2
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    manifest = tmp_path / "m.jsonl"
    from emstream.sources.simulate.stream import send_stream

    t = threading.Thread(target=send_stream, args=(f"tcp://127.0.0.1:{port}",), kwargs=dict(
        frames=6, fps=0, seed=1, bind=False, config=SceneConfig(shape=(128, 128)),
        manifest=manifest, script="blank:2-3"), daemon=True)
    t.start()
    got = [pull.recv_multipart() for _ in range(6)]
    t.join(20)
    pull.close(linger=0)
    states = [json.loads(x)["state"] for x in manifest.read_text().splitlines()
              if json.loads(x).get("kind") == "frame"]
    assert len(got) == 6 and states == ["ok", "ok", "beam_off", "beam_off", "ok", "ok"]


@pytest.mark.timeout(300)
def test_include_states_widens_live_statistics_rules_and_review(scripted, tmp_path):
    """--include-states for the live commands: what the pipeline trusts feeds the window's
    statistics and the rules; `emstream view` reads the session's choice back from config.json."""
    from emstream.config import write_config
    from emstream.gui.review import load_session
    from emstream.gui.session_stats import SessionStatistics

    frames = [f for f, _ in scripted]
    want = [s for _, s in scripted]
    runs = {}
    for name, states in (("default", ("ok", "moved")), ("wide", ("ok", "moved", "out_of_focus"))):
        folder = tmp_path / name
        folder.mkdir()
        write_config(folder, {"include_states": ",".join(states)})
        stats = SessionStatistics()
        engine = RuleEngine(RuleSet.from_toml_text(RULES))
        seen = []

        def keep(record, stats=stats, seen=seen):
            stats.account(record)
            seen.append((record.seq, record.result.is_trusted))

        p = Pipeline(SimulatedSource(frames), TruthSegmenter(frames), [Ledger(folder)],
                     session=Session(folder, "sim", "truth"), rules=engine, trusted_states=states)
        p.add_listener(keep)
        p.run()
        assert [t for _, t in sorted(seen)] == [s in states for s in want]
        assert p.stats.not_ok == sum(s not in states for s in want)
        runs[name] = (stats.particles, load_session(folder).statistics.particles,
                      len(stats.untrusted_snapshot()))
    # the defocused frames' particles count only where asked for, live and in review alike
    assert runs["wide"][0] > runs["default"][0]
    assert runs["wide"][1] > runs["default"][1]
    assert runs["default"][0] == runs["default"][1]
    assert runs["wide"][2] == runs["default"][2] - want.count("out_of_focus")


def test_live_commands_check_include_states(tmp_path):
    from emstream.cli import main

    (tmp_path / "in").mkdir()
    assert main(["watch", str(tmp_path / "in"), "--include-states", "ok,fuzzy", "--headless",
                 "--session-dir", str(tmp_path / "s"), "--exit-when-idle", "0.1"]) == 2
    assert not (tmp_path / "s").exists()
