"""Self-made TLS material: valid for localhost and for the host names asked for."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from printernizer_stats.common.tls import ensure_self_made


def dns_names(path: Path) -> set[str]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.DNSName))


def test_the_certificate_carries_the_names_asked_for(tmp_path: Path) -> None:
    plain = ensure_self_made(tmp_path / "plain")
    assert dns_names(plain.certificate) == {"localhost"}
    named = ensure_self_made(tmp_path / "named", names=["analytics", "stats.example.org"])
    assert dns_names(named.certificate) == {"localhost", "analytics", "stats.example.org"}


def test_existing_material_is_kept_unless_a_name_is_missing(tmp_path: Path) -> None:
    first = ensure_self_made(tmp_path, names=["analytics"])
    assert first.ca_certificate is not None
    ca = first.ca_certificate.read_bytes()
    ensure_self_made(tmp_path, names=["analytics"])
    ensure_self_made(tmp_path)  # fewer names: still valid, kept
    assert first.ca_certificate.read_bytes() == ca
    ensure_self_made(tmp_path, names=["analytics", "gateway-internal"])  # a new name: made anew
    assert first.ca_certificate.read_bytes() != ca
    assert "gateway-internal" in dns_names(first.certificate)
