"""RulesFile: loads, reloads on change, keeps the old rules on a bad edit."""

from __future__ import annotations

import os

import pytest

from emstream.errors import ConfigError
from emstream.rules_file import RulesFile
from tests.process.test_rules_helpers import result

GOOD = '[[rules]]\nname = "many"\nframe.count = [5, inf]\n'


def _write(path, text, bump_ns):
    path.write_text(text)
    st = path.stat()
    os.utime(
        path, ns=(st.st_atime_ns, st.st_mtime_ns + bump_ns)
    )  # mtime changes even on coarse clocks


def test_load_reload_and_bad_edit(tmp_path, caplog):
    p = tmp_path / "rules.toml"
    _write(p, GOOD, 0)
    rf = RulesFile(p)
    assert [r.name for r in rf.ruleset] == ["many"]
    assert rf.maybe_reload() is False  # unchanged

    assert rf.engine.evaluate(result(0, count=6))
    engine_before = rf.engine
    # a valid edit: new rule, and the existing rule's state carries over (no re-fire)
    _write(p, GOOD + '[[rules]]\nname = "few"\nframe.count = [0, 1]\n', 10**9)
    assert rf.maybe_reload() is True and rf.reloads == 1 and rf.error == ""
    assert rf.engine is not engine_before
    assert [a.rule for a in rf.engine.evaluate(result(1, count=6))] == []

    # a bad edit keeps the old rules and reports where the error is
    _write(p, GOOD + '[[rules]]\nname = "few"\nframe.cont = [0, 1]\n', 2 * 10**9)
    with caplog.at_level("ERROR"):
        assert rf.maybe_reload() is False
    assert "rules.toml:6:" in rf.error and "frame.cont" in rf.error
    assert "keeping the previous 2 rule(s)" in caplog.text
    assert [r.name for r in rf.ruleset] == ["many", "few"]
    assert rf.maybe_reload() is False  # same bad content is not re-parsed and re-logged

    # fixed again
    _write(p, GOOD, 3 * 10**9)
    assert rf.maybe_reload() is True and rf.error == ""
    assert [r.name for r in rf.ruleset] == ["many"]


def test_touched_but_unchanged_is_not_a_reload(tmp_path):
    p = tmp_path / "r.toml"
    _write(p, GOOD, 0)
    rf = RulesFile(p)
    _write(p, GOOD, 5 * 10**9)
    assert rf.maybe_reload() is False and rf.reloads == 0


def test_deleted_file_keeps_rules(tmp_path):
    p = tmp_path / "r.toml"
    _write(p, GOOD, 0)
    rf = RulesFile(p)
    p.unlink()
    assert rf.maybe_reload() is False and "cannot read" in rf.error
    assert len(rf.ruleset) == 1


def test_bad_file_at_start_is_a_config_error(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[[rules]]\nname = "x"\nframe.count = [2, 1]\n')
    with pytest.raises(ConfigError, match=r"r\.toml:3: rules\[0\] \('x'\)\.frame\.count"):
        RulesFile(p)
    with pytest.raises(ConfigError, match="cannot read"):
        RulesFile(tmp_path / "missing.toml")
