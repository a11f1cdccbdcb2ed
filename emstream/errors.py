"""The exceptions emstream raises, in one place.

::

    EmstreamError                 base of everything below
    ├── ConfigError               bad user configuration (CLI flags, TOML); message names the field
    ├── UnreadableFile            a file that cannot be turned into frames (quarantined, with reason)
    │   └── IncompleteFile        a file that is (still) being written; retried until it ages out
    ├── NotAnImage                a readable dataset that is not an image (spectrum, diffraction)
    ├── ProtocolError             a malformed network message (rejected and counted)
    └── BackendUnavailable        an inference backend cannot run here (the message says why)
"""

from __future__ import annotations


class EmstreamError(Exception):
    """Base class of all emstream errors."""


class ConfigError(EmstreamError):
    """Invalid configuration; the message names the file, line and field where known."""


class UnreadableFile(EmstreamError):
    """A file that cannot be read into frames. ``reason`` is recorded in the ledger."""

    def __init__(self, reason: str, path: str | None = None):
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


class IncompleteFile(UnreadableFile):
    """A file that looks half-written (declared size larger than the file, truncated pages)."""


class NotAnImage(UnreadableFile):
    """A dataset that is readable but is not a real-space image (spectrum, diffraction, map)."""


class ProtocolError(EmstreamError):
    """A network message that violates its protocol."""


class BackendUnavailable(EmstreamError):
    """An inference backend cannot be used on this machine."""
