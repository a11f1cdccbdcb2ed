"""Session folders, config.json and the terminal views used by the CLI."""

from __future__ import annotations

import io
import json

from rich.console import Console

from emstream.config import new_session_dir, read_config, versions, write_config
from emstream.console import LiveView, stats_table, summary_table
from emstream.pipeline import PipelineStats


def test_new_session_dirs_are_unique_and_reused_when_named(tmp_path):
    a = new_session_dir(root=tmp_path)
    b = new_session_dir(root=tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    named = new_session_dir(tmp_path / "run3")
    assert new_session_dir(tmp_path / "run3") == named


def test_config_records_versions_and_keeps_earlier_runs(tmp_path):
    write_config(tmp_path, {"command": "watch", "pixel_size": None, "path": tmp_path})
    write_config(tmp_path, {"command": "watch", "pixel_size": 0.5})
    cfg = read_config(tmp_path)
    assert cfg["pixel_size"] == 0.5
    assert [r["pixel_size"] for r in cfg["runs"]] == [None]
    assert json.loads((tmp_path / "config.json").read_text())["runs"][0]["path"] == str(tmp_path)
    v = versions()
    assert v["emstream"] and v["numpy"] and v["python"]


def _stats() -> PipelineStats:
    return PipelineStats(frames_in=12, processed=10, quarantined=1, skipped=1, fps=2.5, lag_s=0.4,
                         backend="classical", source="folder /x", particles=42, d50=7.25, unit="nm",
                         timings_ms={"prepare": 10.0, "segment": 90.0}, alerts=3)


def _render(renderable) -> str:
    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=False, color_system=None).print(renderable)
    return buf.getvalue()


def test_live_table_and_summary_show_the_figures():
    text = _render(stats_table(_stats()))
    for want in ("processed 10", "quarantined 1", "skipped 1", "2.50 frames/s", "0.40 s",
                 "D50 7.2 nm", "segment 90", "classical"):
        assert want in text, want
    text = _render(summary_table(_stats(), session_dir="S", counts={"ok": 10, "quarantined": 1}))
    assert "S" in text and "10" in text and "alerts" in text


def test_live_table_calls_a_negative_lag_a_clock_offset():
    assert "ahead" not in _render(stats_table(_stats()))
    st = _stats()
    st.lag_s = -5.08
    assert "-5.08 s  (acquisition clock ahead of this computer's)" in _render(stats_table(st))


def test_live_view_is_silent_off_terminal_and_renders_when_forced():
    buf = io.StringIO()
    with LiveView(_stats, console=Console(file=buf, force_terminal=False)):
        pass
    assert buf.getvalue() == ""
    buf = io.StringIO()
    with LiveView(_stats, console=Console(file=buf, force_terminal=True, width=120), force=True):
        pass
    assert "frames" in buf.getvalue()
