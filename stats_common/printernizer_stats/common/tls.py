"""TLS material for the ingest server.

In production the operator passes a certificate and key. For local use the
server makes its own: a private CA and a server certificate signed by it, kept
in a directory (created 0700) and reused on later starts; agents trust the
CA's certificate (printed at start-up).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=825)
# The names a self-made server certificate is valid for.
LOCAL_NAMES = ("localhost",)
LOCAL_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    private_key: Path
    ca_certificate: Path | None  # set for self-made material

    def server_credentials_pem(self) -> tuple[bytes, bytes]:
        return self.private_key.read_bytes(), self.certificate.read_bytes()


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Printernizer usage statistics (self-made)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate_names(path: Path) -> set[str]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(names.get_values_for_type(x509.DNSName))


def ensure_self_made(directory: Path, now: dt.datetime | None = None, names: Sequence[str] = ()) -> TlsFiles:
    """The CA and server certificate in `directory`, made on first use. The
    certificate is valid for localhost and for `names` (host names the server
    is reached by, e.g. a container's service name); when an existing one
    lacks any of them, new material is made (the CA's key is never kept)."""
    ca_path = directory / "ca.crt"
    files = TlsFiles(directory / "server.crt", directory / "server.key", ca_path)
    existing = files.certificate.exists() and files.private_key.exists() and ca_path.exists()
    if existing and set(names) <= _certificate_names(files.certificate):
        return files
    now = now or dt.datetime.now(dt.UTC)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Printernizer statistics local CA")
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server_key = ec.generate_private_key(ec.SECP256R1())
    dns_names = list(dict.fromkeys([*LOCAL_NAMES, *names]))
    alternative_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in LOCAL_ADDRESSES]
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + SERVER_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    # The CA's key is not kept: nothing else is ever signed with it.
    _write_private(files.private_key, _pem(server_key))
    files.certificate.write_bytes(server_certificate.public_bytes(serialization.Encoding.PEM))
    ca_path.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    return files


def given_files(certificate: Path, private_key: Path) -> TlsFiles:
    """Operator-provided material; both files must exist."""
    for path in (certificate, private_key):
        if not path.is_file():
            raise FileNotFoundError(f"TLS file not found: {path}")
    return TlsFiles(certificate, private_key, None)
