"""A rules file on disk that is reloaded when the operator edits it (``--rules FILE``).

``RulesFile(path)`` loads and validates the file (a bad file at start is a
:class:`~emstream.errors.ConfigError`: the CLI reports it and exits with code 2).
``maybe_reload()`` is cheap (one ``stat``) and is called by the pipeline between frames: when the
file's mtime, size or content changed it is re-read; a valid edit replaces the engine (rule state
carries over by rule name, so an unchanged rule does not re-fire), a bad edit keeps the old rules,
logs the error and keeps it in ``.error`` until the file is fixed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from emstream.errors import ConfigError
from emstream.process.rules import RuleEngine, RuleSet

__all__ = ["RulesFile"]

log = logging.getLogger(__name__)


class RulesFile:
    """Rules from a TOML file, reloaded on change.

    Attributes
    ----------
    path : the file.
    engine : the current :class:`~emstream.process.rules.RuleEngine`.
    error : the message of the last failed reload, ``""`` when the file is good.
    reloads : how many successful reloads happened (not counting the first load).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.error = ""
        self.reloads = 0
        self._stamp: tuple[int, int] | None = None
        self._digest = b""
        ruleset, self._stamp, self._digest = self._load()
        self.engine = RuleEngine(ruleset)

    @property
    def ruleset(self) -> RuleSet:
        return self.engine.ruleset

    def _read(self) -> tuple[str, tuple[int, int], bytes]:
        try:
            st = os.stat(self.path)
            with open(self.path, "rb") as fh:  # read-only
                data = fh.read()
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot read rules file: {exc.strerror or exc}"
            ) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{self.path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        return text, (st.st_mtime_ns, st.st_size), hashlib.sha256(data).digest()

    def _load(self) -> tuple[RuleSet, tuple[int, int], bytes]:
        text, stamp, digest = self._read()
        return RuleSet.from_toml_text(text, filename=str(self.path)), stamp, digest

    def maybe_reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed. Returns True when new rules took effect.

        The check is a ``stat`` (mtime and size); ``force=True`` compares the content even when
        those look unchanged (filesystems with coarse mtimes).
        """
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return self._failed(f"{self.path}: cannot read rules file: {exc.strerror or exc}", None)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and not force:
            return False
        try:
            text, stamp, digest = self._read()
        except ConfigError as exc:
            return self._failed(str(exc), stamp)
        if digest == self._digest:
            self._stamp = stamp  # touched, not changed
            return False
        try:
            ruleset = RuleSet.from_toml_text(text, filename=str(self.path))
        except ConfigError as exc:
            self._digest = digest
            return self._failed(str(exc), stamp)
        engine = RuleEngine(ruleset)
        engine.adopt_state(self.engine)
        self.engine = engine
        self._stamp, self._digest = stamp, digest
        self.error = ""
        self.reloads += 1
        log.info("reloaded %d rule(s) from %s", len(ruleset), self.path)
        return True

    def _failed(self, message: str, stamp: tuple[int, int] | None) -> bool:
        if message != self.error:
            log.error(
                "rules not reloaded, keeping the previous %d rule(s): %s",
                len(self.ruleset),
                message,
            )
        self.error = message
        if stamp is not None:
            self._stamp = stamp  # do not re-parse the same bad content on every call
        return False
