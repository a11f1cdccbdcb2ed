"""The one small interface every consumer of results implements.

The pipeline calls each sink from that sink's own thread with its own bounded queue, so a slow
or failing sink is logged and can never stop acquisition (bluesky's ``make_callback_safe``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emstream.results import Alert, Event, FrameRecord


@dataclass
class Session:
    """What a sink learns when the session opens."""

    session_dir: Path
    source: str  # human description: "folder /data/run3", "zmq tcp://127.0.0.1:5555"
    backend: str
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    t_start: float = 0.0


class Sink:
    """Base class: override what you need. Methods are called in order for one session:
    ``open`` once, then any number of ``frame_done`` / ``alert`` / ``event``, then ``close``."""

    name = "sink"
    #: ``True`` for sinks that only need the newest result (GUI): the pipeline may drop older ones.
    latest_only = False

    def open(self, session: Session) -> None:  # noqa: B027
        pass

    def frame_done(self, record: FrameRecord) -> None:  # noqa: B027
        pass

    def alert(self, alert: Alert) -> None:  # noqa: B027
        pass

    def event(self, event: Event) -> None:  # noqa: B027
        pass

    def close(self) -> None:  # noqa: B027
        pass


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process's umask when emstream started (``os.umask`` can only be read by setting it)
_UMASK = _current_umask()


def replace_atomically(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """``os.replace(tmp, path)`` after giving ``tmp`` the permissions a file written the usual
    way gets (``tempfile.mkstemp`` makes it 0600: others on the acquisition PC could not open
    the report or the exports while the ledger beside them is readable)."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)
