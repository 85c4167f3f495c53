"""Throwaway certificates for TLS tests, made at test time with the `cryptography` package.

`make_test_pki(directory)` writes PEM files for: a CA; a server certificate signed by it for
``127.0.0.1`` and ``localhost``; a server certificate signed by the same CA for another host
name only (``wrong-host.invalid``: a client checking host names must refuse it); and a
second, unrelated CA that signed neither (a client trusting only it must refuse both). Keys
are ECDSA P-256 (fast to make), unencrypted, readable only by the owner. Nothing here is fit
for anything but tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["TestPKI", "make_test_pki"]

WRONG_HOST = "wrong-host.invalid"
"""The only name in `TestPKI.wrong_host_cert`."""


@dataclass(frozen=True, slots=True)
class TestPKI:
    """Paths of the PEM files `make_test_pki` wrote."""

    __test__ = False  # not a pytest test class despite its name

    ca: Path
    """The trusted CA's certificate (give it to clients as ``kafka.tls.ca_location``)."""
    server_cert: Path
    """Signed by `ca`, for IP 127.0.0.1 and DNS localhost."""
    server_key: Path
    wrong_host_cert: Path
    """Signed by `ca`, for DNS `WRONG_HOST` only."""
    wrong_host_key: Path
    other_ca: Path
    """A second CA that signed nothing here."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(
        now + dt.timedelta(days=2)
    )


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _validity(builder).sign(key, hashes.SHA256()), key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName],
    common_name: str,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return _validity(builder).sign(ca_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def make_test_pki(directory: Path) -> TestPKI:
    """Write a fresh CA, its server certificates and an unrelated CA under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("contextstream test CA")
    other, _ = _ca("contextstream untrusted CA")
    server, server_key = _leaf(
        ca,
        ca_key,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        "localhost",
    )
    wrong, wrong_key = _leaf(ca, ca_key, [x509.DNSName(WRONG_HOST)], WRONG_HOST)
    return TestPKI(
        ca=_write_cert(directory / "ca.pem", ca),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server.key", server_key),
        wrong_host_cert=_write_cert(directory / "wrong-host.pem", wrong),
        wrong_host_key=_write_key(directory / "wrong-host.key", wrong_key),
        other_ca=_write_cert(directory / "other-ca.pem", other),
    )
