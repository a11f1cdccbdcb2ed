"""Alert actions that happen on the acquisition PC: log, snapshot PNG, opt-in command hook.

(The GUI banner and sound are the GUI sink's; ``publish`` is the publisher's.)

* ``log``: the alert is logged (warning/critical at WARNING level, info at INFO) and appended as
  one line to ``SESSION/alerts.log``.
* ``snapshot``: the frame that triggered the alert is written as
  ``SESSION/snapshots/alert_<seq>_<rule>.png`` (name from
  :func:`emstream.process.rules.snapshot_name`, which the rule engine also stores as
  ``alert.snapshot`` so the ledger records it): the image contrast-stretched to 8 bit, every
  particle outlined thinly, the particles that match the rule outlined thickly in orange, a scale
  bar and a caption. Alerts and frames reach this sink in either order; a snapshot is written as
  soon as both are here.
* ``command``: the rule's ``command = ["prog", "arg", ...]`` is run without a shell, in the
  session folder, with ``{rule}``, ``{severity}``, ``{seq}``, ``{t}``, ``{message}``,
  ``{snapshot}`` (absolute path or empty) and ``{session}`` replaced literally in each argument.
  It runs in the background with a timeout; at most ``max_commands`` run at once (further
  alerts skip the hook and say so), so a hanging script never blocks the pipeline.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emstream.process.rules import snapshot_name
from emstream.results import Alert, FrameRecord, FrameResult
from emstream.sinks.base import Session, Sink, replace_atomically

__all__ = ["ActionsSink", "render_snapshot", "write_png_atomic"]

log = logging.getLogger(__name__)

_ORANGE = (0, 140, 255)  # BGR
_CYAN = (230, 200, 60)
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)


# ------------------------------------------------------------------------------------------------
# rendering


def _to_uint8(pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    a = np.asarray(pixels, dtype=np.float32)
    sample = a[valid] if valid is not None and valid.any() else a
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(a.shape, np.uint8)
    if sample.size > 1_000_000:
        sample = sample[:: sample.size // 1_000_000 + 1]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if not hi > lo:
        hi = lo + 1.0
    out = np.clip((np.nan_to_num(a, nan=lo) - lo) * (255.0 / (hi - lo)), 0, 255)
    return out.astype(np.uint8)


def _outline(labels: np.ndarray) -> np.ndarray:
    """Bool mask of particle pixels that have a differently-labelled 4-neighbour."""
    lab = labels
    edge = np.zeros(lab.shape, bool)
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    return edge & (lab > 0)


def _nice_length(target: float) -> float:
    """The 1-2-5 number closest below ``target``."""
    if not target > 0:
        return 0.0
    e = 10 ** math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * e <= target:
            return m * e
    return e


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float, thick: int) -> None:
    (tw, th), base = cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, thick + 2)
    pad = max(4, int(8 * scale))
    x, y = org
    y0, y1 = max(0, y - th - pad), min(img.shape[0], y + base + pad)
    x0, x1 = max(0, x - pad), min(img.shape[1], x + tw + pad)
    img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] * 0.35).astype(np.uint8)  # dark box behind the text
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, _BLACK, thick + 2, cv2.LINE_AA)
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, _WHITE, thick, cv2.LINE_AA)


def render_snapshot(
    result: FrameResult,
    highlight: list[int] | np.ndarray | None = None,
    *,
    caption: str = "",
    max_size: int = 2048,
) -> np.ndarray:
    """An 8-bit BGR image of the frame with particle outlines, highlights and a scale bar.

    Parameters
    ----------
    result : the frame's result; ``labels`` gives outlines (bounding boxes from the particle
        table are drawn when the label image was not kept).
    highlight : labels of the particles to emphasise (the alert's matching particles).
    caption : text for the top-left corner.
    max_size : longer side of the output in pixels (the frame is shrunk by an integer factor).
    """
    frame = result.frame
    gray = _to_uint8(frame.pixels, result.valid)
    h, w = gray.shape
    f = max(1, math.ceil(max(h, w) / max_size))
    labels = result.labels
    if f > 1:
        gray = gray[::f, ::f]
        labels = labels[::f, ::f] if labels is not None else None
    # upscale small frames so outlines and text are legible
    up = max(1, 768 // max(gray.shape)) if max(gray.shape) < 768 else 1
    if up > 1:
        gray = np.repeat(np.repeat(gray, up, axis=0), up, axis=1)
        labels = (
            np.repeat(np.repeat(labels, up, axis=0), up, axis=1) if labels is not None else None
        )
    img = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    hl = np.asarray(highlight if highlight is not None else [], dtype=np.int64)
    scale = up / f
    if labels is not None:
        edge = _outline(labels)
        img[edge] = (0.5 * img[edge] + 0.5 * np.array(_CYAN)).astype(np.uint8)
        if hl.size:
            sel = np.isin(labels, hl)
            thick = cv2.dilate(
                _outline(np.where(sel, labels, 0)).astype(np.uint8), np.ones((3, 3), np.uint8)
            )
            img[thick > 0] = _ORANGE
    else:
        p = result.particles
        labs = p.get("label", np.zeros(0))
        for i in range(len(labs)):
            y0, x0 = int(p["bbox_min_y_px"][i] * scale), int(p["bbox_min_x_px"][i] * scale)
            y1, x1 = int(p["bbox_max_y_px"][i] * scale), int(p["bbox_max_x_px"][i] * scale)
            on = int(labs[i]) in set(hl.tolist())
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), _ORANGE if on else _CYAN, 2 if on else 1)
    H, W = img.shape[:2]
    fs = max(0.5, W / 1400)
    th = max(1, round(fs * 1.6))
    # scale bar, bottom right
    cal = frame.calibration
    if cal.nm_per_px is not None:
        nm_per_out_px = cal.nm_per_px[1] / scale
        length_nm = _nice_length(0.2 * W * nm_per_out_px)
        if length_nm > 0:
            bar = max(1, round(length_nm / nm_per_out_px))
            x1, y1 = W - int(0.04 * W), H - int(0.05 * H)
            x0, bh = x1 - bar, max(4, H // 120)
            label = f"{length_nm:g} nm"
            (tw, tht), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, fs, th)
            pad = int(10 * fs)
            bx0, by0 = min(x0, x0 + (bar - tw) // 2) - pad, y1 - bh - tht - 3 * pad
            img[by0 : y1 + pad, bx0 : x1 + pad] = (
                img[by0 : y1 + pad, bx0 : x1 + pad] * 0.35
            ).astype(np.uint8)
            cv2.rectangle(img, (x0, y1 - bh), (x1, y1), _WHITE, -1)
            _text(img, label, (x0 + (bar - tw) // 2, y1 - bh - int(10 * fs)), fs, th)
    else:
        _text(img, "uncalibrated (px)", (W - int(0.35 * W), H - int(0.04 * H)), fs, th)
    if caption:
        _text(img, caption, (int(12 * fs), int(34 * fs)), fs, th)
    return img


def write_png_atomic(path: Path, img: np.ndarray) -> None:
    """Encode ``img`` as PNG and replace ``path`` atomically (temp file in the same folder)."""
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.tobytes())
        replace_atomically(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------
# the sink


class ActionsSink(Sink):
    """Runs the log / snapshot / command actions of alerts.

    Parameters
    ----------
    session_dir : the session folder (``snapshots/`` and ``alerts.log`` go there).
    rules : where to find a rule's ``command``: a ``RulesFile``, ``RuleEngine`` or ``RuleSet``
        (anything with ``.ruleset`` or ``.get(name)``); looked up at alert time so reloaded
        rules apply. ``None``: no command hooks.
    allow_commands : master switch for the command hook (on by default: a rule must still opt in
        with ``"command"`` in its actions and a ``command`` list).
    command_timeout_s : a hook still running after this is killed.
    max_commands : hooks allowed to run at once.
    keep_frames : recent frames kept for snapshots whose alert arrives after the frame.
    """

    name = "actions"
    latest_only = False

    def __init__(
        self,
        session_dir: str | os.PathLike[str],
        *,
        rules: Any = None,
        allow_commands: bool = True,
        command_timeout_s: float = 30.0,
        max_commands: int = 2,
        keep_frames: int = 16,
    ) -> None:
        self.session_dir = Path(session_dir)
        self.rules = rules
        self.allow_commands = allow_commands
        self.command_timeout_s = command_timeout_s
        self.max_commands = max_commands
        self.keep_frames = keep_frames
        self._frames: OrderedDict[int, FrameResult] = OrderedDict()
        self._pending: dict[int, list[Alert]] = {}
        self._lock = threading.Lock()
        self._running: list[threading.Thread] = []
        #: Snapshots written (absolute paths), in order.
        self.snapshots: list[Path] = []
        #: ``(argv, returncode or None on timeout/failure, output tail)`` of finished hooks.
        self.command_results: list[tuple[list[str], int | None, str]] = []

    # -- Sink API ------------------------------------------------------------------------------
    def open(self, session: Session) -> None:
        self.session_dir = Path(session.session_dir)

    def frame_done(self, record: FrameRecord) -> None:
        res = record.result
        if record.status != "ok" or res is None:
            return
        with self._lock:
            self._frames[record.seq] = res
            while len(self._frames) > self.keep_frames:
                self._frames.popitem(last=False)
            waiting = self._pending.pop(record.seq, [])
        for alert in waiting:
            self._snapshot(alert, res)

    def alert(self, alert: Alert) -> None:
        actions = set(alert.actions)
        if "log" in actions or alert.builtin:
            self._log(alert)
        if "snapshot" in actions and alert.seq is not None:
            with self._lock:
                res = self._frames.get(alert.seq)
                if res is None:
                    self._pending.setdefault(alert.seq, []).append(alert)
                    while len(self._pending) > self.keep_frames:
                        self._pending.pop(next(iter(self._pending)))
            if res is not None:
                self._snapshot(alert, res)
        if "command" in actions:
            self._command(alert)

    def close(self) -> None:
        self.wait_commands(self.command_timeout_s + 5)

    # -- actions -------------------------------------------------------------------------------
    def _log(self, alert: Alert) -> None:
        level = logging.INFO if alert.severity == "info" else logging.WARNING
        log.log(level, "ALERT [%s] %s", alert.severity, alert.message)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(alert.t))
        seq = "-" if alert.seq is None else str(alert.seq)
        line = f"{stamp}\t{alert.severity}\t{seq}\t{alert.rule}\t{alert.message}\n"
        try:
            self.session_dir.mkdir(parents=True, exist_ok=True)
            with open(self.session_dir / "alerts.log", "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError:
            log.exception("cannot append to alerts.log")

    def snapshot_path(self, alert: Alert) -> Path:
        rel = getattr(alert, "snapshot", None) or snapshot_name(alert.seq, alert.rule)
        p = (self.session_dir / rel).resolve()
        root = (self.session_dir / "snapshots").resolve()
        if root not in p.parents:  # never write outside SESSION/snapshots
            p = (self.session_dir / snapshot_name(alert.seq, alert.rule)).resolve()
        return p

    def _snapshot(self, alert: Alert, res: FrameResult) -> None:
        path = self.snapshot_path(alert)
        try:
            stamp = time.strftime("%H:%M:%S", time.localtime(res.frame.t_acq))
            cap = f"{alert.rule}  |  frame {res.seq}  |  {stamp}  |  {len(alert.particle_labels)} matching"
            img = render_snapshot(res, alert.particle_labels, caption=cap)
            write_png_atomic(path, img)
        except Exception:  # noqa: BLE001 - a failed snapshot is logged, never fatal
            log.exception("snapshot for alert %r on frame %s failed", alert.rule, alert.seq)
            return
        alert.snapshot = str(path.relative_to(self.session_dir.resolve()))  # type: ignore[attr-defined]
        with self._lock:
            self.snapshots.append(path)

    def _rule_command(self, name: str) -> tuple[str, ...] | None:
        src = self.rules
        if src is None:
            return None
        ruleset = getattr(src, "ruleset", src)
        getter = getattr(ruleset, "get", None)
        rule = getter(name) if getter else None
        return getattr(rule, "command", None) if rule is not None else None

    def _command(self, alert: Alert) -> None:
        if not self.allow_commands:
            log.info("command hooks are disabled; not running the hook of %r", alert.rule)
            return
        argv_t = self._rule_command(alert.rule)
        if not argv_t:
            log.warning("rule %r asks for a command but has none (rules reloaded?)", alert.rule)
            return
        snap = getattr(alert, "snapshot", None)
        subs = {
            "{rule}": alert.rule,
            "{severity}": alert.severity,
            "{seq}": "" if alert.seq is None else str(alert.seq),
            "{t}": f"{alert.t:.3f}",
            "{message}": alert.message,
            "{snapshot}": str(self.session_dir / snap) if snap else "",
            "{session}": str(self.session_dir),
        }
        argv = []
        for arg in argv_t:
            for k, v in subs.items():
                arg = arg.replace(k, v)
            argv.append(arg)
        with self._lock:
            self._running = [t for t in self._running if t.is_alive()]
            if len(self._running) >= self.max_commands:
                log.warning(
                    "%d hooks still running: skipping the hook of %r",
                    len(self._running),
                    alert.rule,
                )
                self.command_results.append((argv, None, "skipped: too many hooks running"))
                return
            t = threading.Thread(target=self._run, args=(argv,), name="emstream-hook", daemon=True)
            self._running.append(t)
        t.start()

    def _run(self, argv: list[str]) -> None:
        try:
            # its own process group, so a timeout ends whatever the hook started too
            group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
                     if sys.platform == "win32" else {"start_new_session": True})
            proc = subprocess.Popen(  # noqa: S603 - list argv, no shell, opted in by the rules file
                argv,
                cwd=self.session_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                **group,
            )
        except OSError as exc:
            log.error("hook %s could not start: %s", argv[0], exc)
            self.command_results.append((argv, None, str(exc)))
            return
        try:
            out, _ = proc.communicate(timeout=self.command_timeout_s)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            rc = None
            log.error("hook %s killed after %.0f s", argv[0], self.command_timeout_s)
        tail = out.decode("utf-8", "replace")[-2000:] if out else ""
        if rc not in (0, None):
            log.warning("hook %s exited with %s: %s", argv[0], rc, tail.strip()[-300:])
        self.command_results.append((argv, rc, tail))

    def wait_commands(self, timeout: float | None = None) -> bool:
        """Wait for running hooks; True when none is left running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._running)
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)


def _kill_group(proc: subprocess.Popen) -> None:
    """End a hook and every process it started (its process group / job tree)."""
    try:
        if sys.platform == "win32":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)],  # noqa: S603,S607
                           capture_output=True, timeout=10, check=False)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        proc.kill()
    except OSError:
        pass
