"""Target-particle and frame-condition alerts from a TOML rules file (pure: no file I/O, no eval).

The rules file
--------------
::

    baseline_frames = 10        # optional, top level: frames that form the baseline (default 10)

    [[rules]]
    name = "large particles"
    severity = "warning"                         # info | warning | critical (default warning)
    particles.equivalent_diameter_nm = [15, 40]  # inclusive range over a particle-table column
    particles.roundness = {min = 0.7}            # one bound only: a {min = ..} / {max = ..} table
    particles.aspect_ratio = [1.0, inf]          # ... or TOML's inf / -inf in an array
    particles.touches_border = false             # boolean columns take true / false
    min_count = 1        # matching particles needed in one frame (default 1)
    for_frames = 2       # consecutive matching frames before it fires (debounce, default 1)
    clear_frames = 3     # consecutive non-matching frames before it can fire again (default 1)
    cooldown_s = 30      # seconds (acquisition time) between two firings (default 0)
    actions = ["banner", "sound", "snapshot", "publish"]   # default ["banner", "log", "publish"]

    [[rules]]
    name = "crowded"
    frame.coverage = [0.35, 1.0]                 # frame-level conditions
    frame.d50_change_vs_baseline = [0.2, inf]    # relative change against the baseline
    for_frames = 3

    [[rules]]
    name = "call my script"
    particles.equivalent_diameter_nm = {min = 50}
    actions = ["log", "command"]
    command = ["python", "notify.py", "{rule}", "{seq}"]   # opt-in hook, no shell

    [[rules]]
    name = "fast growers"
    tracks.growth_rate_nm_per_s = [0.5, 10]      # track conditions (process.track summaries)
    tracks.frames_seen = {min = 10}
    min_count = 2                                # tracks that must match at once

    [[rules]]
    name = "sintering burst"
    events.kind = "coalescence"                  # coalescence | nucleation | dissolution | left_field
    events.count = [3, inf]                      # events of that kind ...
    events.window_s = 60                         # ... in the last 60 s (acquisition time)

Semantics
---------
* A particle matches a rule when it satisfies **every** ``particles.*`` range (bounds inclusive).
  Particles cut by the image edge or a masked banner (``touches_border``) never match unless the
  rule names ``particles.touches_border`` itself: their measured size is not their size.
  A frame matches when every ``frame.*`` range holds and, if the rule has particle conditions (or
  sets ``min_count``), at least ``min_count`` particles match. A NaN value never matches.
* ``frame.<field>`` fields: ``count``, ``coverage`` and the diameter statistics of
  :class:`~emstream.results.FrameSummary` (``mean_diameter``, ``std_diameter``, ``d10``, ``d50``,
  ``d90``, ``min_diameter``, ``max_diameter``), ``lag_s``, and ``<field>_change_vs_baseline`` for
  each of them: ``(value - baseline) / baseline`` where the baseline is the median of the field over
  the first ``baseline_frames`` frames. Until the baseline exists a change condition does not match.
* The state machine per rule: it **fires** on a matching frame when the last ``for_frames`` frames
  all matched, the rule is *armed*, and at least ``cooldown_s`` seconds (frame acquisition time,
  ``Frame.t_acq``, so replays and tests are deterministic) have passed since it last fired. Firing
  disarms the rule; ``clear_frames`` consecutive non-matching frames re-arm it. A rule that is armed
  and still matching while in cool-down fires on the first matching frame after the cool-down.
* ``tracks.<field>`` (``TRACK_FIELDS``: ``growth_rate_nm_per_s``, ``mean_speed_nm_per_s``,
  ``d_start_nm``, ``d_end_nm``, ``frames_seen``, ``duration_s``) are checked on the track
  summaries the tracker gives on a frame: every track that ends, and every track still going
  each ``TrackSettings.summary_every`` frames (50 by default). The frame matches when at least
  ``min_count`` of them satisfy every range.
* ``events.kind`` with ``events.count`` (default ``[1, inf]``) and ``events.window_s`` (default
  0: the events the frame brought): the frame matches when the number of tracking events of that
  kind dated within the window before the frame is in the range.
* Frames that cannot be trusted (``process.quality``: out of focus, beam off, saturated ...;
  every state but ``ok`` and ``moved``) are left out: a rule neither fires nor clears on them,
  and they do not enter the baseline — unless the rule names ``frame.state = [...]``, which then
  fires on frames in those states only. The quality figures are ``frame.<name>`` ranges too
  (``focus_ratio``, ``dose``, ``dose_ratio``, ``saturated_share``, ``anisotropy``,
  ``drift_step_px`` ...).
* A rule has conditions of one family: particles/frame, tracks, or events. All rules share the
  ``for_frames`` / ``clear_frames`` / ``cooldown_s`` state machine.
* Units: columns ending in ``_nm`` / ``_nm2`` and frame diameter statistics are in nm only on
  calibrated frames. On an uncalibrated frame a rule that uses such a field does **not** match (and
  that is logged once per rule), unless the rule says ``uncalibrated = "pixels"``, in which case the
  same numbers are compared with the pixel measurements.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emstream.errors import ConfigError
from emstream.process.quality import QUALITY_FIELDS, STATES, TRUSTED_STATES
from emstream.results import PARTICLE_COLUMNS, Alert, FrameResult, ParticleTable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

__all__ = [
    "ACTIONS",
    "FRAME_FIELDS",
    "TRACK_FIELDS",
    "Range",
    "Rule",
    "RuleEngine",
    "RuleMatch",
    "RuleSet",
    "snapshot_name",
]

log = logging.getLogger(__name__)

#: Actions a rule may request. ``banner``/``sound`` are the GUI's, ``snapshot``/``log``/``command``
#: the actions sink's, ``publish`` the ZeroMQ publisher's.
ACTIONS = ("banner", "sound", "snapshot", "publish", "log", "command")
DEFAULT_ACTIONS = ("banner", "log", "publish")
SEVERITIES = ("info", "warning", "critical")

_SUMMARY_FIELDS = (
    "count",
    "coverage",
    "mean_diameter",
    "std_diameter",
    "d10",
    "d50",
    "d90",
    "min_diameter",
    "max_diameter",
)
#: Frame fields that are lengths (nm when calibrated, px otherwise).
_LENGTH_FRAME_FIELDS = frozenset(_SUMMARY_FIELDS[2:])
_CHANGE_SUFFIX = "_change_vs_baseline"
#: Every ``frame.<field>`` a rule may use.
FRAME_FIELDS: tuple[str, ...] = (
    *_SUMMARY_FIELDS,
    "lag_s",
    *(f"{f}{_CHANGE_SUFFIX}" for f in _SUMMARY_FIELDS),
    *QUALITY_FIELDS,
)

#: Every ``tracks.<field>`` a rule may use -> the ``TrackSummary`` attribute it reads
#: (``duration_s``: ``t_last - t_first``).
TRACK_FIELDS: dict[str, str] = {
    "growth_rate_nm_per_s": "growth_rate",
    "mean_speed_nm_per_s": "mean_speed",
    "d_start_nm": "d_start",
    "d_end_nm": "d_end",
    "frames_seen": "frames_seen",
    "duration_s": "duration_s",
}
#: Tracking event kinds an ``events.kind`` condition may name (``process.track.EVENT_KINDS``).
EVENT_KINDS = ("coalescence", "nucleation", "dissolution", "left_field")

_RULE_KEYS = (
    "name",
    "severity",
    "particles",
    "frame",
    "tracks",
    "events",
    "min_count",
    "for_frames",
    "clear_frames",
    "cooldown_s",
    "actions",
    "command",
    "uncalibrated",
    "enabled",
)
_TOP_KEYS = ("rules", "baseline_frames", "version")


@dataclass(frozen=True)
class Range:
    """An inclusive range; ``-inf`` / ``inf`` for an omitted bound."""

    lo: float = -math.inf
    hi: float = math.inf

    def contains(self, values: np.ndarray | float) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return (v >= self.lo) & (v <= self.hi)  # NaN compares False: never matches

    def __str__(self) -> str:
        if math.isinf(self.lo) and math.isinf(self.hi):
            return "any"
        if math.isinf(self.hi):
            return f"≥ {self.lo:g}"
        if math.isinf(self.lo):
            return f"≤ {self.hi:g}"
        if self.lo == self.hi:
            return f"= {self.lo:g}"
        return f"{self.lo:g}–{self.hi:g}"


@dataclass(frozen=True)
class Rule:
    """One validated ``[[rules]]`` entry (see the module docstring for the meaning of each field)."""

    name: str
    severity: str = "warning"
    particles: Mapping[str, Range] = field(default_factory=dict)
    frame: Mapping[str, Range] = field(default_factory=dict)
    min_count: int = 1
    count_gate: bool = True  # False: a frame-only rule without an explicit min_count
    for_frames: int = 1
    clear_frames: int = 1
    cooldown_s: float = 0.0
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    command: tuple[str, ...] | None = None
    uncalibrated: str = "skip"  # "skip" | "pixels"
    enabled: bool = True
    line: int = 0  # line of the rule's [[rules]] header in its file
    tracks: Mapping[str, Range] = field(default_factory=dict)
    states: tuple[str, ...] = ()  # frame.state: fires on frames in these states only
    event_kind: str | None = None
    event_count: Range = Range(1.0, math.inf)
    event_window_s: float = 0.0

    @property
    def on_tracks(self) -> bool:
        """Evaluated on tracking output (``RuleEngine.evaluate_tracks``), not on the frame."""
        return bool(self.tracks) or self.event_kind is not None

    @property
    def uses_lengths(self) -> bool:
        """True when a condition is a length whose unit depends on the calibration."""
        return (any(_is_length_column(c) for c in self.particles)
                or any(f in _LENGTH_FRAME_FIELDS for f in self.frame)
                or any(f != "frames_seen" and f != "duration_s" for f in self.tracks))

    def describe(self) -> str:
        parts = [f"{c} {r}" for c, r in self.particles.items()]
        parts += [f"frame.{f} {r}" for f, r in self.frame.items()]
        if self.states:
            parts.append(f"frame state {' or '.join(self.states)}")
        parts += [f"tracks.{f} {r}" for f, r in self.tracks.items()]
        if self.event_kind:
            window = f" in {self.event_window_s:g} s" if self.event_window_s else ""
            parts.append(f"{self.event_kind} events {self.event_count}{window}")
        return ", ".join(parts)


def _is_length_column(column: str) -> bool:
    return column.endswith("_nm") or column.endswith("_nm2")


@dataclass
class RuleSet:
    """A validated list of rules (``RuleSet.from_toml_text``)."""

    rules: list[Rule]
    baseline_frames: int = 10
    filename: str = "rules.toml"

    def __iter__(self):
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, name: str) -> Rule | None:
        for r in self.rules:
            if r.name == name:
                return r
        return None

    @classmethod
    def from_toml_text(cls, text: str, filename: str = "rules.toml") -> RuleSet:
        """Parse and validate a rules file's text.

        Raises
        ------
        ConfigError
            naming ``filename``, the line and the field, e.g.
            ``rules.toml:7: rules[1] ("crowded").frame.d5O: unknown frame field ...``.
        """
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\(at line (\d+), column \d+\)", msg)
            if m:
                line = int(m.group(1))
            elif "end of document" in msg:
                line = max(1, len(text.splitlines()))
            else:
                line = 0
            where = f"{filename}:{line}" if line else filename
            raise ConfigError(f"{where}: TOML syntax error: {msg}") from None
        return _Validator(text, filename).ruleset(doc)


# --------------------------------------------------------------------------------------------
# validation


class _Validator:
    def __init__(self, text: str, filename: str) -> None:
        self.lines = text.splitlines()
        self.filename = filename
        self._blocks = self._rule_blocks()

    # -- locating lines ----------------------------------------------------------------------
    def _rule_blocks(self) -> list[tuple[int, int]]:
        """(first, last) 0-based line indices of each ``[[rules]]`` block, in order."""
        header = re.compile(r"^\s*\[")
        starts: list[int] = []
        ends: list[int] = []
        for i, ln in enumerate(self.lines):
            s = ln.strip()
            if re.match(r"^\[\[\s*rules\s*\]\]", s):
                if starts and len(ends) < len(starts):
                    ends.append(i - 1)
                starts.append(i)
            elif header.match(ln) and not re.match(r"^\[\s*rules\s*\.", s):
                if starts and len(ends) < len(starts):
                    ends.append(i - 1)
        while len(ends) < len(starts):
            ends.append(len(self.lines) - 1)
        return list(zip(starts, ends, strict=True))

    def line_of(self, index: int | None, *path: str) -> int:
        """1-based line where ``path`` (keys, last one the leaf) is set, best effort."""
        if index is None:
            lo, hi = 0, (self._blocks[0][0] - 1 if self._blocks else len(self.lines) - 1)
        elif index < len(self._blocks):
            lo, hi = self._blocks[index]
        else:
            return 0
        if path:
            leaf = re.escape(path[-1])
            pat = re.compile(rf'(^|[\s.{{,"\']){leaf}["\']?\s*=')
            for i in range(lo, hi + 1):
                code = self.lines[i].split("#", 1)[0]
                if pat.search(code):
                    return i + 1
        return lo + 1 if index is not None else 0

    def error(self, index: int | None, path: tuple[str, ...], message: str) -> ConfigError:
        line = self.line_of(index, *path)
        where = f"{self.filename}:{line}" if line else self.filename
        if index is None:
            fld = ".".join(path) or "(file)"
        else:
            fld = f"rules[{index}]" + (f" ({self._name})" if self._name else "")
            fld += "".join(f".{p}" for p in path)
        return ConfigError(f"{where}: {fld}: {message}")

    _name = ""

    # -- the document --------------------------------------------------------------------------
    def ruleset(self, doc: dict[str, Any]) -> RuleSet:
        for key in doc:
            if key not in _TOP_KEYS:
                raise self.error(None, (key,), f"unknown top-level key{_suggest(key, _TOP_KEYS)}")
        baseline = doc.get("baseline_frames", 10)
        if not _is_int(baseline) or baseline < 1:
            raise self.error(None, ("baseline_frames",), "must be an integer ≥ 1")
        version = doc.get("version", 1)
        if version != 1:
            raise self.error(None, ("version",), f"unsupported rules file version {version!r} (1)")
        raw_rules = doc.get("rules", [])
        if not isinstance(raw_rules, list):
            raise self.error(None, ("rules",), "must be an array of tables: use [[rules]]")
        rules: list[Rule] = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_rules):
            self._name = ""
            if not isinstance(raw, dict):
                raise self.error(i, (), "each rule must be a table: use [[rules]]")
            rule = self.rule(i, raw)
            if rule.name in seen:
                raise self.error(i, ("name",), f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
            rules.append(rule)
        self._name = ""
        return RuleSet(rules, baseline_frames=int(baseline), filename=self.filename)

    def rule(self, i: int, raw: dict[str, Any]) -> Rule:
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.error(i, ("name",), "every rule needs a non-empty name (a string)")
        self._name = repr(name)
        for key in raw:
            if key not in _RULE_KEYS:
                raise self.error(i, (key,), f"unknown rule key{_suggest(key, _RULE_KEYS)}")
        severity = raw.get("severity", "warning")
        if severity not in SEVERITIES:
            raise self.error(
                i, ("severity",), f"must be one of {', '.join(SEVERITIES)}, got {severity!r}"
            )

        particles: dict[str, Range] = {}
        raw_p = raw.get("particles", {})
        if not isinstance(raw_p, dict):
            raise self.error(i, ("particles",), "must be a table of column = [lo, hi]")
        for col, spec in raw_p.items():
            if col not in PARTICLE_COLUMNS:
                raise self.error(
                    i,
                    ("particles", col),
                    f"unknown particle column{_suggest(col, PARTICLE_COLUMNS)}",
                )
            if PARTICLE_COLUMNS[col][0] == "bool" and isinstance(spec, bool):
                particles[col] = Range(float(spec), float(spec))
            else:
                particles[col] = self.range(i, ("particles", col), spec)

        frame: dict[str, Range] = {}
        raw_f = raw.get("frame", {})
        if not isinstance(raw_f, dict):
            raise self.error(i, ("frame",), "must be a table of field = [lo, hi]")
        states: tuple[str, ...] = ()
        for fname, spec in raw_f.items():
            key = fname.lower()
            if key == "state":
                spec = [spec] if isinstance(spec, str) else spec
                if not isinstance(spec, list) or not spec or not all(
                        isinstance(x, str) and x in STATES for x in spec):
                    raise self.error(i, ("frame", fname),
                                     f"must be a state or a list of them ({', '.join(STATES)})")
                states = tuple(spec)
                continue
            if key not in FRAME_FIELDS:
                raise self.error(
                    i, ("frame", fname), f"unknown frame field{_suggest(key, FRAME_FIELDS)}"
                )
            frame[key] = self.range(i, ("frame", fname), spec)

        tracks: dict[str, Range] = {}
        raw_t = raw.get("tracks", {})
        if not isinstance(raw_t, dict):
            raise self.error(i, ("tracks",), "must be a table of field = [lo, hi]")
        for fname, spec in raw_t.items():
            if fname not in TRACK_FIELDS:
                raise self.error(i, ("tracks", fname),
                                 f"unknown track field{_suggest(fname, TRACK_FIELDS)}")
            tracks[fname] = self.range(i, ("tracks", fname), spec)
        raw_e = raw.get("events", {})
        if not isinstance(raw_e, dict):
            raise self.error(i, ("events",), 'must be a table: events.kind = "coalescence"')
        for key in raw_e:
            if key not in ("kind", "count", "window_s"):
                raise self.error(i, ("events", key),
                                 f"unknown events key{_suggest(key, ('kind', 'count', 'window_s'))}")
        event_kind = raw_e.get("kind")
        if raw_e and event_kind not in EVENT_KINDS:
            raise self.error(i, ("events", "kind"),
                             f"must be one of {', '.join(EVENT_KINDS)}, got {event_kind!r}")
        event_count = (self.range(i, ("events", "count"), raw_e["count"]) if "count" in raw_e
                       else Range(1.0, math.inf))
        window = raw_e.get("window_s", 0.0)
        if not _is_number(window) or not 0 <= window < math.inf:
            raise self.error(i, ("events", "window_s"),
                             f"must be a number of seconds ≥ 0, got {window!r}")
        families = [n for n, v in (("particles/frame", particles or frame or states),
                                   ("tracks", tracks),
                                   ("events", raw_e)) if v]
        if not families:
            raise self.error(i, (), "a rule needs at least one particles.*, frame.*, tracks.* "
                                    "or events.* condition")
        if len(families) > 1:
            raise self.error(i, (), f"a rule has conditions of one family, not {' and '.join(families)}"
                                    ": split it into two rules")

        def positive_int(key: str, default: int, minimum: int = 1) -> int:
            v = raw.get(key, default)
            if not _is_int(v) or v < minimum:
                raise self.error(i, (key,), f"must be an integer ≥ {minimum}, got {v!r}")
            return int(v)

        min_count = positive_int("min_count", 1)
        for_frames = positive_int("for_frames", 1)
        clear_frames = positive_int("clear_frames", 1)
        cooldown = raw.get("cooldown_s", 0.0)
        if not _is_number(cooldown) or not (0 <= cooldown < math.inf):
            raise self.error(
                i, ("cooldown_s",), f"must be a number of seconds ≥ 0, got {cooldown!r}"
            )

        actions = raw.get("actions", list(DEFAULT_ACTIONS))
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise self.error(i, ("actions",), "must be an array of strings")
        for a in actions:
            if a not in ACTIONS:
                raise self.error(i, ("actions",), f"unknown action{_suggest(a, ACTIONS)}")
        command = raw.get("command")
        if command is not None:
            if (
                not isinstance(command, list)
                or not command
                or not all(isinstance(c, str) and c for c in command)
            ):
                raise self.error(
                    i, ("command",), 'must be a non-empty array of strings, e.g. ["prog", "{seq}"]'
                )
            if "command" not in actions:
                raise self.error(
                    i, ("command",), 'a command runs only when opted in: add "command" to actions'
                )
        elif "command" in actions:
            raise self.error(
                i, ("actions",), '"command" action needs command = ["prog", "arg", ...]'
            )

        uncal = raw.get("uncalibrated", "skip")
        if uncal not in ("skip", "pixels"):
            raise self.error(i, ("uncalibrated",), f'must be "skip" or "pixels", got {uncal!r}')
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise self.error(i, ("enabled",), "must be true or false")

        return Rule(
            name=name.strip(),
            severity=severity,
            particles=particles,
            frame=frame,
            min_count=min_count,
            count_gate=bool(particles) or "min_count" in raw,
            for_frames=for_frames,
            clear_frames=clear_frames,
            cooldown_s=float(cooldown),
            actions=tuple(dict.fromkeys(actions)),
            command=tuple(command) if command else None,
            uncalibrated=uncal,
            enabled=enabled,
            line=self.line_of(i),
            tracks=tracks,
            states=states,
            event_kind=event_kind,
            event_count=event_count,
            event_window_s=float(window),
        )

    def range(self, i: int, path: tuple[str, ...], spec: Any) -> Range:
        usage = "expected [lo, hi] (inf / -inf for an open end) or {min = lo} / {max = hi}"
        if isinstance(spec, list):
            if len(spec) != 2 or not all(_is_number(v) for v in spec):
                raise self.error(i, path, f"{usage}, got {spec!r}")
            lo, hi = float(spec[0]), float(spec[1])
        elif isinstance(spec, dict):
            extra = set(spec) - {"min", "max"}
            if extra or not spec:
                raise self.error(i, path, f"{usage}, got {spec!r}")
            if not all(_is_number(v) for v in spec.values()):
                raise self.error(i, path, f"bounds must be numbers, got {spec!r}")
            lo = float(spec.get("min", -math.inf))
            hi = float(spec.get("max", math.inf))
        else:
            raise self.error(i, path, f"{usage}, got {spec!r}")
        if math.isnan(lo) or math.isnan(hi):
            raise self.error(i, path, "nan is not a bound: leave it out or use inf / -inf")
        if lo > hi:
            raise self.error(i, path, f"lower bound {lo:g} is above upper bound {hi:g}")
        return Range(lo, hi)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" {word!r}; did you mean {close[0]!r}?" if close else f" {word!r}"


# --------------------------------------------------------------------------------------------
# evaluation


@dataclass
class RuleMatch:
    """How one rule saw the latest frame (``RuleEngine.last[name]``)."""

    matched: bool
    particle_mask: np.ndarray  # bool per particle: satisfies the rule's particle conditions
    count: int  # matching particles
    skipped: str = ""  # why the rule could not be evaluated on this frame ("uncalibrated", ...)


@dataclass
class _RuleState:
    run: int = 0  # consecutive matching frames
    clear_run: int = 0  # consecutive non-matching frames since the last firing
    armed: bool = True
    last_fired_t: float | None = None
    fired: int = 0
    warned_uncalibrated: bool = False


class RuleEngine:
    """Evaluates a :class:`RuleSet` frame by frame; one state machine per rule.

    Not thread-safe: the pipeline calls it from one thread.
    """

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._state: dict[str, _RuleState] = {r.name: _RuleState() for r in ruleset}
        self._baseline_values: dict[str, list[float]] = {f: [] for f in _SUMMARY_FIELDS}
        self._baseline_unit: str | None = None
        self._baseline_n = 0
        #: ``{rule name: RuleMatch}`` for the most recent frame.
        self.last: dict[str, RuleMatch] = {}
        #: Human notes worth showing once (e.g. a rule skipped on uncalibrated frames).
        self.notes: list[str] = []
        self._event_times: list[tuple[float, str]] = []  # (t_acq, kind) of recent events

    @property
    def rules(self) -> list[Rule]:
        return self.ruleset.rules

    def state(self, name: str) -> dict[str, Any]:
        """A copy of one rule's state: ``run``, ``clear_run``, ``armed``, ``last_fired_t``, ``fired``."""
        s = self._state[name]
        return {
            "run": s.run,
            "clear_run": s.clear_run,
            "armed": s.armed,
            "last_fired_t": s.last_fired_t,
            "fired": s.fired,
        }

    def adopt_state(self, other: RuleEngine) -> None:
        """Carry rule state (by rule name) and the baseline over from an engine being replaced,
        so reloading an edited rules file does not re-fire rules that were already firing."""
        for name, st in other._state.items():
            if name in self._state:
                self._state[name] = st
        self._baseline_values = other._baseline_values
        self._baseline_unit = other._baseline_unit
        self._baseline_n = other._baseline_n
        self._event_times = other._event_times

    # -- per-particle ------------------------------------------------------------------------
    def particle_mask(self, rule: Rule, particles: ParticleTable, unit: str = "nm") -> np.ndarray:
        """Bool per particle: satisfies every particle condition of ``rule`` (all True if none)."""
        n = _n_rows(particles)
        if (
            unit != "nm"
            and rule.uncalibrated == "skip"
            and any(_is_length_column(c) for c in rule.particles)
        ):
            return np.zeros(n, dtype=bool)
        mask = np.ones(n, dtype=bool)
        if "touches_border" not in rule.particles:  # cut by the edge: size unknown, not a target
            cut = particles.get("touches_border")
            if cut is not None and len(cut) == n:
                mask &= ~np.asarray(cut, bool)
        for col, rng in rule.particles.items():
            values = particles.get(col)
            if values is None:
                return np.zeros(n, dtype=bool)
            mask &= rng.contains(values)
        return mask

    def matching(self, particles: ParticleTable, unit: str = "nm") -> np.ndarray:
        """Bool per particle: matches the particle conditions of **any** enabled particle rule.

        For overlays and snapshots. ``unit`` is the frame's length unit (``FrameResult.unit``).
        """
        n = _n_rows(particles)
        out = np.zeros(n, dtype=bool)
        for rule in self.rules:
            if rule.enabled and rule.particles:
                out |= self.particle_mask(rule, particles, unit)
        return out

    # -- per-frame ---------------------------------------------------------------------------
    def _frame_values(self, result: FrameResult) -> dict[str, float]:
        s = result.summary
        values = {f: _as_float(getattr(s, f, math.nan)) for f in _SUMMARY_FIELDS}
        values["lag_s"] = _as_float(result.lag_s)
        quality = getattr(result, "quality", None) or {}
        for f in QUALITY_FIELDS:
            values[f] = _as_float(quality.get(f, math.nan))
        unit = result.unit
        base_ready = (
            self._baseline_n >= self.ruleset.baseline_frames and self._baseline_unit == unit
        )
        for f in _SUMMARY_FIELDS:
            change = math.nan
            if base_ready:
                vals = [v for v in self._baseline_values[f] if math.isfinite(v)]
                if vals:
                    b = float(np.median(vals))
                    if b != 0 and math.isfinite(values[f]):
                        change = (values[f] - b) / abs(b)
            values[f + _CHANGE_SUFFIX] = change
        return values

    def _update_baseline(self, result: FrameResult, values: Mapping[str, float]) -> None:
        if self._baseline_n >= self.ruleset.baseline_frames:
            return
        if self._baseline_unit is None:
            self._baseline_unit = result.unit
        elif self._baseline_unit != result.unit:
            return  # calibration appeared/vanished while collecting: keep the first unit only
        for f in _SUMMARY_FIELDS:
            self._baseline_values[f].append(values[f])
        self._baseline_n += 1

    def match(self, rule: Rule, result: FrameResult, values: Mapping[str, float]) -> RuleMatch:
        """Does ``result`` satisfy ``rule``'s conditions (ignoring debounce and hysteresis)?"""
        n = _n_rows(result.particles)
        if result.unit != "nm" and rule.uncalibrated == "skip" and rule.uses_lengths:
            st = self._state[rule.name]
            if not st.warned_uncalibrated:
                st.warned_uncalibrated = True
                note = (
                    f"rule {rule.name!r} uses lengths in nm but frame {result.seq} is uncalibrated: "
                    'the rule does not fire on uncalibrated frames (set uncalibrated = "pixels" to '
                    "compare in pixels)"
                )
                self.notes.append(note)
                log.warning(note)
            return RuleMatch(False, np.zeros(n, dtype=bool), 0, skipped="uncalibrated")
        mask = self.particle_mask(rule, result.particles, result.unit)
        count = int(mask.sum())
        ok = all(bool(rng.contains(values[f])) for f, rng in rule.frame.items())
        if rule.count_gate:
            ok = ok and count >= rule.min_count
        return RuleMatch(ok, mask, count)

    def evaluate(self, result: FrameResult) -> list[Alert]:
        """Advance every rule by one frame; return the alerts that fire on it."""
        values = self._frame_values(result)
        t = _as_float(result.frame.t_acq)
        alerts: list[Alert] = []
        self.last = {}
        state = getattr(result, "state", "ok") or "ok"
        trusted = getattr(result, "is_trusted", state in TRUSTED_STATES)
        for rule in self.rules:
            if not rule.enabled or rule.on_tracks:
                continue
            if not rule.states and not trusted:
                continue  # an untrusted frame (defocused, beam off ...) neither fires nor clears
            m = self.match(rule, result, values)
            if rule.states and state not in rule.states:
                m = RuleMatch(False, m.particle_mask, m.count)
            self.last[rule.name] = m
            if self._step(rule, m.matched, t):
                alerts.append(self._alert(rule, result, m, values, t))
        if trusted:
            self._update_baseline(result, values)
        return alerts

    # -- tracks and events ---------------------------------------------------------------------
    def evaluate_tracks(self, result: FrameResult, events: Iterable[Any],
                        summaries: Iterable[Any]) -> list[Alert]:
        """Advance every tracks/events rule by one frame: ``events`` are the tracking events the
        frame brought (``results.Event``, ``data["seq"]`` their frame), ``summaries`` the track
        summaries (``process.track.TrackSummary``)."""
        rules = [r for r in self.rules if r.enabled and r.on_tracks]
        if not rules:
            return []
        t = _as_float(result.frame.t_acq)
        events = list(events)
        summaries = list(summaries)
        window = max((r.event_window_s for r in rules if r.event_kind), default=0.0)
        for ev in events:
            self._event_times.append((t, ev.kind))
        while self._event_times and self._event_times[0][0] < t - window:
            self._event_times.pop(0)
        alerts = []
        for rule in rules:
            if rule.event_kind:
                n = sum(1 for te, k in self._event_times if k == rule.event_kind
                        and (te >= t - rule.event_window_s if rule.event_window_s else te == t))
                ok = bool(rule.event_count.contains(n))
                what = f"{n} {rule.event_kind} event{'s' if n != 1 else ''}" + (
                    f" in {rule.event_window_s:g} s" if rule.event_window_s else "")
                ids = sorted({i for ev in events if ev.kind == rule.event_kind
                              for i in ev.data.get("tracks", [])})
            else:
                if result.unit != "nm" and rule.uncalibrated == "skip" and rule.uses_lengths:
                    ok, ids, what = False, [], ""
                else:
                    hits = [s for s in summaries if all(
                        bool(rng.contains(_track_value(s, f))) for f, rng in rule.tracks.items())]
                    ok = len(hits) >= rule.min_count
                    ids = [int(s.track_id) for s in hits]
                    what = f"{len(hits)} track{'s' if len(hits) != 1 else ''} with " + ", ".join(
                        f"{human(f)} {r}" for f, r in rule.tracks.items()) + (
                        f" ({result.unit})" if rule.uses_lengths else "")
            if self._step(rule, ok, t):
                shown = ", ".join(f"#{i}" for i in ids[:12]) + (" …" if len(ids) > 12 else "")
                alerts.append(Alert(
                    rule=rule.name, severity=rule.severity,  # type: ignore[arg-type]
                    seq=result.seq, t=t, actions=list(rule.actions),
                    message=f"{rule.name}: {what}" + (f" (tracks {shown})" if ids else "")
                    + f" (frame {result.seq})",
                    snapshot=snapshot_name(result.seq, rule.name) if "snapshot" in rule.actions
                    else None))
        return alerts

    def _step(self, rule: Rule, matched: bool, t: float) -> bool:
        st = self._state[rule.name]
        if not matched:
            st.run = 0
            st.clear_run += 1
            if not st.armed and st.clear_run >= rule.clear_frames:
                st.armed = True
            return False
        st.run += 1
        st.clear_run = 0
        cooled = st.last_fired_t is None or (t - st.last_fired_t) >= rule.cooldown_s
        if st.armed and st.run >= rule.for_frames and cooled:
            st.armed = False
            st.last_fired_t = t
            st.fired += 1
            return True
        return False

    def _alert(
        self, rule: Rule, result: FrameResult, m: RuleMatch, values: Mapping[str, float], t: float
    ) -> Alert:
        unit = result.unit
        bits: list[str] = []
        if rule.particles:
            conds = ", ".join(f"{human(c)} {r}" for c, r in rule.particles.items())
            in_unit = f" ({unit})" if any(_is_length_column(c) for c in rule.particles) else ""
            bits.append(f"{m.count} particle{'s' if m.count != 1 else ''} with {conds}{in_unit}")
        for f in rule.frame:
            v = values[f]
            bits.append(f"{f} = {v:.3g}" if math.isfinite(v) else f"{f} = n/a")
        if rule.for_frames > 1:
            bits.append(f"for {rule.for_frames} frames")
        labels = result.particles.get("label")
        picked = (
            [int(x) for x in labels[m.particle_mask]]
            if labels is not None and rule.particles
            else []
        )
        alert = Alert(
            rule=rule.name,
            severity=rule.severity,  # type: ignore[arg-type]
            seq=result.seq,
            message=f"{rule.name}: " + ", ".join(bits) + f" (frame {result.seq})",
            t=t,
            particle_labels=picked,
            actions=list(rule.actions),
        )
        if "snapshot" in rule.actions:
            alert.snapshot = snapshot_name(result.seq, rule.name)
        return alert


def snapshot_name(seq: int | None, rule: str) -> str:
    """The snapshot PNG of an alert, relative to the session folder (deterministic, safe).

    ``snapshots/alert_<seq>_<rule>.png`` with the rule name reduced to ``[A-Za-z0-9_-]``. The rule
    engine sets it as ``alert.snapshot`` when the rule asks for a snapshot, so the ledger (which
    records it in ``alerts.snapshot``), the actions sink (which writes the PNG) and the report
    agree on the file without talking to each other.
    """
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", rule).strip("_")[:60] or "rule"
    s = f"{seq:06d}" if seq is not None else "none"
    return f"snapshots/alert_{s}_{slug}.png"


def human(name: str) -> str:
    """A column or field name in words for operator-facing text: ``equivalent_diameter_nm`` ->
    ``equivalent diameter``, ``growth_rate_nm_per_s`` -> ``growth rate`` (the unit is said
    once, after the conditions)."""
    for suffix in ("_nm_per_s", "_nm2", "_nm", "_deg", "_s"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("_", " ")


def _track_value(summary: Any, field_name: str) -> float:
    if field_name == "duration_s":
        return _as_float(summary.t_last - summary.t_first)
    return _as_float(getattr(summary, TRACK_FIELDS[field_name]))


def _n_rows(particles: ParticleTable) -> int:
    for v in particles.values():
        return len(v)
    return 0


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
