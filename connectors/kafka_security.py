"""Why a TLS or SASL connection to Kafka failed, in one message naming the setting to fix.

librdkafka reports these failures as retried connection errors (a SASL refusal, a generic
"certificate verify failed" for both an untrusted CA and a host-name mismatch, or only a
closed connection for a plaintext client at a TLS listener). `diagnose` turns the errors
and log lines one metadata attempt collected into a `KafkaSecurityError` message; where
librdkafka's text cannot tell the causes apart it probes the broker address with the
standard library's `ssl` (CA and host name checked separately; a TLS handshake tried where
plaintext was refused). The probes send no Kafka request and no credential.

Messages name the user (never the password), the CA file and the broker address; every
message is scrubbed of the configured password as a last guard.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaError

PROBE_TIMEOUT_S = 2.0
"""Bound on one TLS probe of a broker address."""

SaslEnv = tuple[str, str]
"""The environment variables holding the SASL user name and password."""


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]"), int(port)


def _probe(host: str, port: int, ctx: ssl.SSLContext) -> ssl.SSLError | OSError | None:
    """The error of one TLS handshake with `host:port` under `ctx` (None: it succeeded)."""
    try:
        with (
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except (ssl.SSLError, OSError) as exc:
        return exc


def _context(ca_location: str | None) -> ssl.SSLContext:
    if ca_location and os.path.isdir(ca_location):
        return ssl.create_default_context(capath=ca_location)
    return ssl.create_default_context(cafile=ca_location or None)


def speaks_tls(address: str) -> bool:
    """Whether `address` completes a TLS handshake (certificate not checked)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return _probe(*_split(address), ctx) is None


def certificate_problem(address: str, ca_location: str | None) -> str | None:
    """``"untrusted"``, ``"hostname"`` or None for the certificate `address` serves."""
    host, port = _split(address)
    chain = _context(ca_location)
    chain.check_hostname = False
    if isinstance(_probe(host, port, chain), ssl.SSLCertVerificationError):
        return "untrusted"
    if isinstance(_probe(host, port, _context(ca_location)), ssl.SSLCertVerificationError):
        return "hostname"
    return None


def _env_hint(sasl_env: SaslEnv | None) -> str:
    if sasl_env is None:
        return "the environment variables named by kafka.sasl.username_env / password_env"
    return f"{sasl_env[0]} / {sasl_env[1]} (kafka.sasl.username_env / password_env)"


def diagnose(
    settings: Mapping[str, str],
    errors: Iterable[KafkaError],
    logs: Iterable[str],
    *,
    sasl_env: SaslEnv | None = None,
) -> str | None:
    """The cause of a failed connection and the setting to fix, or None if not a TLS/SASL one.

    `errors` are librdkafka's `error_cb` reports and `logs` its log lines for one attempt
    against `settings` (librdkafka client settings).
    """
    servers = settings.get("bootstrap.servers", "")
    protocol = settings.get("security.protocol", "plaintext").upper()
    ca = settings.get("ssl.ca.location") or None
    texts = [e.str() for e in errors]
    lines = list(logs)
    if any("SASL authentication error" in t or "SASL authentication failed" in t for t in texts):
        user = settings.get("sasl.username", "")
        mechanism = settings.get("sasl.mechanism", "")
        return (
            f"SASL authentication failed for user {user!r} with {mechanism}: the "
            f"broker refused the credentials (wrong password or unknown user). Check "
            f"{_env_hint(sasl_env)} and kafka.sasl.mechanism"
        )
    address = servers.split(",")[0]
    if any("certificate verify failed" in t for t in texts):
        problem = certificate_problem(address, ca)
        if problem == "hostname":
            host = _split(address)[0]
            return (
                f"TLS: the certificate of broker {address} is signed by a trusted CA but not "
                f"issued for the host name {host}: list the broker in kafka.brokers by a name "
                "its certificate carries (or, only for a test, set "
                "kafka.tls.endpoint_identification = false)"
            )
        where = ca or "unset, so the system CAs"
        return (
            f"TLS: the certificate of broker {address} is not trusted by the CA in "
            f"kafka.tls.ca_location ({where}): point kafka.tls.ca_location at the CA that "
            "signed the broker's certificate"
        )
    ssl_errors = [t for t in texts if "SSL handshake failed" in t]
    if ssl_errors:
        reason = ssl_errors[0].split("SSL handshake failed: ", 1)[-1]
        return (
            f"TLS handshake with broker {address} failed: {reason}. Check kafka.tls.* and "
            "kafka.security_protocol"
        )
    refused_plaintext = protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and any(
        "APIVERSION_QUERY" in ln and "Disconnected" in ln for ln in lines
    )
    if refused_plaintext and speaks_tls(address):
        return (
            f"broker {address} speaks TLS but kafka.security_protocol is {protocol}: set "
            'kafka.security_protocol = "SASL_SSL" (or "SSL" without SASL) and '
            "kafka.tls.ca_location"
        )
    if protocol in ("SSL", "PLAINTEXT") and any(
        "closed by peer" in ln and "in state UP" in ln for ln in lines
    ):
        return (
            f"broker {address} closed the connection before answering any request: it "
            f"probably requires a SASL login, and kafka.security_protocol is {protocol}: set "
            'kafka.security_protocol = "SASL_SSL" (or "SASL_PLAINTEXT") and kafka.sasl'
        )
    return None


def scrub(message: str, settings: Mapping[str, str]) -> str:
    """`message` with the configured SASL password (if any) replaced by ``***``."""
    password = settings.get("sasl.password", "")
    return message.replace(password, "***") if password else message
