"""DICOM TLS: DCMTK's storescp TLS options mapped onto Python's ``ssl`` (docs/tls.md has the mapping).

The rest of storescpd uses the names below. Inside: ``suites`` (DCMTK's ciphersuites and profiles),
``files`` (keys, certificates, CAs, CRLs and DH parameters, with errors that name the fix),
``context`` (which connections are TLS, validation, the server context, built while the
configuration is validated) and ``handshake`` (run in the worker, bounded by the ACSE timeout,
and the reason it failed).
"""

from storescpd.dicom.tls.context import (
    ALPN_DICOM, TLS_ROLE, VERIFY_MODES, TLSSetupError, applies, build_context, enabled, note_listeners,
    server_context, validate,
)
from storescpd.dicom.tls.handshake import REASONS, HandshakeFailed, classify, handshake
from storescpd.dicom.tls.suites import PROFILES, SUITE_BY_NAME, SUITES, Profile, Suite, available_openssl_names, list_ciphers

__all__ = [
    "ALPN_DICOM", "PROFILES", "REASONS", "SUITES", "SUITE_BY_NAME", "TLS_ROLE", "VERIFY_MODES", "HandshakeFailed",
    "Profile", "Suite", "TLSSetupError", "applies", "available_openssl_names", "build_context", "classify",
    "enabled", "handshake", "list_ciphers", "note_listeners", "server_context", "validate",
]
