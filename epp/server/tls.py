"""TLS for the ext_proc port, as the Go EPP's ``--secure-serving``, ``--cert-path`` and ``--enable-cert-reload``.

With ``--cert-path DIR`` the key pair is ``DIR/tls.crt`` and ``DIR/tls.key``; without it a
self-signed certificate is generated in memory at start (Go does the same), valid for
localhost, 127.0.0.1, ::1 and the bind address.

Reload: gRPC asks ``CertificateReloader.fetch`` for a new configuration at every TLS
handshake. It compares the files' stat signature with the last one loaded and re-reads
them only when it changed, so a rotated certificate is served to the next new
connection; established connections keep theirs. A pair that does not load or does not
match (the key written before the certificate, say) is skipped and the previous pair
stays in use until both files agree.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from epp.errors import ConfigError

__all__ = ["CERT_FILE", "KEY_FILE", "CertificateReloader", "KeyPair", "load_key_pair", "self_signed_key_pair",
           "server_credentials"]

log = logging.getLogger("epp.tls")

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
_SELF_SIGNED_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _subject_alt_names(bind: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    addresses = {"127.0.0.1", "::1"}
    host = bind.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host and host != "localhost":
            names.append(x509.DNSName(host))
    else:
        if host not in ("0.0.0.0", "::"):  # a wildcard is no name a client can dial
            addresses.add(host)
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)]
    return names


def self_signed_key_pair(bind: str) -> KeyPair:
    """A fresh self-signed certificate (P-256) for ``bind``, never written to disk."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "epp"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "epp ext_proc (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew between hosts
        .not_valid_after(now + _SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(bind)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


def load_key_pair(cert_dir: Path) -> KeyPair:
    """Read and check ``tls.crt``/``tls.key``: both parse and the key belongs to the certificate."""
    cert_path, key_path = cert_dir / CERT_FILE, cert_dir / KEY_FILE
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise ConfigError("--cert-path", f"cannot read {exc.filename}: {exc.strerror}") from exc
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("--cert-path", f"{cert_dir}: not a PEM certificate and unencrypted key: {exc}") from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError("--cert-path", f"{key_path} is not the key of {cert_path}")
    return KeyPair(cert_pem, key_pem)


def _signature(cert_dir: Path) -> tuple[tuple[int, int, int, int], ...]:
    sig = []
    for name in (CERT_FILE, KEY_FILE):
        st = os.stat(cert_dir / name)
        sig.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
    return tuple(sig)


class CertificateReloader:
    """The certificate fetcher gRPC calls per handshake; re-reads the pair only when its files changed."""

    def __init__(self, cert_dir: Path) -> None:
        self.cert_dir = cert_dir
        self.pair = load_key_pair(cert_dir)
        self.reloads = 0
        self._loaded = _signature(cert_dir)
        self._rejected: tuple[tuple[int, int, int, int], ...] | None = None
        self._last_error = ""

    def initial(self) -> grpc.ServerCertificateConfiguration:
        return _configuration(self.pair)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Runs inside gRPC's handshake: it must never raise, or the connection fails.
        try:
            current = _signature(self.cert_dir)
            if current in (self._loaded, self._rejected):
                return None
            pair = load_key_pair(self.cert_dir)
        except Exception as exc:  # noqa: BLE001 - any bad pair (even a key type cryptography lacks) keeps the old one
            try:
                self._rejected = _signature(self.cert_dir)
            except OSError:
                self._rejected = None
            if str(exc) != self._last_error:  # once per distinct problem, not once per handshake
                self._last_error = str(exc)
                log.warning("certificate reload skipped, still serving the previous certificate: %s", exc)
            return None
        self.pair, self._loaded, self._rejected, self._last_error = pair, current, None, ""
        self.reloads += 1
        log.info("certificate reloaded from %s", self.cert_dir)
        return _configuration(pair)


def _configuration(pair: KeyPair) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(pair.key_pem, pair.cert_pem)])


def server_credentials(cert_dir: Path | None, reload: bool, bind: str) -> tuple[grpc.ServerCredentials, str]:
    """Credentials for the ext_proc port and a one-line description for the start-up log."""
    if cert_dir is None:
        pair = self_signed_key_pair(bind)
        return grpc.ssl_server_credentials([(pair.key_pem, pair.cert_pem)]), "TLS, self-signed certificate"
    if not reload:
        pair = load_key_pair(cert_dir)
        return grpc.ssl_server_credentials([(pair.key_pem, pair.cert_pem)]), f"TLS, certificate from {cert_dir}"
    reloader = CertificateReloader(cert_dir)
    creds = grpc.dynamic_ssl_server_credentials(reloader.initial(), reloader.fetch,
                                                require_client_authentication=False)
    return creds, f"TLS, certificate from {cert_dir}, reloaded on change"
