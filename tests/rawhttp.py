"""A tiny raw-socket HTTP/1.1 client for tests that must send exactly the bytes they mean.

Clients tidy requests: they normalise ``/v1/x/../chat``, re-encode ``%2F``, refuse a NUL
or a non-UTF-8 byte in a header. Probing a server's perimeter needs the request as
written, so ``request`` sends the target and header bytes untouched and ``RawStream``
reads the answer as it arrives (``Content-Length``, chunked, or until close), which also
lets a test walk away from a stream at a moment of its choosing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

Bytesish = bytes | str


def _b(value: Bytesish) -> bytes:
    """Text as UTF-8 bytes; bytes untouched (so a test can send any byte it likes)."""
    return value if isinstance(value, bytes) else value.encode()


@dataclass
class RawReply:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # names lower-cased, values latin-1 decoded, in order
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)  # the chunked body's pieces, if chunked

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


def build_request(
    method: Bytesish,
    target: Bytesish,
    host: str,
    headers: Sequence[tuple[Bytesish, Bytesish]] = (),
    body: bytes | dict[str, Any] | None = None,
    *,
    close: bool = True,
) -> bytes:
    """The request's bytes: the target as given, headers in order, ``Content-Length`` added
    for a body (a dict is sent as JSON)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    lines = [_b(method) + b" " + _b(target) + b" HTTP/1.1", b"Host: " + host.encode()]
    names = {_b(k).lower() for k, _ in headers}
    if data is not None:
        if b"content-type" not in names:
            lines.append(b"Content-Type: application/json")
        lines.append(b"Content-Length: " + str(len(data)).encode())
    if close and b"connection" not in names:
        lines.append(b"Connection: close")
    lines += [_b(k) + b": " + _b(v) for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (data or b"")


class RawStream:
    """One connection: send bytes, then read the status line, headers and body pieces."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        """Walk away: a plain close (FIN), as a client that stops reading does."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort(self) -> None:
        """Walk away rudely: RST instead of FIN (SO_LINGER 0)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    # -- reading -------------------------------------------------------------------

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self._buffer += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if not self._fill():
                raise ConnectionError("connection closed mid-line")
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if not self._fill():
                raise ConnectionError("connection closed mid-body")
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def read_head(self) -> None:
        """Status line and headers (a 100 Continue is skipped)."""
        while True:
            status_line = self._line()
            parts = status_line.decode("latin-1").split(" ", 2)
            self.status = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ""
            self.headers = []
            while True:
                line = self._line()
                if not line:
                    break
                name, _, value = line.decode("latin-1").partition(":")
                self.headers.append((name.strip().lower(), value.strip()))
            if self.status != 100:
                return

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.header("transfer-encoding") or "").lower()

    def pieces(self) -> Iterator[bytes]:
        """The body as it arrives: decoded chunks, or what ``recv`` hands over."""
        if self.chunked:
            while True:
                size = int(self._line().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self._line():  # trailers, then the blank line
                        pass
                    return
                yield self._exact(size)
                self._exact(2)  # CRLF after each chunk
        length = self.header("content-length")
        if length is not None:
            yield self._exact(int(length))
            return
        if self._buffer:
            yield self._buffer
            self._buffer = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionError:
                return
            if not data:
                return
            yield data

    def events(self) -> Iterator[bytes]:
        """Server-sent events: each event's ``data:`` payload, as it arrives."""
        pending = b""
        for piece in self.pieces():
            pending += piece.replace(b"\r\n", b"\n")
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                data = [line[5:].strip() for line in event.split(b"\n") if line[:5] == b"data:"]
                if data:
                    yield b"\n".join(data)

    def read_all(self) -> RawReply:
        chunks = list(self.pieces())
        return RawReply(self.status, self.reason, self.headers, b"".join(chunks), chunks)


def request(
    host: str,
    port: int,
    method: Bytesish,
    target: Bytesish,
    headers: Sequence[tuple[Bytesish, Bytesish]] = (),
    body: bytes | dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> RawReply:
    """One request with the exact target and header bytes given; the whole answer."""
    with RawStream(host, port, timeout) as conn:
        conn.send(build_request(method, target, f"{host}:{port}", headers, body))
        conn.read_head()
        return conn.read_all()


def send_bytes(host: str, port: int, data: bytes, timeout: float = 10.0) -> RawReply:
    """Exactly ``data`` on a fresh connection (it should ask to close); the whole answer."""
    with RawStream(host, port, timeout) as conn:
        conn.send(data)
        conn.read_head()
        return conn.read_all()
