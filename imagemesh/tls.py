"""TLS for every gRPC listener and dialer: the one place that reads certificates and builds
gRPC credentials.

Modes (chosen by settings, logged at start by each process):

- **plaintext**: no TLS setting given. The demo and local tests run so; say it explicitly in
  production by leaving the settings empty, never by accident (the start log says "plaintext").
- **TLS**: the gateway has a certificate and key (`IMAGEMESH_TLS_CERT`, `IMAGEMESH_TLS_KEY`);
  dialers (workers, `imagemesh.Client`, the CLI) verify it against `IMAGEMESH_TLS_CA`.
- **mutual TLS**: the gateway also has `IMAGEMESH_TLS_CLIENT_CA` and then *requires* every
  peer to present a certificate signed by it; dialers present theirs with `IMAGEMESH_TLS_CERT`
  and `IMAGEMESH_TLS_KEY` (for a dialer these name its client certificate).

Rotation: the gateway's credentials are `grpc.dynamic_ssl_server_credentials` whose fetcher
gRPC calls before every new handshake; it re-reads the files when one's mtime, size or inode
changed (cert-manager and kubelet replace Secret files by a symlink swap), so new connections
get the new certificate without a restart and established ones keep theirs. A rotation caught
half-written (the key no longer matches the certificate) is skipped with a warning and the
previous pair kept: the next handshake tries again. Dialers read their files whenever they open
a channel (workers do so on every reconnect).

The health and metrics ports stay plaintext on purpose: kubelet's gRPC probes and Prometheus
scrapes carry no secret and can't present our certificates; bind them to 127.0.0.1 or keep them
behind the NetworkPolicy (k8s/base/network-policy.yaml).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("imagemesh.tls")


class TlsConfigError(ValueError):
    """TLS settings that can't work: one half of a pair, an unreadable or malformed file.
    The message names the setting and never contains key material."""


def _read(setting: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{setting}: {path} is not a PEM file")
    return data


def _stamp(path: str) -> tuple[int, int, int]:
    """What changes when a file is replaced (in place or by a symlink swap)."""
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


@dataclass(frozen=True)
class ServerTls:
    """The gateway's side: its certificate chain and key, and for mTLS the CA its peers'
    certificates must chain to. Paths, read when credentials are built and on rotation."""

    cert: str
    key: str
    client_ca: str = ""

    @classmethod
    def from_settings(cls, cert: str, key: str, client_ca: str = "") -> "ServerTls | None":
        """None (plaintext) when nothing is set; TlsConfigError for half a configuration."""
        if not (cert or key or client_ca):
            return None
        if not (cert and key):
            raise TlsConfigError("IMAGEMESH_TLS_CERT and IMAGEMESH_TLS_KEY: set both (the server's "
                                 "certificate and its key) or neither")
        tls = cls(cert, key, client_ca)
        tls._configuration()  # fail at start, not at the first handshake
        return tls

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)

    def describe(self) -> str:
        if self.mutual:
            return (f"mutual TLS (certificate {self.cert}; client certificates required, "
                    f"verified against {self.client_ca})")
        return f"TLS (certificate {self.cert}; clients not asked for certificates)"

    def _paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.cert, self.key, self.client_ca) if p)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        cert = _read("IMAGEMESH_TLS_CERT", self.cert)
        key = _read("IMAGEMESH_TLS_KEY", self.key)
        _check_pair(cert, key)
        roots = _read("IMAGEMESH_TLS_CLIENT_CA", self.client_ca) if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=roots)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up changed files at the next handshake."""
        return CertificateReloader(self).credentials()


class CertificateReloader:
    """The certificate fetcher of `dynamic_ssl_server_credentials`. gRPC calls it from its own
    threads before each handshake, so it only stats the files unless one changed."""

    def __init__(self, tls: ServerTls) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._stamps = self._current_stamps()
        self.initial = tls._configuration()
        self.reloads = 0

    def _current_stamps(self) -> tuple | None:
        try:
            return tuple(_stamp(p) for p in self.tls._paths())
        except OSError:
            return None  # mid-swap: a file is briefly missing; try again next handshake

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        stamps = self._current_stamps()
        if stamps is None or stamps == self._stamps:
            return None
        with self._lock:
            if stamps == self._stamps:
                return None
            try:
                config = self.tls._configuration()
            except (TlsConfigError, ValueError) as exc:
                log.warning("certificate files changed but can't be used yet (%s); keeping the "
                            "previous certificate", exc)
                return None
            self._stamps = stamps
            self.reloads += 1
            log.info("certificate files changed: new connections get the new certificate")
            return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self, require_client_authentication=self.tls.mutual)


def _check_pair(cert: bytes, key: bytes) -> None:
    """The key must belong to the certificate: gRPC would otherwise fail each handshake with
    an opaque error. Uses `cryptography` when it is installed (the server extra has it)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # the client-only install: gRPC itself will complain
        return
    try:
        certificate = x509.load_pem_x509_certificate(cert)
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsConfigError(f"IMAGEMESH_TLS_CERT/IMAGEMESH_TLS_KEY: not a usable certificate and "
                             f"unencrypted private key ({type(exc).__name__})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (certificate.public_key().public_bytes(serialization.Encoding.DER, public)
            != private.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise TlsConfigError("IMAGEMESH_TLS_KEY: the key does not belong to the certificate in IMAGEMESH_TLS_CERT")


@dataclass(frozen=True)
class ChannelTls:
    """A dialer's side: the CA that signed the gateway's certificate ('' = the system's roots),
    for mTLS this process's client certificate and key, and a server name to verify instead of
    the target's host (tests, an ingress or a headless Service whose certificate names another
    host)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    @classmethod
    def from_settings(cls, ca: str = "", cert: str = "", key: str = "", server_name: str = "") -> "ChannelTls | None":
        """None (plaintext) when no TLS setting is given; TlsConfigError for half a pair."""
        if not (ca or cert or key or server_name):
            return None
        if bool(cert) != bool(key):
            raise TlsConfigError("IMAGEMESH_TLS_CERT and IMAGEMESH_TLS_KEY: set both (this process's "
                                 "client certificate and its key, for mutual TLS) or neither")
        tls = cls(ca, cert, key, server_name)
        tls.credentials()  # fail at start on a missing file
        return tls

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "ChannelTls | None":
        """From IMAGEMESH_TLS_CA / _CERT / _KEY / _SERVER_NAME (the CLI and scripts)."""
        env = os.environ if environ is None else environ
        return cls.from_settings(env.get("IMAGEMESH_TLS_CA", ""), env.get("IMAGEMESH_TLS_CERT", ""),
                                 env.get("IMAGEMESH_TLS_KEY", ""), env.get("IMAGEMESH_TLS_SERVER_NAME", ""))

    def describe(self) -> str:
        roots = self.ca or "the system's CA certificates"
        client = f", client certificate {self.cert}" if self.cert else ""
        name = f", expecting server name {self.server_name}" if self.server_name else ""
        return f"TLS (server verified against {roots}{client}{name})"

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files as they are now (raises TlsConfigError)."""
        roots = _read("IMAGEMESH_TLS_CA", self.ca) if self.ca else None
        cert = _read("IMAGEMESH_TLS_CERT", self.cert) if self.cert else None
        key = _read("IMAGEMESH_TLS_KEY", self.key) if self.key else None
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=cert)

    def options(self) -> list[tuple[str, object]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def describe_channel(tls: ChannelTls | None) -> str:
    return tls.describe() if tls is not None else "plaintext (no IMAGEMESH_TLS_* setting)"


def describe_server(tls: ServerTls | None) -> str:
    return tls.describe() if tls is not None else "plaintext (no IMAGEMESH_TLS_CERT/KEY: anyone on the network can read the traffic)"


def channel(target: str, tls: ChannelTls | None, options: list[tuple[str, object]]) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`, over TLS when `tls` is given, else plaintext."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])
