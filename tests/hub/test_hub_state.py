"""The hub's state from published messages: applied, rejected and counted, never raising."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from emstream.hub.state import FacilityState
from emstream.hub.web import render_fragment


def _msg(kind: str, **body) -> list[bytes]:
    return [kind.encode(), json.dumps({"schema": "emstream.publish", "v": 1, "type": kind,
                                       **body}).encode()]


def test_frames_alerts_and_liveness():
    s = FacilityState({"tem1": "tcp://127.0.0.1:1", "tem2": "tcp://127.0.0.1:2"}, alive_s=5)
    assert s.receive("tem1", _msg("session", state="open", source="folder /d", backend="x"), 100)
    for k in range(5):
        assert s.receive("tem1", _msg("frame", seq=k, source=f"/d/f{k}.tif", status="ok",
                                      unit="nm", t_acq=100 + k, state="ok", trusted=True,
                                      summary={"count": 10 + k, "d50": 5.0 + k}), 100 + k)
    s.receive("tem1", _msg("frame", seq=5, source="/d/f5.tif", status="ok", t_acq=105,
                           state="out_of_focus", trusted=False,
                           summary={"count": 3, "d50": 9.0}), 105)
    s.receive("tem1", _msg("frame", seq=6, source="/d/bad.tif", status="quarantined",
                           reason="bad", summary=None), 105)
    s.receive("tem1", _msg("alert", rule="big", severity="warning", message="2 big", t=105), 105)
    snap = s.snapshot(now=106)
    m1, m2 = snap["monitors"]
    assert m1["status"] == "alive" and m2["status"] == "waiting"
    assert (m1["processed"], m1["quarantined"], m1["not_ok"]) == (6, 1, 1)
    # the trend holds trusted frames only: the defocused frame's D50 is not on it
    assert [d for _, d in m1["d50_trend"]] == [5.0, 6.0, 7.0, 8.0, 9.0][:5]
    assert m1["alerts"][0]["rule"] == "big" and m1["last_frame"]["source"] == "bad.tif"
    assert s.snapshot(now=120)["monitors"][0]["status"] == "silent"
    s.receive("tem1", _msg("heartbeat", t=121), 121)  # it comes back
    assert s.snapshot(now=122)["monitors"][0]["status"] == "alive"
    s.receive("tem1", _msg("session", state="close"), 123)
    assert s.snapshot(now=124)["monitors"][0]["status"] == "ended"


def test_malformed_messages_are_rejected_and_counted():
    s = FacilityState({"tem1": "tcp://127.0.0.1:1"})
    bad = [
        [b"frame"],  # one part
        [b"frame", b"{not json"],
        [b"frame", json.dumps({"schema": "other", "v": 1, "type": "frame"}).encode()],
        [b"frame", json.dumps({"schema": "emstream.publish", "v": 2, "type": "frame"}).encode()],
        [b"alert", json.dumps({"schema": "emstream.publish", "v": 1, "type": "frame"}).encode()],
        [b"\xff", b"{}"],
        [b"frame", b"[1, 2]"],
        [b"frame", b" " * (2 << 20)],
    ]
    for parts in bad:
        assert s.receive("tem1", parts) is False
    assert s.receive("nobody", _msg("heartbeat", t=1)) is False
    snap = s.snapshot()
    assert snap["rejected"] == len(bad) + 1 and snap["monitors"][0]["status"] == "waiting"


@settings(max_examples=300, deadline=None)
@given(topic=st.binary(max_size=12), body=st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                      max_size=6),
                 max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_any_bytes_never_raise(topic, body):
    s = FacilityState({"m": "tcp://127.0.0.1:1"})
    s.receive("m", [topic, body])
    for kind in ("frame", "alert", "session", "heartbeat", "event"):
        try:
            obj = json.loads(body)
        except ValueError:
            continue
        if isinstance(obj, dict):
            s.receive("m", [kind.encode(), json.dumps(
                {**obj, "schema": "emstream.publish", "v": 1, "type": kind}).encode()])
    render_fragment(s.snapshot())  # and the page renders whatever arrived
