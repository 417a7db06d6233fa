"""The HTTPS listener's certificate: the configured one, or a self-signed one made once.

The generated certificate is its own trust anchor: clients pass :func:`certificate_path` as their
CA file (``httpx.Client(verify=...)``, ``curl --cacert``). It carries the extensions strict
verifiers (Python 3.13's ``VERIFY_X509_STRICT``) expect, and is made again when it no longer
covers the load balancer's address or is about to expire.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crosszone.config.topology import Topology
from crosszone.errors import ConfigError, ConfigProblem, RuntimeStateError

_VALIDITY = dt.timedelta(days=825)
_RENEW_BEFORE = dt.timedelta(days=30)


def certificate_path(run_dir: Path) -> Path:
    """The generated certificate (PEM), which clients trust as their CA file."""
    return run_dir / "tls" / "cert.pem"


def key_path(run_dir: Path) -> Path:
    return run_dir / "tls" / "key.pem"


def ensure_certificate(topology: Topology, run_dir: Path) -> ssl.SSLContext:
    """A server SSL context for the load balancer's HTTPS listeners."""
    tls = topology.load_balancer.tls
    if tls.cert_file and tls.key_file:
        cert, key = Path(tls.cert_file), Path(tls.key_file)
        where = "load_balancer.tls.cert_file"
    else:
        cert, key = certificate_path(run_dir), key_path(run_dir)
        where = "<generated certificate>"
        addresses = _addresses(topology.load_balancer.address)
        if not _usable(cert, key, addresses):
            _generate(cert, key, addresses)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        problem = ConfigProblem(where, str(cert), f"cannot load certificate/key: {exc}")
        raise ConfigError(str(cert), [problem]) from None
    return context


def _addresses(lb_address: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.IPv4Address("127.0.0.1")]
    try:
        address = ipaddress.ip_address(lb_address)
    except ValueError:  # a host name: "localhost" is always covered
        return out
    if address not in out and not address.is_unspecified:
        out.append(address)
    return out


def _usable(cert: Path, key: Path,
            addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    """True if the files exist, the certificate covers ``addresses`` and is not near expiry."""
    if not (cert.is_file() and key.is_file()):
        return False
    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
        san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    covered = set(san.get_values_for_type(x509.IPAddress))
    fresh = loaded.not_valid_after_utc - dt.datetime.now(dt.UTC) > _RENEW_BEFORE
    return fresh and all(a in covered for a in addresses)


def _generate(cert: Path, key: Path,
              addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crosszone load balancer"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crosszone (self-signed)")])
    now = dt.datetime.now(dt.UTC)
    public = private.public_key()
    san = [x509.DNSName("localhost"), *(x509.IPAddress(a) for a in addresses)]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    try:
        cert.parent.mkdir(parents=True, exist_ok=True)
        _write(key, key_pem, 0o600)
        _write(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise RuntimeStateError(f"cannot write TLS files under {cert.parent}: {exc}") from exc


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically, created with ``mode`` (the key is never readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # also when the file existed, and whatever the umask
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
