"""The TLS server handshake on an accepted socket, and why one failed, in words and as a metric label."""

from __future__ import annotations

import socket
import ssl
from typing import Any

from storescpd.dicom.tls.context import server_context
from storescpd.dicom.tls.files import ssl_text

# Why a handshake failed: the label of storescpd_tls_handshake_failures_total{reason=...}.
REASONS = (
    "protocol_version", "no_client_certificate", "untrusted_issuer", "revoked", "certificate_expired",
    "certificate_invalid", "crl_unavailable", "no_shared_cipher", "peer_rejected_certificate",
    "sni_mismatch", "not_tls", "timeout", "peer_closed", "other",
)


class HandshakeFailed(Exception):
    """The handshake failed: ``reason`` is one of REASONS, ``cause`` a sentence for the log."""

    def __init__(self, reason: str, cause: str) -> None:
        super().__init__(cause)
        self.reason = reason
        self.cause = cause


def handshake(sock: socket.socket, config: Any) -> ssl.SSLSocket:
    """TLS server handshake on an accepted socket, bounded by the ACSE timeout.

    Returns the wrapped (blocking) socket; raises HandshakeFailed with a reason from
    REASONS and a readable cause. The caller closes ``sock`` on failure.
    """
    ctx = server_context(config)
    timeout = float(config.acse_timeout)
    sock.settimeout(timeout)
    tls_sock: ssl.SSLSocket | None = None
    try:
        tls_sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls_sock.do_handshake()
    except Exception as exc:
        refused_name = getattr(tls_sock, "storescpd_sni_refused", None)
        (tls_sock or sock).close()
        raise HandshakeFailed(*classify(exc, timeout, config, refused_name)) from None
    tls_sock.settimeout(None)
    return tls_sock


# unable to get issuer (locally), self-signed, leaf signature, signature of a same-named issuer fails
_VERIFY_UNTRUSTED = {2, 7, 18, 19, 20, 21}


def classify(exc: BaseException, timeout: float, config: Any = None,
             refused_name: str | None = None) -> tuple[str, str]:
    """(reason, readable cause) of a failed handshake."""
    profile = getattr(config, "values", {}).get("tls_profile", "bcp195-rfc8996") if config else "?"
    if refused_name is not None:
        return "sni_mismatch", f"client asked for server name '{refused_name}' (--expect-sni)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout", f"no complete TLS handshake within {timeout:g} s (-ta)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == 23:
            return "revoked", f"client certificate is revoked ({exc.verify_message})"
        if code in _VERIFY_UNTRUSTED:
            return "untrusted_issuer", (f"client certificate is not issued by a trusted CA "
                                        f"({exc.verify_message}; check +cf/+cd)")
        if code == 3:
            return "crl_unavailable", f"no CRL for the client certificate's issuer ({exc.verify_message}; add +crl)"
        if code in (9, 10):
            return "certificate_expired", f"client certificate is not valid now ({exc.verify_message})"
        return "certificate_invalid", f"client certificate refused ({exc.verify_message})"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, EOFError)):
        return "peer_closed", "the client closed the connection during the TLS handshake"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        text = ssl_text(exc)
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_client_certificate", "the client sent no certificate, and -rc (the default) requires one"
        if reason in ("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "TLSV1_ALERT_PROTOCOL_VERSION",
                      "NO_PROTOCOLS_AVAILABLE", "VERSION_TOO_HIGH"):
            return "protocol_version", (f"wrong protocol version: the client's TLS versions are not allowed by "
                                        f"profile {profile} ({text})")
        if reason in ("NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "NO_SUITABLE_SIGNATURE_ALGORITHM"):
            return "no_shared_cipher", f"no ciphersuite in common with profile {profile} ({text})"
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "PACKET_LENGTH_TOO_LONG",
                      "UNKNOWN_PROTOCOL", "RECORD_LENGTH_MISMATCH", "UNEXPECTED_RECORD"):
            return "not_tls", f"the client does not speak TLS (plain DICOM on the TLS port?) ({text})"
        if reason.startswith(("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                              "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_DECRYPT_ERROR",
                              "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_EXPIRED")):
            return "peer_rejected_certificate", f"the client rejected storescpd's certificate ({text})"
        if reason == "CALLBACK_FAILED":
            return "sni_mismatch", f"the client's server name was refused (--expect-sni) ({text})"
        return "other", text
    if isinstance(exc, OSError):
        return "peer_closed", f"connection error during the TLS handshake: {exc.strerror or exc}"
    return "other", f"{type(exc).__name__}: {exc}"
