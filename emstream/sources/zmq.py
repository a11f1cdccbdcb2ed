"""Live frames over ZeroMQ: ``emstream listen ENDPOINT``.

:class:`StreamSource` receives the ``emstream`` v1 protocol (:mod:`emstream.sources.protocol`)
or DECTRIS SIMPLON stream v1/v2 (:mod:`emstream.sources.dectris`) and yields
:class:`~emstream.frame.Frame` objects.

Transport choices, and why
--------------------------
- **PULL** (default) never loses a frame silently: when emstream falls behind, ZeroMQ's queue
  fills to the receive high-water mark and the sender's PUSH blocks. **SUB** (``pattern="sub"``)
  is for senders that must never block (PUB drops when a subscriber is slow); frames lost that
  way are found from the sender's per-series ``seq`` and counted as gaps.
- **Connect** by default (the sender binds, as a DECTRIS detector does); ``bind=True`` binds.
- **Loopback only** by default. A non-loopback endpoint needs ``allow_remote=True``; a
  non-loopback *bind* additionally needs CURVE encryption with this side's secret certificate
  (``curve_keys``) and a folder of allowed client public certificates (``curve_allow``), made with
  ``zmq.auth.create_certificates``. Authentication runs in ZeroMQ's ZAP handler
  (:class:`zmq.auth.thread.ThreadAuthenticator`).
- Received bytes are only ever parsed as JSON / CBOR / raw pixels: never unpickled or evaluated.
  Messages above ``max_frame_bytes`` (plus a small allowance) are refused by ZeroMQ itself
  (``MAXMSGSIZE``: the peer is disconnected); smaller bad messages are rejected by the decoder,
  counted per reason in :attr:`StreamSource.stats`, logged (rate-limited), recorded as a
  ``quarantined`` :class:`~emstream.results.FrameRecord`, and the loop goes on.
- No unbounded buffer: at most ``rcvhwm`` messages wait in ZeroMQ, decoded frames are handed
  over one at a time, and the event list is capped.

Example::

    import threading
    from emstream.sources.zmq import StreamSource

    source = StreamSource("tcp://127.0.0.1:5555")          # sender binds, we connect (PULL)
    stop = threading.Event()
    for frame in source.frames(stop):
        print(frame.source_id, frame.shape, frame.calibration.nm_per_px)
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from emstream.errors import ConfigError, ProtocolError
from emstream.frame import Frame
from emstream.results import Event, FrameRecord
from emstream.sources.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    RejectedMessage,
    decode_v1,
)
from emstream.zmq_curve import setup_curve

__all__ = ["StreamSource", "StreamStats", "check_endpoint"]

log = logging.getLogger(__name__)

StreamProtocol = Literal["emstream", "dectris"]
Pattern = Literal["pull", "sub"]

#: Most parts accepted in one message (a DECTRIS v1 ``dheader`` with ``header_detail=all`` has
#: 8 parts, an image 4-5); further parts are received and dropped, and the message rejected.
MAX_PARTS = 16
#: Most events kept between two :meth:`StreamSource.drain_events` calls.
MAX_EVENTS = 1000
#: Most series tracked for gap counting at once (oldest forgotten first).
#: quarantined records written for one gap in a series (the rest are counted in the last one)
MAX_GAP_RECORDS = 100

MAX_SERIES = 256
#: Seconds between two log lines / events for the same reject reason.
REJECT_REPORT_INTERVAL_S = 5.0


class Decoder(Protocol):
    """Turns one received multipart message into frames and events, or raises ProtocolError."""

    def decode(
        self, parts: Sequence[memoryview], t_arrival: float
    ) -> tuple[list[Frame], list[Event]]: ...


class EmstreamDecoder:
    """The ``emstream`` v1 protocol: one frame per message."""

    def __init__(self, *, source: str, max_bytes: int, max_header_bytes: int):
        self.source = source
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes

    def decode(
        self, parts: Sequence[memoryview], t_arrival: float
    ) -> tuple[list[Frame], list[Event]]:
        frame = decode_v1(
            parts,
            max_bytes=self.max_bytes,
            max_header_bytes=self.max_header_bytes,
            source=self.source,
            t_arrival=t_arrival,
        )
        return [frame], []


@dataclass
class StreamStats:
    """Counters of one :class:`StreamSource` (a snapshot; safe to read from any thread).

    Attributes
    ----------
    received : messages received (good or bad).
    accepted : frames handed to the pipeline.
    rejected : rejected messages per reason code (``payload-size``, ``header-json`` ...).
    gaps : sequence gaps seen (each gap is one or more consecutive missing frames).
    missing : frames missing according to the senders' sequence numbers.
    restarts : times a series' ``seq`` went backwards (sender restarted the count).
    bytes_received : total bytes of all received message parts.
    disconnects : times the sender's connection dropped (sender stopped, or it sent a message
        above the transport size limit, which makes ZeroMQ drop the connection).
    """

    received: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    missing: int = 0
    restarts: int = 0
    bytes_received: int = 0
    disconnects: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "rejected_total": self.rejected_total,
            "gaps": self.gaps,
            "missing": self.missing,
            "restarts": self.restarts,
            "bytes_received": self.bytes_received,
            "disconnects": self.disconnects,
        }


def _host_of(endpoint: str) -> tuple[str, str, str]:
    """Split ``tcp://host:port`` into (transport, host, port)."""
    transport, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        raise ConfigError(f"endpoint {endpoint!r}: expected e.g. tcp://127.0.0.1:5555")
    transport = transport.lower()
    if transport != "tcp":
        return transport, rest, ""
    if rest.startswith("["):  # [::1]:5555
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port:
        raise ConfigError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT")
    return transport, host, port


def is_loopback(host: str) -> bool:
    """Is ``host`` (a name or an address, IPv6 without brackets) provably loopback?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, an interface name or '*': not provably loopback


def check_endpoint(endpoint: str, *, bind: bool, allow_remote: bool) -> bool:
    """Validate an endpoint against the loopback-by-default rule.

    Returns
    -------
    bool
        True when the endpoint is local (loopback TCP, ``ipc://`` or ``inproc://``).

    Raises
    ------
    ConfigError
        for a malformed endpoint, an unsupported transport, or a non-loopback endpoint without
        ``allow_remote``.
    """
    transport, host, port = _host_of(endpoint)
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        raise ConfigError(f"endpoint {endpoint!r}: transport {transport!r} is not supported "
                          "(use tcp://, ipc:// or inproc://)")
    if port != "*" and not (port.isdigit() and 0 <= int(port) <= 65535):
        raise ConfigError(f"endpoint {endpoint!r}: port {port!r} is not a port number")
    if not bind and port in ("*", "0"):
        raise ConfigError(f"endpoint {endpoint!r}: connecting needs an explicit port")
    if is_loopback(host):
        return True
    if not allow_remote:
        what = "binding to" if bind else "connecting to"
        raise ConfigError(
            f"endpoint {endpoint!r}: {what} a non-loopback address is refused by default; "
            "pass allow_remote=True (--allow-remote)"
            + (" together with CURVE keys (--curve-keys, --curve-allow)" if bind else "")
        )
    return False


class StreamSource:
    """Frames from a ZeroMQ socket.

    Parameters
    ----------
    endpoint : ``tcp://127.0.0.1:5555`` (``tcp://127.0.0.1:0`` or ``:*`` with ``bind=True``
        picks a free port; :attr:`endpoint` then holds the real one), ``ipc://...``.
    protocol : ``"emstream"`` (v1, see :mod:`emstream.sources.protocol`) or ``"dectris"``
        (SIMPLON stream v1 JSON or v2 CBOR, detected per message).
    pattern : ``"pull"`` (default, lossless, sender blocks) or ``"sub"`` (subscribes to all
        messages; losses are counted from sequence numbers).
    bind : bind instead of connect (default: connect; the sender binds).
    allow_remote : permit a non-loopback endpoint.
    max_frame_bytes : largest accepted frame (decoded pixels) in bytes.
    rcvhwm : ZeroMQ receive high-water mark in messages (the only queue this source has).
    curve_keys : this side's *secret* certificate file (``zmq.auth.create_certificates``);
        enables CURVE encryption.
    curve_allow : when binding with CURVE, a folder of client *public* certificates allowed to
        connect (required for a non-loopback bind).
    curve_server : when connecting with CURVE, the server's public certificate file.
    poll_ms : receive poll interval; ``stop`` is honoured within about this time.
    quarantine_rejects : also yield a ``quarantined`` :class:`FrameRecord` per rejected message,
        so rejects reach the session ledger.

    Raises
    ------
    ConfigError
        for a bad endpoint, remote use without ``allow_remote``, a non-loopback bind without
        CURVE keys and allow-list, unreadable key files, or an endpoint that cannot be bound.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        protocol: StreamProtocol = "emstream",
        pattern: Pattern = "pull",
        bind: bool = False,
        allow_remote: bool = False,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        rcvhwm: int = 8,
        curve_keys: str | Path | None = None,
        curve_allow: str | Path | None = None,
        curve_server: str | Path | None = None,
        poll_ms: int = 50,
        quarantine_rejects: bool = True,
    ):
        if protocol not in ("emstream", "dectris"):
            raise ConfigError(f"protocol {protocol!r}: expected 'emstream' or 'dectris'")
        if pattern not in ("pull", "sub"):
            raise ConfigError(f"pattern {pattern!r}: expected 'pull' or 'sub'")
        if max_frame_bytes <= 0:
            raise ConfigError("max_frame_bytes must be > 0")
        local = check_endpoint(endpoint, bind=bind, allow_remote=allow_remote)
        if bind and not local and not (curve_keys and curve_allow):
            raise ConfigError(
                f"endpoint {endpoint!r}: a non-loopback bind needs CURVE encryption and an "
                "allow-list: pass curve_keys (this side's secret certificate) and curve_allow "
                "(folder of allowed client public certificates) (--curve-keys, --curve-allow)"
            )
        if curve_allow and not bind:
            raise ConfigError("curve_allow applies to a bound socket; use curve_server to connect")
        if curve_server and not curve_keys:
            raise ConfigError("curve_server needs curve_keys (this client's secret certificate)")

        self.protocol: StreamProtocol = protocol
        self.pattern: Pattern = pattern
        self.bind = bind
        self.max_frame_bytes = int(max_frame_bytes)
        self.poll_ms = int(poll_ms)
        self.quarantine_rejects = quarantine_rejects
        self._stats = StreamStats()
        self._lock = threading.Lock()
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._last_seq: OrderedDict[str, int] = OrderedDict()
        self._reject_reported: dict[str, tuple[float, int]] = {}
        self._closed = False
        self._running = False
        self._auth: ThreadAuthenticator | None = None
        self._monitor: zmq.Socket | None = None
        self._reconnect_pending = False  # set on a dropped sender, acted on once drained

        self._ctx = zmq.Context()
        try:
            self._sock = self._ctx.socket(zmq.PULL if pattern == "pull" else zmq.SUB)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.RCVHWM, max(1, int(rcvhwm)))
            # Above this ZeroMQ drops the message and the connection; below it our decoder
            # rejects and counts. The allowance covers headers and incompressible data.
            self._sock.setsockopt(
                zmq.MAXMSGSIZE, self.max_frame_bytes + self.max_frame_bytes // 16 + 2**20
            )
            if ":" in _host_of(endpoint)[1] and endpoint.lower().startswith("tcp://"):
                self._sock.setsockopt(zmq.IPV6, 1)
            if pattern == "sub":
                self._sock.setsockopt(zmq.SUBSCRIBE, b"")
            self._auth = setup_curve(self._ctx, self._sock, keys=curve_keys, allow=curve_allow,
                                     server=curve_server, bind=bind)
            if bind:
                self._sock.bind(endpoint)
                self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                self._sock.connect(endpoint)
                self.endpoint = endpoint
            self._monitor = self._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        except zmq.ZMQError as exc:
            self._teardown()
            raise ConfigError(f"endpoint {endpoint!r}: {exc}") from None
        except Exception:
            self._teardown()
            raise

        if protocol == "emstream":
            self._decoder: Decoder = EmstreamDecoder(
                source=self.endpoint, max_bytes=self.max_frame_bytes,
                max_header_bytes=max_header_bytes,
            )
        else:
            from emstream.sources.dectris import DectrisDecoder

            self._decoder = DectrisDecoder(
                max_bytes=self.max_frame_bytes, max_header_bytes=max_header_bytes
            )
        log.info("%s", self.describe())

    # -- set-up ------------------------------------------------------------------------------

    # -- public API --------------------------------------------------------------------------

    def describe(self) -> str:
        """One line for humans, e.g. ``"zmq pull connect tcp://127.0.0.1:5555 (emstream v1)"``."""
        proto = "emstream v1" if self.protocol == "emstream" else "DECTRIS stream v1/v2"
        how = "bind" if self.bind else "connect"
        curve = ", CURVE" if self._auth is not None or self._sock_has_curve() else ""
        return f"zmq {self.pattern} {how} {self.endpoint} ({proto}{curve})"

    def _sock_has_curve(self) -> bool:
        try:
            return self._sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        except (zmq.ZMQError, AttributeError):
            return False

    @property
    def stats(self) -> StreamStats:
        """A snapshot of the counters."""
        with self._lock:
            s = self._stats
            return StreamStats(s.received, s.accepted, dict(s.rejected), s.gaps, s.missing,
                               s.restarts, s.bytes_received, s.disconnects)

    def drain_events(self) -> list[Event]:
        """Gap, reject, series-start/-end and restart events since the last call (oldest first)."""
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out

    def frames(self, stop: threading.Event) -> Iterator[Frame | FrameRecord]:
        """Yield frames (and quarantine records for rejected messages) until ``stop`` is set.

        Never raises on bad input. Returns when ``stop`` is set (within about ``poll_ms``), when
        :meth:`close` is called, or when the socket fails.
        """
        with self._lock:
            if self._closed:
                return
            self._running = True
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        try:
            while not stop.is_set() and not self._closed:
                try:
                    ready = dict(poller.poll(self.poll_ms))
                    if self._monitor is not None and self._monitor in ready:
                        self._on_monitor_event()
                    if self._sock not in ready:
                        # Reconnect only once every message the dropped peer delivered has
                        # been read: disconnect() discards the pipe with whatever is queued.
                        if self._reconnect_pending:
                            self._reconnect()
                        continue
                    parts, extra = self._recv_message()
                except zmq.Again:
                    # readable without a whole message (a CURVE handshake, a peer that went
                    # away mid-message): nothing to read yet, not an error
                    continue
                except zmq.ZMQError as exc:
                    if not self._closed:
                        log.error("%s: socket error, stopping: %s", self.endpoint, exc)
                    return
                if parts is None:
                    continue
                yield from self._handle(parts, extra)
        finally:
            with self._lock:
                self._running = False
                close_now = self._closed
            if close_now:
                self._teardown()

    def close(self) -> None:
        """Stop receiving and release the socket (safe from any thread, idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = self._running
        if not running:  # else the frames() loop tears down when it sees the flag
            self._teardown()

    def __enter__(self) -> StreamSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _on_monitor_event(self) -> None:
        """A peer connection dropped: count it and, when connecting, connect afresh.

        ZeroMQ ends a connection whose peer sent a message above ``MAXMSGSIZE`` as a protocol
        error and, on the connecting side, never retries it; reconnecting here keeps one
        oversized frame from silently ending the session.
        """
        assert self._monitor is not None
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            with self._lock:
                self._stats.disconnects += 1
                self._events.append(Event(
                    "disconnected",
                    f"{self.endpoint}: sender connection dropped (sender stopped, or it sent a "
                    f"message above the {self.max_frame_bytes}-byte frame cap)",
                    data={"endpoint": self.endpoint},
                ))
            # a sender that finishes disconnects too: an event and an info line, not a warning
            log.info("%s: sender disconnected (it stopped, or sent a message above the cap)",
                     self.endpoint)
            if not self.bind:
                self._reconnect_pending = True

    def _reconnect(self) -> None:
        self._reconnect_pending = False
        try:
            self._sock.disconnect(self.endpoint)
        except zmq.ZMQError:
            pass  # already gone
        self._sock.connect(self.endpoint)

    def _teardown(self) -> None:
        monitor = getattr(self, "_monitor", None)
        if monitor is not None and not monitor.closed:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            monitor.close(linger=0)
        sock = getattr(self, "_sock", None)
        if sock is not None and not sock.closed:
            sock.close(linger=0)
        if self._auth is not None:
            try:
                self._auth.stop()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                log.debug("authenticator stop failed", exc_info=True)
            self._auth = None
        if not self._ctx.closed:
            self._ctx.term()

    def _recv_message(self) -> tuple[list[memoryview] | None, int]:
        """Receive one whole multipart message without ever holding more than MAX_PARTS parts."""
        parts: list[memoryview] = []
        extra = 0
        nbytes = 0
        while True:
            msg = self._sock.recv(flags=zmq.NOBLOCK, copy=False)
            buf = msg.buffer
            nbytes += len(buf)
            if len(parts) < MAX_PARTS:
                parts.append(buf)
            else:
                extra += 1  # drained and dropped
            if not msg.more:
                break
        with self._lock:
            self._stats.received += 1
            self._stats.bytes_received += nbytes
        return parts, extra

    def _handle(self, parts: list[memoryview], extra: int) -> Iterator[Frame | FrameRecord]:
        t_arrival = time.time()
        try:
            if extra:
                raise RejectedMessage("parts", f"message has {MAX_PARTS + extra} parts")
            frames, events = self._decoder.decode(parts, t_arrival)
        except ProtocolError as exc:
            reason = getattr(exc, "reason", "protocol")
            rec = self._reject(reason, str(exc), t_arrival)
            if rec is not None:
                yield rec
            return
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the stream
            log.debug("decoder failure", exc_info=True)
            rec = self._reject("decoder-error", f"{type(exc).__name__}: {exc}", t_arrival)
            if rec is not None:
                yield rec
            return
        with self._lock:
            self._events.extend(events)
        for frame in frames:
            yield from self._track_sequence(frame, t_arrival)
            with self._lock:
                self._stats.accepted += 1
            yield frame

    def _reject(self, reason: str, detail: str, t_arrival: float) -> FrameRecord | None:
        now = time.monotonic()
        with self._lock:
            self._stats.rejected[reason] = self._stats.rejected.get(reason, 0) + 1
            n = self._stats.rejected_total
            last, suppressed = self._reject_reported.get(reason, (-1e9, 0))
            report = now - last >= REJECT_REPORT_INTERVAL_S
            self._reject_reported[reason] = (now, 0) if report else (last, suppressed + 1)
            if report:
                more = f" (+{suppressed} more since last report)" if suppressed else ""
                self._events.append(Event(
                    "reject", f"{self.endpoint}: rejected message: {detail}{more}",
                    data={"reason": reason, "suppressed": suppressed, "endpoint": self.endpoint},
                ))
        if report:
            log.warning("%s: rejected message (%s)%s", self.endpoint, detail[:300],
                        f" (+{suppressed} more)" if suppressed else "")
        if not self.quarantine_rejects:
            return None
        return FrameRecord(
            seq=-1,
            source_id=f"{self.endpoint}/rejected/{n}",
            status="quarantined",
            t_arrival=t_arrival,
            reason=f"protocol: {detail}"[:500],
        )

    def resume_sequences(self, last: dict[str, int]) -> None:
        """The last sequence number recorded per series (from the ledger of a session being
        resumed), so frames lost while the listener was down are found as a gap."""
        with self._lock:
            for series, seq in last.items():
                self._last_seq[series] = int(seq)

    def _track_sequence(self, frame: Frame, t_arrival: float) -> list[FrameRecord]:
        """Count gaps per series from the sender's sequence numbers; each missing frame gets a
        quarantined record (at most ``MAX_GAP_RECORDS`` a gap, the rest counted in the last):
        a message above ``--max-frame-mb`` is refused by ZeroMQ itself and never arrives, so
        this is the only trace the ledger can hold of it."""
        series = str(frame.metadata.get("series", ""))
        if "channel" in frame.metadata:  # DECTRIS v2: each channel of an image is its own frame
            series = f"{series}/{frame.metadata['channel']}"
        seq = frame.metadata.get("seq")
        if not isinstance(seq, int):
            return []
        with self._lock:
            last = self._last_seq.get(series)
            self._last_seq[series] = seq
            self._last_seq.move_to_end(series)
            while len(self._last_seq) > MAX_SERIES:
                self._last_seq.popitem(last=False)
            if last is None:
                if self.protocol == "emstream":
                    self._events.append(Event(
                        "series-start", f"{self.endpoint}: series {series!r} starts at {seq}",
                        data={"series": series, "seq": seq},
                    ))
                return []
            if seq == last + 1:
                return []
            if seq > last + 1:
                n = seq - last - 1
                self._stats.gaps += 1
                self._stats.missing += n
                self._events.append(Event(
                    "gap",
                    f"{self.endpoint}: series {series!r}: {n} frame(s) missing "
                    f"(seq {last + 1}..{seq - 1})",
                    data={"series": series, "first_missing": last + 1, "missing": n},
                ))
                log.warning("%s: series %r: %d frame(s) missing (seq %d..%d)",
                            self.endpoint, series, n, last + 1, seq - 1)
                why = (f"not received: the sender's frame {{k}} of series {series!r} never "
                       f"arrived (above --max-frame-mb, or lost in transport)")
                shown = range(last + 1, min(seq, last + 1 + MAX_GAP_RECORDS))
                recs = [FrameRecord(seq=-1, source_id=f"{self.endpoint}/{series}/{k}",
                                    status="quarantined", t_arrival=t_arrival,
                                    reason=why.format(k=k)) for k in shown]
                if n > len(recs):
                    recs[-1].reason += f"; {n - len(recs)} more missing after it"
                return recs
            else:
                self._stats.restarts += 1
                self._events.append(Event(
                    "series-restart",
                    f"{self.endpoint}: series {series!r}: seq went back from {last} to {seq}",
                    data={"series": series, "seq": seq, "previous": last},
                ))
        return []
