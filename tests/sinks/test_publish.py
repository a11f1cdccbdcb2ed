"""Publisher: frames and alerts reach a real SUB subscriber on 127.0.0.1 as documented JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from emstream.errors import ConfigError
from emstream.process.rules import RuleEngine, RuleSet
from emstream.results import Alert, Event, FrameRecord
from emstream.sinks.base import Session
from emstream.sinks.publish import SCHEMA, Publisher, check_loopback
from tests.process.test_rules_helpers import result, table


@pytest.fixture
def pub_sub():
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:*", context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.endpoint)
    # PUB/SUB "slow joiner": publish probes until the subscription is live.
    for _ in range(200):
        pub.event(Event("probe", "hello"))
        if sub.poll(50):
            break
    else:
        pytest.fail("subscriber never connected")
    while sub.poll(50):  # drain the probes
        sub.recv_multipart()
    yield pub, sub
    pub.close()
    sub.close()
    ctx.term()


def recv(sub) -> tuple[str, dict]:
    assert sub.poll(5000), "nothing received"
    topic, data = sub.recv_multipart()
    return topic.decode(), json.loads(data)


def test_frames_and_alerts_reach_a_subscriber(pub_sub, tmp_path):
    pub, sub = pub_sub
    assert pub.endpoint.startswith("tcp://127.0.0.1:") and not pub.endpoint.endswith(":*")
    pub.open(Session(tmp_path, "simulated", "classical"))
    assert recv(sub)[1]["state"] == "open"

    r = result(7, table(equivalent_diameter_nm=[20.0, 3.0]), t=100.0)
    r.timings_ms = {"segment": 12.5}
    pub.frame_done(FrameRecord(7, "sim/7", "ok", 100.2, result=r, t_acq=100.0))
    topic, msg = recv(sub)
    assert topic == "frame" == msg["type"]
    assert msg["schema"] == SCHEMA and msg["v"] == 1
    assert msg["seq"] == 7 and msg["status"] == "ok" and msg["unit"] == "nm"
    assert msg["nm_per_px"] == [0.5, 0.5] and msg["summary"]["count"] == 2
    assert msg["summary"]["d90"] is None  # NaN -> null
    assert msg["timings_ms"] == {"segment": 12.5}

    pub.frame_done(FrameRecord(8, "bad.tif", "quarantined", 101.0, reason="truncated MRC"))
    topic, msg = recv(sub)
    assert (
        msg["status"] == "quarantined"
        and msg["reason"] == "truncated MRC"
        and msg["summary"] is None
    )

    a = Alert(
        "large particles",
        "critical",
        7,
        "big ones",
        t=100.0,
        particle_labels=[1],
        actions=["publish"],
    )
    a.snapshot = "snapshots/alert_000007_large_particles.png"
    pub.alert(a)
    pub.alert(Alert("quiet", "info", 7, "not published", actions=["log"]))
    pub.alert(
        Alert("stall", "warning", None, "no frame", builtin=True, actions=["banner", "publish"])
    )
    topic, msg = recv(sub)
    assert topic == "alert" and msg["rule"] == "large particles" and msg["severity"] == "critical"
    assert msg["seq"] == 7 and msg["particle_labels"] == [1] and msg["snapshot"].endswith(".png")
    topic, msg = recv(sub)
    assert msg["rule"] == "stall" and msg["seq"] is None and msg["builtin"] is True

    pub.close()
    topic, msg = recv(sub)
    assert topic == "session" and msg["state"] == "close" and msg["source"] == "simulated"
    pub.close()  # idempotent


def test_matching_count_is_published(pub_sub):
    pub, sub = pub_sub
    eng = RuleEngine(
        RuleSet.from_toml_text('[[rules]]\nname="big"\nparticles.equivalent_diameter_nm=[15,40]\n')
    )
    pub.matching = eng.matching
    r = result(1, table(equivalent_diameter_nm=[20.0, 3.0, 30.0]))
    pub.frame_done(FrameRecord(1, "sim/1", "ok", 1.0, result=r))
    assert recv(sub)[1]["matching"] == 2
    pub.matching = None
    pub.rules = type("RulesFileLike", (), {"engine": eng})()
    pub.frame_done(FrameRecord(2, "sim/2", "ok", 2.0, result=r))
    assert recv(sub)[1]["matching"] == 2


def test_refuses_non_loopback_unless_allowed():
    for ep in [
        "tcp://127.0.0.1:5556",
        "tcp://localhost:1",
        "tcp://[::1]:5",
        "ipc:///tmp/x",
        "tcp://127.0.0.2:9",
    ]:
        check_loopback(ep)
    for ep in ["tcp://*:5556", "tcp://0.0.0.0:5556", "tcp://192.168.1.5:5556", "tcp://eth0:5556"]:
        with pytest.raises(ConfigError, match="loopback"):
            Publisher(ep)
    ctx = zmq.Context()
    p = Publisher("tcp://0.0.0.0:*", allow_remote=True, context=ctx)
    with pytest.raises(ConfigError, match="cannot publish"):
        Publisher(p.endpoint.replace("0.0.0.0", "127.0.0.1"), context=ctx)  # port in use
    assert p.endpoint.startswith("tcp://0.0.0.0:")
    p.close()
    ctx.term()


def test_json_is_strict(pub_sub):
    pub, sub = pub_sub
    r = result(3, table(equivalent_diameter_nm=[np.nan]))
    pub.frame_done(FrameRecord(3, "sim/3", "ok", 3.0, result=r))
    _, msg = recv(sub)
    assert msg["summary"]["d50"] is None
