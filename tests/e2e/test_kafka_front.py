"""The TLS + SCRAM front of the secured test broker at the protocol level (raw frames over a
real TLS connection): what it refuses before a login, and what it passes through."""

from __future__ import annotations

import socket
import ssl
import struct

from tests.fixtures.kafka_secure import SecureKafka


def _connect(kafka: SecureKafka) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(kafka.pki.ca))
    raw = socket.create_connection(("127.0.0.1", kafka.front.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _request(api_key: int, version: int, correlation: int, body: bytes = b"") -> bytes:
    payload = struct.pack(">hhih", api_key, version, correlation, 4) + b"test" + body
    return struct.pack(">i", len(payload)) + payload


def _response(sock: ssl.SSLSocket) -> bytes:
    head = sock.recv(4)
    if not head:
        return b""
    size = struct.unpack(">i", head)[0]
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed mid-response"
        data += chunk
    return data


def test_requests_before_login_are_refused(secure_kafka: SecureKafka) -> None:
    """A Metadata request before SASL closes the connection with no answer."""
    with _connect(secure_kafka) as sock:
        sock.sendall(_request(3, 0, 7, struct.pack(">i", 0)))
        assert _response(sock) == b""
    assert any("api_key 3 before SASL login" in r for r in secure_kafka.front.refused)


def test_api_versions_pass_through_and_unknown_mechanisms_are_refused(
    secure_kafka: SecureKafka,
) -> None:
    """ApiVersions is answered by the broker (it lists SaslHandshake and SaslAuthenticate);
    SaslHandshake names the front's mechanisms and refuses PLAIN with error 33."""
    with _connect(secure_kafka) as sock:
        sock.sendall(_request(18, 0, 1))
        reply = _response(sock)
        corr, error, count = struct.unpack_from(">ihi", reply)
        assert (corr, error) == (1, 0)
        keys = {struct.unpack_from(">h", reply, 10 + 6 * i)[0] for i in range(count)}
        assert {17, 18, 36} <= keys
        sock.sendall(_request(17, 1, 2, struct.pack(">h", 5) + b"PLAIN"))
        reply = _response(sock)
        corr, error, count = struct.unpack_from(">ihi", reply)
        assert (corr, error, count) == (2, 33, 2)
        names, pos = [], 10
        for _ in range(count):
            (n,) = struct.unpack_from(">h", reply, pos)
            names.append(reply[pos + 2 : pos + 2 + n].decode())
            pos += 2 + n
        assert names == ["SCRAM-SHA-256", "SCRAM-SHA-512"]
        assert _response(sock) == b""  # closed after the refusal
