"""A connection's byte stream: plain TCP, or TLS over the same non-blocking socket.

Why not `trio.SSLStream`: it sits on trio's stream layer, which the servers avoid on the hot
path (see netio.nonblocking: each send and receive would be scheduler round trips). TLS here is
the standard library's `ssl.SSLObject` over two memory BIOs (sans-I/O, as the codec): bytes read
from the socket go into the incoming BIO, ciphertext the object writes to the outgoing BIO goes
to the socket with the same readiness waits as plain bytes. A plain stream makes the syscalls
itself, as netio.nonblocking does, so plain connections pay no extra call.

The contract both keep (the proxy's reply stream relies on it for back pressure):
- `recv(size)` returns at least one byte of plaintext, or b"" at the end of the stream;
- `send_now(data)` takes what it can without waiting and returns the count of bytes of `data`
  taken; a TLS stream takes nothing while earlier ciphertext is still waiting for the socket,
  and else takes all of `data` and keeps what the kernel refused as `backlog`;
- `send_all(data)` returns when all of `data` and any backlog are with the kernel;
- `send_last(data)` is a best-effort goodbye before the caller closes the socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl

import trio

from memring.netio import nonblocking

HANDSHAKE_TIMEOUT = 10.0  # s: a peer that has not finished its handshake by then is closed


class PlainStream:
    """Bytes as they are on the socket."""

    __slots__ = ("sock",)

    backlog = 0  # bytes taken but still waiting for the socket: never, on a plain stream

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def recv(self, size: int) -> bytes:
        sock = self.sock
        while True:  # as nonblocking.recv: wait first, then read
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(size)
            except BlockingIOError:
                continue

    def send_now(self, data: bytes | memoryview) -> int:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    async def send_all(self, data: bytes | memoryview) -> None:
        sock = self.sock  # as nonblocking.send_all, inlined: one coroutine per send, not two
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            view = view[sent:]

    def send_last(self, data: bytes) -> None:
        nonblocking.send_last(self.sock, data)

    @property
    def peer_certificate(self) -> dict[str, object] | None:
        return None


class ClosedBeforeHello(EOFError):
    """The peer closed the connection before sending a byte: a port probe (a follower's
    check that its leader listens, a load balancer's), not a handshake that failed."""


class TlsStream:
    """TLS over a connected non-blocking socket; `await handshake()` before anything else."""

    __slots__ = ("_incoming", "_outgoing", "_pending", "_tls", "sock")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        self._pending = memoryview(b"")  # ciphertext the kernel has not taken yet

    @property
    def backlog(self) -> int:
        return len(self._pending) + self._outgoing.pending

    @property
    def peer_certificate(self) -> dict[str, object] | None:
        """The verified peer's certificate (None when it sent none or was not verified)."""
        return self._tls.getpeercert() or None  # type: ignore[return-value]

    @property
    def version(self) -> str | None:
        return self._tls.version()

    async def handshake(self) -> None:
        """Run the handshake (bound it with a cancel scope); ssl.SSLError when it fails,
        EOFError when the peer hangs up in the middle (ClosedBeforeHello before a byte)."""
        heard = False
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.send_all(b"")
                try:
                    await self._fill()
                except EOFError:
                    if heard:
                        raise
                    raise ClosedBeforeHello("the peer closed the connection before its "
                                            "handshake began") from None
                heard = True
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    self._flush_now()  # our alert tells the peer why
                raise
        await self.send_all(b"")

    async def _fill(self) -> None:
        """Feed the TLS object what the socket has; EOFError at the end of the stream."""
        data = await nonblocking.recv(self.sock, nonblocking.READ_SIZE)
        if not data:
            raise EOFError("the peer closed the connection during TLS")
        self._incoming.write(data)

    async def recv(self, size: int) -> bytes:
        tls = self._tls
        incoming = self._incoming
        while True:
            # Decrypt only when there is something to decrypt: a read that finds nothing
            # raises SSLWantReadError, 1.1 us per read where looking first costs 0.1 us
            # (timeit here); decrypting a small request is ~0.8 us.
            if incoming.pending or tls.pending():
                try:
                    data = tls.read(size)
                    # a read returns one record (16 KiB at most): take the whole records that
                    # came with it too, so a stream (replication) is parsed and acknowledged
                    # per socket read, as in plain, not per record
                    return self._more(data, size) if incoming.pending else data
                except ssl.SSLWantReadError:
                    pass  # a record not whole yet: read on
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""
                except ssl.SSLError as exc:  # corrupted or forged records: the stream is over
                    raise ConnectionResetError(f"TLS error: {exc.reason or exc}") from None
            if self._outgoing.pending:  # TLS 1.3 may answer, e.g. a key update
                await self.send_all(b"")
            data = await nonblocking.recv(self.sock, nonblocking.READ_SIZE)
            if not data:
                return b""  # a peer that closes without close_notify: plain EOF
            incoming.write(data)

    def _more(self, data: bytes, size: int) -> bytes:
        """`data` and the plaintext of the records after it already received, up to `size`
        bytes in all (a partial record waits for the next call)."""
        pieces = [data]
        taken = len(data)
        tls = self._tls
        while taken < size and self._incoming.pending:
            try:
                more = tls.read(size - taken)
            except ssl.SSLError:  # a record not whole yet, or the end: for the next call
                break
            if not more:
                break
            pieces.append(more)
            taken += len(more)
        return b"".join(pieces) if len(pieces) > 1 else data

    def _flush_now(self) -> None:
        """Send what of the ciphertext the kernel takes now; keep the rest."""
        if self._outgoing.pending:
            fresh = self._outgoing.read()
            self._pending = memoryview(bytes(self._pending) + fresh if self._pending else fresh)
        while self._pending:
            try:
                sent = self.sock.send(self._pending)
            except BlockingIOError:
                return
            self._pending = self._pending[sent:]

    def send_now(self, data: bytes | memoryview) -> int:
        self._flush_now()
        if self._pending:
            return 0
        if data:
            self._tls.write(data)
            self._flush_now()
        return len(data)

    async def send_all(self, data: bytes | memoryview) -> None:
        if data:
            self._tls.write(data)
        self._flush_now()
        while self._pending:
            await trio.lowlevel.wait_writable(self.sock)
            self._flush_now()

    def send_last(self, data: bytes) -> None:
        """As nonblocking.send_last: the reply if the kernel takes it now, then drop what the
        peer sent (unread input would turn the close into a reset)."""
        with contextlib.suppress(OSError, ssl.SSLError):
            self.send_now(data)
            self.sock.recv(nonblocking.READ_SIZE)


Stream = PlainStream | TlsStream
