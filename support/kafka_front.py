"""A TLS and SASL/SCRAM front for a plaintext Kafka broker: test infrastructure only.

The bundled Tansu 0.6 serves neither TLS nor SCRAM logins, so the tests put this front
between the client (librdkafka, running its real TLS and SCRAM code) and a plaintext Tansu
on loopback that advertises the front's address (``TansuBroker(advertised_port=...)``).

Per client connection:

1. TLS, terminated with the standard library's `ssl` (the server certificate of
   `support.pki`); a client that does not speak TLS fails the handshake and is dropped.
2. Until the client has logged in, requests are read one frame at a time (4-byte length,
   then the request header: api_key, api_version, correlation_id, client_id):
   * ApiVersions (18) is passed through to the broker and its answer relayed back;
   * SaslHandshake (17, v1) is answered here: the mechanisms this front offers, or error 33
     (UNSUPPORTED_SASL_MECHANISM);
   * SaslAuthenticate (36, v0-v2) carries the SCRAM exchange, verified with `scramp`
     against the front's users; bad credentials (unknown user, wrong proof) are answered
     with error 58 (SASL_AUTHENTICATION_FAILED) and the connection is closed, as Kafka does;
   * any other request is refused by closing the connection.
3. After a successful login, bytes are relayed both ways unchanged.

The front keeps a record of each login (`logins`: user, mechanism, outcome) and never stores
or logs a password: `scramp` gets the salted keys only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from scramp import ScramException, ScramMechanism

__all__ = ["KafkaSecurityFront", "Login", "server_ssl_context"]

log = logging.getLogger("support.kafka_front")

API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
ERR_UNSUPPORTED_SASL_MECHANISM = 33
ERR_ILLEGAL_SASL_STATE = 34
ERR_SASL_AUTHENTICATION_FAILED = 58
MAX_FRAME = 100 * 1024 * 1024
ITERATIONS = 4096
"""SCRAM iteration count of the front's users (Kafka's minimum)."""


@dataclass(frozen=True, slots=True)
class Login:
    """One finished SCRAM exchange (or a refused attempt)."""

    user: str
    mechanism: str
    ok: bool
    reason: str = ""


class _Refused(Exception):
    """The client broke the protocol before logging in: close the connection."""


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+) serving `cert` with `key`; no client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass(frozen=True, slots=True)
class _Header:
    api_key: int
    api_version: int
    correlation_id: int
    body_offset: int


def _flexible(api_key: int, api_version: int) -> bool:
    """Whether this request (and its response) uses the flexible (tagged) header."""
    if api_key == API_SASL_AUTHENTICATE:
        return api_version >= 2
    if api_key == API_VERSIONS:
        return api_version >= 3
    return False


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _Refused("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise _Refused("varint too long")


def _put_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _skip_tags(buf: bytes, pos: int) -> int:
    count, pos = _uvarint(buf, pos)
    for _ in range(count):
        _, pos = _uvarint(buf, pos)
        size, pos = _uvarint(buf, pos)
        pos += size
    return pos


def _parse_header(frame: bytes) -> _Header:
    if len(frame) < 10:
        raise _Refused("request header too short")
    api_key, api_version, correlation_id, client_len = struct.unpack_from(">hhih", frame)
    pos = 10 + max(client_len, 0)
    if _flexible(api_key, api_version):
        pos = _skip_tags(frame, pos)
    return _Header(api_key, api_version, correlation_id, pos)


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


class KafkaSecurityFront:
    """A TLS + SASL/SCRAM listener on loopback relaying to a plaintext Kafka broker.

    `users` maps user name to password (turned into SCRAM keys at construction; the
    passwords are not kept). `mechanisms` are those offered in SaslHandshake. The listener
    binds at `start()` (its port is then known, before the upstream broker need be); the
    upstream address may be set later with `set_upstream` and must be set before a client
    connects. Runs its own asyncio loop in a daemon thread.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        users: Mapping[str, str],
        *,
        mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512"),
        upstream: tuple[str, int] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self._ssl = ssl_context
        self._host = host
        self.upstream = upstream
        self.mechanisms = mechanisms
        self._auth: dict[str, dict[str, tuple[bytes, bytes, bytes, int]]] = {}
        for name in mechanisms:
            mech = ScramMechanism(name)
            self._auth[name] = {
                user: mech.make_auth_info(password, iteration_count=ITERATIONS)
                for user, password in users.items()
            }
        self.logins: list[Login] = []
        self.refused: list[str] = []
        """Why connections were closed before a login (protocol violations, TLS failures)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------

    def start(self, port: int = 0) -> Self:
        """Bind the listener (``port`` 0: a free one) and serve in a background thread."""
        if self._thread is not None:
            raise RuntimeError("front already started")
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._on_loop_error)
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._client, self._host, port, ssl=self._ssl)
                )
            except BaseException as exc:  # reported to the caller of start()
                failure.append(exc)
                ready.set()
                return
            self._port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="kafka-front", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def set_upstream(self, host: str, port: int) -> None:
        """The plaintext broker to relay to."""
        self.upstream = (host, port)

    def stop(self) -> None:
        """Close the listener and every connection; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(timeout=10)
        self._loop = self._thread = self._server = None

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("front is not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` (matches the server certificate of `support.pki`)."""
        return f"{self._host}:{self.port}"

    def __repr__(self) -> str:
        return f"KafkaSecurityFront(port={self._port}, upstream={self.upstream})"

    def _record(self, login: Login) -> None:
        with self._lock:
            if len(self.logins) < 1000:  # clients retry a refused login every few ms
                self.logins.append(login)

    def _note_refused(self, reason: str) -> None:
        with self._lock:
            if len(self.refused) < 1000:
                self.refused.append(reason)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # TLS handshake failures of plaintext clients land here: expected, recorded, quiet.
        self._note_refused(str(context.get("exception") or context.get("message")))

    # -- one connection ------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            if self.upstream is None:
                raise _Refused("no upstream broker set")
            upstream = await asyncio.open_connection(*self.upstream)
            if await self._login(reader, writer, *upstream):
                await self._relay(reader, writer, *upstream)
        except _Refused as exc:
            self._note_refused(str(exc))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            self._note_refused(f"{type(exc).__name__}: {exc}")
        finally:
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> bytes:
        size = struct.unpack(">i", await reader.readexactly(4))[0]
        if not 0 < size <= MAX_FRAME:
            raise _Refused(f"frame size {size} out of range")
        return await reader.readexactly(size)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, payload: bytes) -> None:
        writer.write(struct.pack(">i", len(payload)) + payload)
        await writer.drain()

    async def _login(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        """Serve requests until a SCRAM login succeeds (True) or fails (False, answered)."""
        mechanism: str | None = None
        server = None
        user = ""
        while True:
            frame = await self._frame(reader)
            header = _parse_header(frame)
            key, version, corr = header.api_key, header.api_version, header.correlation_id
            body = frame[header.body_offset :]
            if key == API_VERSIONS:
                await self._send(up_writer, frame)
                await self._send(writer, await self._frame(up_reader))
            elif key == API_SASL_HANDSHAKE:
                if version < 1:
                    raise _Refused("SaslHandshake v0 (unframed SASL) is not served")
                (length,) = struct.unpack_from(">h", body)
                wanted = body[2 : 2 + length].decode(errors="replace")
                error = 0 if wanted in self.mechanisms else ERR_UNSUPPORTED_SASL_MECHANISM
                names = b"".join(_string(m) for m in self.mechanisms)
                reply = struct.pack(">ihi", corr, error, len(self.mechanisms)) + names
                await self._send(writer, reply)
                if error:
                    return False
                mechanism, server = wanted, None
            elif key == API_SASL_AUTHENTICATE:
                if mechanism is None:
                    await self._send(
                        writer,
                        self._auth_reply(corr, version, ERR_ILLEGAL_SASL_STATE, "no handshake"),
                    )
                    return False
                if version >= 2:
                    size, pos = _uvarint(body, 0)
                    token = body[pos : pos + size - 1]
                else:
                    (size,) = struct.unpack_from(">i", body)
                    token = body[4 : 4 + size]
                try:
                    if server is None:
                        users = self._auth[mechanism]

                        def auth_fn(
                            name: str, users: Mapping[str, tuple[bytes, bytes, bytes, int]] = users
                        ) -> tuple[bytes, bytes, bytes, int]:
                            nonlocal user
                            user = name
                            return users[name]

                        server = ScramMechanism(mechanism).make_server(auth_fn)
                        server.set_client_first(token.decode())
                        reply_token = server.get_server_first().encode()
                        await self._send(
                            writer, self._auth_reply(corr, version, 0, None, reply_token)
                        )
                        continue
                    server.set_client_final(token.decode())
                    reply_token = server.get_server_final().encode()
                except (KeyError, ScramException, UnicodeDecodeError) as exc:
                    known = user in self._auth[mechanism]
                    reason = "invalid credentials" if known else "unknown user"
                    self._record(Login(user, mechanism, False, f"{reason} ({type(exc).__name__})"))
                    message = (
                        "Authentication failed during authentication due to invalid "
                        f"credentials with SASL mechanism {mechanism}"
                    )
                    await self._send(
                        writer,
                        self._auth_reply(corr, version, ERR_SASL_AUTHENTICATION_FAILED, message),
                    )
                    return False
                await self._send(writer, self._auth_reply(corr, version, 0, None, reply_token))
                self._record(Login(user, mechanism, True))
                return True
            else:
                raise _Refused(f"api_key {key} before SASL login")

    @staticmethod
    def _auth_reply(
        corr: int, version: int, error: int, message: str | None, token: bytes = b""
    ) -> bytes:
        """A SaslAuthenticate response of `version` (0: no session lifetime; 2: flexible)."""
        if version >= 2:
            text = b"\x00" if message is None else _put_uvarint(len(message.encode()) + 1)
            if message is not None:
                text += message.encode()
            out = struct.pack(">i", corr) + b"\x00" + struct.pack(">h", error) + text
            out += _put_uvarint(len(token) + 1) + token + struct.pack(">q", 0) + b"\x00"
            return out
        text = struct.pack(">h", -1) if message is None else _string(message)
        out = struct.pack(">ih", corr, error) + text + struct.pack(">i", len(token)) + token
        if version >= 1:
            out += struct.pack(">q", 0)  # session lifetime: none
        return out

    @staticmethod
    async def _relay(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(256 * 1024):
                    dst.write(data)
                    await dst.drain()
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        tasks = [
            asyncio.ensure_future(pump(reader, up_writer)),
            asyncio.ensure_future(pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
