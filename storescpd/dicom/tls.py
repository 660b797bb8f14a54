"""DICOM TLS: DCMTK's storescp TLS options mapped onto Python's ``ssl``.

The server context is built (and every file read) while the configuration is validated,
so a reload with a broken key is refused and the old context stays. The handshake runs in
the worker that serves the association, bounded by the ACSE timeout.

Where ``ssl`` cannot express a DCMTK profile exactly the profile is refused with the
reason; nothing is weakened silently. See docs/tls.md for the mapping.
"""

from __future__ import annotations

import base64
import getpass
import logging
import os
import re
import socket
import ssl
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

LOG = logging.getLogger("storescpd.tls")

TLS_ROLE = "dicom-tls"
ALPN_DICOM = "dicom"

# Why a handshake failed: the label of storescpd_tls_handshake_failures_total{reason=...}.
REASONS = (
    "protocol_version", "no_client_certificate", "untrusted_issuer", "revoked", "certificate_expired",
    "certificate_invalid", "crl_unavailable", "no_shared_cipher", "peer_rejected_certificate",
    "sni_mismatch", "not_tls", "timeout", "peer_closed", "other",
)

# RFC 7919 ffdhe2048, the group DCMTK 3.6.8 loads when no +dp is given (public parameters).
FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


@dataclass(frozen=True)
class Suite:
    """One TLS 1.0-1.2 ciphersuite of DCMTK's table (dcmtls/libsrc/tlsciphr.cc)."""

    name: str  # the IANA name DCMTK uses on its command line
    openssl: str
    kx: str  # RSA (static), ECDH (static), ECDHE, DHE
    mac: str  # SHA1, SHA256, SHA384, AEAD
    bits: int  # 0: no encryption


def _suites(table: str) -> tuple[Suite, ...]:
    out = []
    for line in table.strip().splitlines():
        name, openssl_name, kx, mac, bits = line.split()
        out.append(Suite(name, openssl_name, kx, mac, int(bits)))
    return tuple(out)


# DCMTK's order, weakest first: a server offers them strongest first (server preference).
SUITES = _suites("""
TLS_RSA_WITH_NULL_SHA                         NULL-SHA                        RSA   SHA1   0
TLS_RSA_WITH_3DES_EDE_CBC_SHA                 DES-CBC3-SHA                    RSA   SHA1   168
TLS_RSA_WITH_AES_128_CBC_SHA                  AES128-SHA                      RSA   SHA1   128
TLS_RSA_WITH_CAMELLIA_128_CBC_SHA             CAMELLIA128-SHA                 RSA   SHA1   128
TLS_RSA_WITH_AES_128_CBC_SHA256               AES128-SHA256                   RSA   SHA256 128
TLS_RSA_WITH_AES_128_GCM_SHA256               AES128-GCM-SHA256               RSA   AEAD   128
TLS_ECDH_ECDSA_WITH_AES_128_CBC_SHA           ECDH-ECDSA-AES128-SHA           ECDH  SHA1   128
TLS_ECDH_RSA_WITH_AES_128_CBC_SHA             ECDH-RSA-AES128-SHA             ECDH  SHA1   128
TLS_ECDH_ECDSA_WITH_AES_128_CBC_SHA256        ECDH-ECDSA-AES128-SHA256        ECDH  SHA256 128
TLS_ECDH_RSA_WITH_AES_128_CBC_SHA256          ECDH-RSA-AES128-SHA256          ECDH  SHA256 128
TLS_ECDH_ECDSA_WITH_AES_128_GCM_SHA256        ECDH-ECDSA-AES128-GCM-SHA256    ECDH  AEAD   128
TLS_ECDH_RSA_WITH_AES_128_GCM_SHA256          ECDH-RSA-AES128-GCM-SHA256      ECDH  AEAD   128
TLS_RSA_WITH_CAMELLIA_256_CBC_SHA             CAMELLIA256-SHA                 RSA   SHA1   256
TLS_RSA_WITH_AES_256_CBC_SHA                  AES256-SHA                      RSA   SHA1   256
TLS_RSA_WITH_AES_256_CBC_SHA256               AES256-SHA256                   RSA   SHA256 256
TLS_RSA_WITH_AES_256_GCM_SHA384               AES256-GCM-SHA384               RSA   AEAD   256
TLS_ECDH_ECDSA_WITH_AES_256_CBC_SHA           ECDH-ECDSA-AES256-SHA           ECDH  SHA1   256
TLS_ECDH_RSA_WITH_AES_256_CBC_SHA             ECDH-RSA-AES256-SHA             ECDH  SHA1   256
TLS_ECDH_ECDSA_WITH_AES_256_CBC_SHA384        ECDH-ECDSA-AES256-SHA384        ECDH  SHA384 256
TLS_ECDH_RSA_WITH_AES_256_CBC_SHA384          ECDH-RSA-AES256-SHA384          ECDH  SHA384 256
TLS_ECDH_ECDSA_WITH_AES_256_GCM_SHA384        ECDH-ECDSA-AES256-GCM-SHA384    ECDH  AEAD   256
TLS_ECDH_RSA_WITH_AES_256_GCM_SHA384          ECDH-RSA-AES256-GCM-SHA384      ECDH  AEAD   256
TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA          ECDHE-ECDSA-AES128-SHA          ECDHE SHA1   128
TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA            ECDHE-RSA-AES128-SHA            ECDHE SHA1   128
TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256       ECDHE-ECDSA-AES128-SHA256       ECDHE SHA256 128
TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256         ECDHE-RSA-AES128-SHA256         ECDHE SHA256 128
TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256       ECDHE-ECDSA-AES128-GCM-SHA256   ECDHE AEAD   128
TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256         ECDHE-RSA-AES128-GCM-SHA256     ECDHE AEAD   128
TLS_DHE_DSS_WITH_AES_128_CBC_SHA              DHE-DSS-AES128-SHA              DHE   SHA1   128
TLS_DHE_DSS_WITH_CAMELLIA_128_CBC_SHA         DHE-DSS-CAMELLIA128-SHA         DHE   SHA1   128
TLS_DHE_RSA_WITH_AES_128_CBC_SHA              DHE-RSA-AES128-SHA              DHE   SHA1   128
TLS_DHE_RSA_WITH_CAMELLIA_128_CBC_SHA         DHE-RSA-CAMELLIA128-SHA         DHE   SHA1   128
TLS_DHE_DSS_WITH_AES_128_CBC_SHA256           DHE-DSS-AES128-SHA256           DHE   SHA256 128
TLS_DHE_RSA_WITH_AES_128_CBC_SHA256           DHE-RSA-AES128-SHA256           DHE   SHA256 128
TLS_DHE_DSS_WITH_AES_128_GCM_SHA256           DHE-DSS-AES128-GCM-SHA256       DHE   AEAD   128
TLS_DHE_RSA_WITH_AES_128_GCM_SHA256           DHE-RSA-AES128-GCM-SHA256       DHE   AEAD   128
TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA          ECDHE-ECDSA-AES256-SHA          ECDHE SHA1   256
TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA            ECDHE-RSA-AES256-SHA            ECDHE SHA1   256
TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384       ECDHE-ECDSA-AES256-SHA384       ECDHE SHA384 256
TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384         ECDHE-RSA-AES256-SHA384         ECDHE SHA384 256
TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 ECDHE-ECDSA-CHACHA20-POLY1305   ECDHE AEAD   256
TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256   ECDHE-RSA-CHACHA20-POLY1305     ECDHE AEAD   256
TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384       ECDHE-ECDSA-AES256-GCM-SHA384   ECDHE AEAD   256
TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384         ECDHE-RSA-AES256-GCM-SHA384     ECDHE AEAD   256
TLS_DHE_DSS_WITH_AES_256_CBC_SHA              DHE-DSS-AES256-SHA              DHE   SHA1   256
TLS_DHE_RSA_WITH_AES_256_CBC_SHA              DHE-RSA-AES256-SHA              DHE   SHA1   256
TLS_DHE_DSS_WITH_CAMELLIA_256_CBC_SHA         DHE-DSS-CAMELLIA256-SHA         DHE   SHA1   256
TLS_DHE_RSA_WITH_CAMELLIA_256_CBC_SHA         DHE-RSA-CAMELLIA256-SHA         DHE   SHA1   256
TLS_DHE_DSS_WITH_AES_256_CBC_SHA256           DHE-DSS-AES256-SHA256           DHE   SHA256 256
TLS_DHE_RSA_WITH_AES_256_CBC_SHA256           DHE-RSA-AES256-SHA256           DHE   SHA256 256
TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256     DHE-RSA-CHACHA20-POLY1305       DHE   AEAD   256
TLS_DHE_DSS_WITH_AES_256_GCM_SHA384           DHE-DSS-AES256-GCM-SHA384       DHE   AEAD   256
TLS_DHE_RSA_WITH_AES_256_GCM_SHA384           DHE-RSA-AES256-GCM-SHA384       DHE   AEAD   256
""")
SUITE_BY_NAME = {s.name: s for s in SUITES}
SUITE_RANK = {s.name: i for i, s in enumerate(SUITES)}

_BCP195_ND = ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
              "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384")


@dataclass(frozen=True)
class Profile:
    """A DCMTK security profile as Python's ssl expresses it.

    ``optional`` suites are dropped with a warning when OpenSSL lacks them (DCMTK does the
    same for 3DES); a missing ``suites`` entry refuses the profile. ``legacy`` profiles
    allow TLS 1.0/1.1, which OpenSSL 3 only negotiates at security level 0 (DCMTK always
    runs at level 0).
    """

    title: str
    minimum: ssl.TLSVersion
    maximum: ssl.TLSVersion
    suites: tuple[str, ...]
    optional: tuple[str, ...] = ()
    legacy: bool = False
    extra_suites: str = "no_null"  # +cs policy: no_null, no_null_no_sha1, none, any
    refused: str = ""


_TLS1 = ssl.TLSVersion.TLSv1
_TLS12 = ssl.TLSVersion.TLSv1_2
_TLS13 = ssl.TLSVersion.TLSv1_3

PROFILES: dict[str, Profile] = {
    "bcp195-rfc8996": Profile(
        "BCP 195 RFC 8996 TLS Profile", _TLS12, _TLS13,
        ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
         "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
        extra_suites="no_null_no_sha1"),
    "bcp195-rfc8996-modified": Profile(
        "Modified BCP 195 RFC 8996 TLS Profile", _TLS12, _TLS13, (),
        refused="it requires the TLS 1.3 ciphersuites TLS_AES_128_CCM_SHA256 and TLS_AES_128_CCM_8_SHA256, "
                "and Python's ssl module cannot set the TLS 1.3 ciphersuite list (it has no "
                "SSL_CTX_set_ciphersuites); use +pg (BCP 195 RFC 8996, the default) instead"),
    "bcp195-nd": Profile("Non-downgrading BCP 195 TLS Profile", _TLS12, _TLS13, _BCP195_ND),
    "bcp195": Profile(
        "BCP 195 TLS Profile", _TLS1, _TLS13, _BCP195_ND + ("TLS_RSA_WITH_AES_128_CBC_SHA",),
        optional=("TLS_RSA_WITH_3DES_EDE_CBC_SHA",), legacy=True),
    "bcp195-extended": Profile(
        "Extended BCP 195 TLS Profile", _TLS12, _TLS12,
        _BCP195_ND + ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
        extra_suites="none"),
    "basic": Profile("Basic TLS Secure Transport Connection Profile", _TLS1, _TLS12,
                     ("TLS_RSA_WITH_3DES_EDE_CBC_SHA",), legacy=True),
    "aes": Profile("AES TLS Secure Transport Connection Profile", _TLS1, _TLS12,
                   ("TLS_RSA_WITH_AES_128_CBC_SHA",), optional=("TLS_RSA_WITH_3DES_EDE_CBC_SHA",), legacy=True),
    "null": Profile("Authenticated unencrypted communication", _TLS1, _TLS12, ("TLS_RSA_WITH_NULL_SHA",),
                    legacy=True, extra_suites="any"),
}

VERIFY_MODES = {"require": ssl.CERT_REQUIRED, "verify": ssl.CERT_OPTIONAL, "ignore": ssl.CERT_NONE}


class TLSSetupError(Exception):
    """Problems that stop a TLS context from being built; each names the file and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class HandshakeFailed(Exception):
    def __init__(self, reason: str, cause: str) -> None:
        super().__init__(cause)
        self.reason = reason
        self.cause = cause


# ---- what OpenSSL offers -----------------------------------------------------------------

def available_openssl_names() -> frozenset[str]:
    """OpenSSL names of the TLS <= 1.2 suites the linked OpenSSL can negotiate (any level)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return frozenset(c["name"] for c in ctx.get_ciphers() if c.get("protocol") != "TLSv1.3")


def list_ciphers() -> str:
    """What ``+cc`` prints: DCMTK's table, restricted to what this OpenSSL supports."""
    have = available_openssl_names()
    lines = ["Supported TLS ciphersuites are:"]
    lines += [f"  {s.name}" for s in SUITES if s.openssl in have]
    return "\n".join(lines) + "\n"


# ---- building the server context ------------------------------------------------------------

_context_cache: list[tuple[dict[str, Any], ssl.SSLContext]] = []
_prompted: dict[str, str] = {}


def enabled(values: dict[str, Any]) -> bool:
    return bool(values.get("tls"))


_separate_tls_listener = False  # set once at start by note_listeners(); forked workers inherit it


def note_listeners(roles: Iterable[str]) -> None:
    """Record which listeners the daemon has, before it forks: a ``dicom-tls`` listener (from
    ``--tls-port`` or a systemd socket of that name) keeps the ``dicom`` listener plain."""
    global _separate_tls_listener
    _separate_tls_listener = TLS_ROLE in roles


def applies(config: Any, role: str) -> bool:
    """TLS on this connection? The dicom-tls listener always; the plain one under +tls
    unless TLS has a listener of its own (DCMTK: with +tls the port is TLS)."""
    if not enabled(config.values):
        return False
    if role == TLS_ROLE:
        return True
    return role == "dicom" and not _separate_tls_listener and config.values.get("tls_port") is None


def validate(values: dict[str, Any]) -> list[str]:
    """Every TLS problem of a configuration; builds the context to prove it can be built."""
    problems = _dependencies(values)
    if problems or not enabled(values):
        return problems
    try:
        ctx = build_context(values)
    except TLSSetupError as exc:
        return exc.problems
    _context_cache.append((values, ctx))
    del _context_cache[:-4]
    return []


def server_context(config: Any) -> ssl.SSLContext:
    """The context validated with this configuration (built again if it was not)."""
    for values, ctx in reversed(_context_cache):
        if values is config.values:
            return ctx
    ctx = build_context(config.values)
    _context_cache.append((config.values, ctx))
    del _context_cache[:-4]
    return ctx


_NEEDS_TLS = ("tls_password", "tls_ca_files", "tls_ca_dirs", "tls_crl_files", "tls_ciphers", "tls_dhparam",
              "tls_expect_sni", "tls_seed", "tls_write_seed", "tls_port")
_SPELLING = {"tls_password": "+pw/-pw (tls_password)", "tls_ca_files": "+cf (tls_ca_files)",
             "tls_ca_dirs": "+cd (tls_ca_dirs)", "tls_crl_files": "+crl (tls_crl_files)",
             "tls_ciphers": "+cs (tls_ciphers)", "tls_dhparam": "+dp (tls_dhparam)",
             "tls_expect_sni": "--expect-sni (tls_expect_sni)", "tls_seed": "+rs (tls_seed)",
             "tls_write_seed": "+ws/+wf (tls_write_seed)", "tls_port": "tls_port"}


def _dependencies(values: dict[str, Any]) -> list[str]:
    problems = []
    if not enabled(values):
        for name in _NEEDS_TLS:
            if values.get(name) not in (None, [], False):
                problems.append(f"{_SPELLING[name]} is only used with TLS: enable it with +tls KEY CERT "
                                f"(tls = [key, certificate]) or remove the option")
        return problems
    tls = values["tls"]
    if not isinstance(tls, list) or len(tls) != 2 or not all(isinstance(p, str) and p for p in tls):
        problems.append("tls must be [private key file, certificate file]")
    if values.get("tls_write_seed") and not values.get("tls_seed"):
        problems.append("+ws/+wf (tls_write_seed) only make sense with +rs (tls_seed)")
    if values.get("tls_port") is not None and values.get("tls_port") == values.get("port"):
        problems.append(f"tls_port {values['tls_port']} is also the plain DICOM port: give TLS a port of its "
                        "own, or drop tls_port to make the main port TLS (DCMTK's +tls)")
    return problems


def build_context(values: dict[str, Any]) -> ssl.SSLContext:
    """A server SSLContext for the TLS settings; raises TLSSetupError listing every problem."""
    problems: list[str] = []
    der = values.get("tls_key_format") == "der"
    profile_name = values.get("tls_profile") or "bcp195-rfc8996"
    profile = PROFILES[profile_name]
    if profile.refused:
        raise TLSSetupError([f"TLS profile {profile_name} ({profile.title}) is refused: {profile.refused}"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cipher_string = _cipher_string(profile_name, profile, list(values.get("tls_ciphers") or []), problems)
    if cipher_string:
        try:
            ctx.set_ciphers(cipher_string)
        except ssl.SSLError as exc:
            problems.append(f"OpenSSL refuses the ciphersuite list {cipher_string}: {_ssl_text(exc)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 for the retired profiles
        ctx.minimum_version = profile.minimum
        ctx.maximum_version = profile.maximum
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_TICKET
    ctx.num_tickets = 0  # DCMTK turns session caching off
    ctx.set_alpn_protocols([ALPN_DICOM])
    key, cert = values["tls"]
    _load_key_and_certificate(ctx, key, cert, der, values.get("tls_password"), problems)
    ctx.verify_mode = VERIFY_MODES[values.get("tls_peer_cert") or "require"]
    _load_trust(ctx, values, der, problems)
    _load_dh(ctx, values.get("tls_dhparam"), problems)
    expected = values.get("tls_expect_sni")
    if expected:
        ctx.sni_callback = _sni_checker(expected)
    if values.get("tls_seed"):
        LOG.debug("+rs %s accepted: Python's ssl seeds OpenSSL's generator from the OS", values["tls_seed"])
    if problems:
        raise TLSSetupError(problems)
    if profile_name == "null":
        LOG.warning("TLS profile null (+pn): connections are authenticated but NOT encrypted")
    return ctx


def _cipher_string(profile_name: str, profile: Profile, extra: list[str], problems: list[str]) -> str:
    have = available_openssl_names()
    chosen: list[Suite] = []
    for name in profile.suites:
        suite = SUITE_BY_NAME[name]
        if suite.openssl not in have:
            problems.append(f"TLS profile {profile_name} ({profile.title}) needs ciphersuite {name}, which the "
                            f"OpenSSL library Python uses ({ssl.OPENSSL_VERSION}) does not offer; choose another "
                            f"profile (+pg is the default)")
            return ""
        chosen.append(suite)
    for name in profile.optional:
        suite = SUITE_BY_NAME[name]
        if suite.openssl in have:
            chosen.append(suite)
        else:
            LOG.warning("ciphersuite %s not supported by %s: no backward compatibility with the DICOM "
                        "Basic TLS profile (as in DCMTK)", name, ssl.OPENSSL_VERSION)
    for name in extra:
        suite = SUITE_BY_NAME.get(name)
        reason = _extra_suite_problem(name, suite, profile_name, profile, have)
        if reason:
            problems.append(reason)
        elif suite is not None and suite not in chosen:
            chosen.append(suite)
    chosen.sort(key=lambda s: SUITE_RANK[s.name], reverse=True)
    text = ":".join(s.openssl for s in chosen)
    return text + ":@SECLEVEL=0" if profile.legacy else text


def _extra_suite_problem(name: str, suite: Suite | None, profile_name: str, profile: Profile,
                         have: frozenset[str]) -> str | None:
    if suite is None:
        hint = " (use the IANA name, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)" if not name.startswith("TLS_") else ""
        if name.startswith("TLS_AES_") or name.startswith("TLS_CHACHA20_"):
            return (f"+cs {name}: TLS 1.3 ciphersuites cannot be chosen, Python's ssl module cannot set the "
                    "TLS 1.3 list (OpenSSL's default TLS 1.3 suites are always offered)")
        return f"+cs {name}: unknown ciphersuite{hint}; storescpd +cc lists the supported ones"
    if suite.openssl not in have:
        return (f"+cs {name}: not supported by the OpenSSL library Python uses ({ssl.OPENSSL_VERSION}); "
                "storescpd +cc lists the supported ones")
    policy = profile.extra_suites
    if policy == "none":
        return f"+cs {name}: additional ciphersuites are not permitted with TLS profile {profile_name} ({profile.title})"
    if suite.bits == 0 and policy != "any":
        return (f"+cs {name}: unencrypted ciphersuite not permitted with TLS profile {profile_name} "
                f"({profile.title}); only +pn allows it")
    if suite.mac == "SHA1" and policy == "no_null_no_sha1":
        return (f"+cs {name}: ciphersuite using SHA-1 MAC not permitted with TLS profile {profile_name} "
                f"({profile.title})")
    if suite.kx == "RSA":
        LOG.warning("ciphersuite %s uses RSA key transport; RFC 9325 recommends not to use it", name)
    return None


def _load_key_and_certificate(ctx: ssl.SSLContext, key: str, cert: str, der: bool, password: str | None,
                              problems: list[str]) -> None:
    key_problem = _readable(key, "TLS private key", "+tls KEY CERT")
    cert_problem = _readable(cert, "TLS certificate", "+tls KEY CERT")
    problems.extend(p for p in (key_problem, cert_problem) if p)
    if key_problem or cert_problem:
        return
    try:
        with _pem_paths(der, (cert, "cert"), (key, "key")) as (cert_path, key_path):
            ctx.load_cert_chain(cert_path, key_path, password=_password_source(key, password))
    except _PasswordUnavailable:
        problems.append(f"TLS private key {key} is encrypted and no password was given: use +pw PASSWORD "
                        "(tls_password) or -pw for an empty one; +ps prompts only when storescpd is started "
                        "on a terminal")
    except _NotDer as exc:
        problems.append(str(exc))
    except ssl.SSLError as exc:
        problems.append(_key_cert_error(exc, key, cert, der, password is not None))


class _PasswordUnavailable(Exception):
    pass


class _NotDer(Exception):
    pass


def _password_source(key: str, password: str | None) -> Callable[[], str] | str:
    if password is not None:
        return password

    def prompt() -> str:
        if key in _prompted:
            return _prompted[key]
        if not (sys.stdin and sys.stdin.isatty()):
            raise _PasswordUnavailable(key)
        _prompted[key] = getpass.getpass(f"Enter PEM pass phrase for {key}: ")
        return _prompted[key]

    return prompt


def _key_cert_error(exc: ssl.SSLError, key: str, cert: str, der: bool, password_given: bool) -> str:
    # OpenSSL 3 often reports only "PEM lib": find the culprit by looking at each file.
    reason = (exc.reason or "").upper()
    text = _ssl_text(exc)
    fmt, other = ("DER", "-pem") if der else ("PEM", "-der")
    if "KEY_VALUES_MISMATCH" in reason:
        return (f"TLS private key {key} does not belong to certificate {cert}: give the key the certificate "
                "was issued for (compare: openssl x509 -noout -pubkey -in CERT; openssl pkey -pubout -in KEY)")
    if "CA_MD_TOO_WEAK" in reason or "EE_KEY_TOO_SMALL" in reason:
        return (f"TLS certificate {cert} or key {key} is too weak for OpenSSL's security level "
                f"({text}): use an RSA key of at least 2048 bits signed with SHA-256 or better")
    if not _is_certificate(cert, der):
        return (f"cannot read TLS certificate {cert} as {fmt}: not a certificate (check the file, or use "
                f"{other} if it is in the other format)")
    if _key_is_encrypted(key, der):
        if password_given:
            return f"wrong password for TLS private key {key}: check +pw / tls_password"
        return f"cannot decrypt TLS private key {key}: {text} (give its password with +pw / tls_password)"
    return (f"cannot read TLS private key {key} as {fmt}: not a usable private key (check the file, or use "
            f"{other} if it is in the other format)")


def _is_certificate(path: str, der: bool) -> bool:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if der:
            probe.load_verify_locations(cadata=_read(path))
        else:
            probe.load_verify_locations(cafile=path)
        return True
    except (ssl.SSLError, ValueError, OSError):
        return False


def _key_is_encrypted(path: str, der: bool) -> bool:
    data = _read(path)
    if der:
        try:
            return _der_key_label(data, path) == "ENCRYPTED PRIVATE KEY"
        except _NotDer:
            return False
    return b"ENCRYPTED" in data


def _load_trust(ctx: ssl.SSLContext, values: dict[str, Any], der: bool, problems: list[str]) -> None:
    ca_files = list(values.get("tls_ca_files") or [])
    ca_dirs = list(values.get("tls_ca_dirs") or [])
    crl_files = list(values.get("tls_crl_files") or [])
    for path in ca_files:
        problem = _readable(path, "CA certificate file", "+cf")
        if problem:
            problems.append(problem)
            continue
        try:
            if der:
                ctx.load_verify_locations(cadata=_read(path))
            else:
                ctx.load_verify_locations(cafile=path)
        except (ssl.SSLError, ValueError) as exc:
            problems.append(f"cannot read CA certificate file {path} as {'DER' if der else 'PEM'}: "
                            f"{_ssl_text(exc)} (use {'-pem' if der else '-der'} if it is in the other format)")
    for path in ca_dirs:
        if der:
            problems.append(f"+cd {path} with -der: Python's ssl reads certificate directories as PEM only; "
                            "convert them (openssl x509 -inform der -in X -out X.pem) or list each with +cf")
        elif not os.path.isdir(path):
            problems.append(f"CA certificate directory {path} does not exist (check +cd / tls_ca_dirs)")
        elif not os.access(path, os.R_OK | os.X_OK):
            problems.append(f"cannot read CA certificate directory {path}: permission denied (run as the "
                            "storescpd user or fix the directory's mode)")
        elif not any(re.fullmatch(r"[0-9a-f]{8}\.r?\d+", n) for n in os.listdir(path)):
            problems.append(f"CA certificate directory {path} has no certificates under OpenSSL hash names "
                            f"(like 1a2b3c4d.0): run 'openssl rehash {path}'")
        else:
            ctx.load_verify_locations(capath=path)
    for path in crl_files:
        problem = _readable(path, "certificate revocation list", "+crl")
        if problem:
            problems.append(problem)
            continue
        try:
            with _pem_paths(der, (path, "crl")) as (pem_path,):
                ctx.load_verify_locations(cafile=pem_path)
        except (ssl.SSLError, _NotDer) as exc:
            problems.append(f"cannot read certificate revocation list {path} as {'DER' if der else 'PEM'}: "
                            f"{_ssl_text(exc)} (use {'-pem' if der else '-der'} if it is in the other format)")
    crl_check = values.get("tls_crl_check") or "none"
    if crl_files and crl_check == "none":
        crl_check = "leaf"  # +crl implies +crv
    if crl_check == "leaf":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    elif crl_check == "all":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    if crl_check != "none" and not crl_files and not ca_dirs:
        problems.append("CRL verification (+crv/+cra) needs certificate revocation lists: add them with "
                        "+crl FILE (or as HASH.r0 files in a +cd directory), or every client will be refused")
    peer = values.get("tls_peer_cert") or "require"
    if peer == "require" and not ca_files and not ca_dirs:
        problems.append("-rc (require a client certificate, the default) needs the CAs to trust: add +cf "
                        "CA-FILE or +cd DIR, or use -ic to accept clients without checking certificates")


def _load_dh(ctx: ssl.SSLContext, path: str | None, problems: list[str]) -> None:
    if path:
        problem = _readable(path, "DH parameter file", "+dp")
        if problem:
            problems.append(problem)
            return
        try:
            ctx.load_dh_params(path)
        except (ssl.SSLError, ValueError, OSError) as exc:
            problems.append(f"cannot read DH parameters from {path}: {_ssl_text(exc)} (they must be PEM "
                            f"'DH PARAMETERS'; make them with: openssl dhparam -out {path} 2048)")
        return
    with _memory_file(FFDHE2048_PEM, "ffdhe2048") as builtin:
        ctx.load_dh_params(builtin)


def _sni_checker(expected: str) -> Callable[[Any, str | None, ssl.SSLContext], int | None]:
    def check(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        if server_name is not None and server_name != expected:
            LOG.error("SNI failure: client requested server '%s', my name is '%s'", server_name, expected)
            sslobj.storescpd_sni_refused = server_name
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    return check


# ---- files ------------------------------------------------------------------------------------

def _readable(path: str, what: str, option: str) -> str | None:
    try:
        with open(path, "rb"):
            return None
    except FileNotFoundError:
        return f"{what} {path} does not exist (check the path given to {option})"
    except PermissionError:
        return (f"cannot read {what} {path}: permission denied (run as the storescpd user or fix the "
                "file's mode)")
    except IsADirectoryError:
        return f"{what} {path} is a directory, not a file (check {option})"
    except OSError as exc:
        return f"cannot read {what} {path}: {exc.strerror}"


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class _memory_file:
    """Bytes as a path OpenSSL can open (/proc/self/fd of a memfd): key material never hits disk."""

    def __init__(self, data: bytes, name: str) -> None:
        self.fd = os.memfd_create(f"storescpd-{name}", os.MFD_CLOEXEC)
        os.write(self.fd, data)

    def __enter__(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)


class _pem_paths:
    """Paths with PEM content for (path, kind) pairs: the files themselves, or DER converted in memory."""

    def __init__(self, der: bool, *items: tuple[str, str]) -> None:
        self.der = der
        self.items = items
        self.files: list[_memory_file] = []

    def __enter__(self) -> tuple[str, ...]:
        if not self.der:
            return tuple(path for path, _ in self.items)
        paths = []
        for path, kind in self.items:
            f = _memory_file(der_to_pem(_read(path), kind, path), kind)
            self.files.append(f)
            paths.append(f.__enter__())
        return tuple(paths)

    def __exit__(self, *exc: Any) -> None:
        for f in self.files:
            f.__exit__()


def der_to_pem(data: bytes, kind: str, path: str = "") -> bytes:
    """Wrap DER in the PEM armour OpenSSL expects (the label of a key comes from its structure)."""
    label = {"cert": "CERTIFICATE", "crl": "X509 CRL"}.get(kind) or _der_key_label(data, path)
    body = base64.encodebytes(data).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"".join([f"-----BEGIN {label}-----\n".encode(), *(ln + b"\n" for ln in lines),
                     f"-----END {label}-----\n".encode()])


def _der_key_label(data: bytes, path: str) -> str:
    """PKCS#8, encrypted PKCS#8, PKCS#1 RSA or SEC1 EC, told apart by their first fields."""
    try:
        pos = _der_header(data, 0)[0]  # inside the outer SEQUENCE
        first_tag = data[pos]
        if first_tag == 0x30:
            return "ENCRYPTED PRIVATE KEY"
        if first_tag == 0x02:
            content, length = _der_header(data, pos)
            version = int.from_bytes(data[content:content + length], "big")
            next_tag = data[content + length]
            if next_tag == 0x30:
                return "PRIVATE KEY"
            if next_tag == 0x04 and version == 1:
                return "EC PRIVATE KEY"
            if next_tag == 0x02:
                return "RSA PRIVATE KEY"
    except IndexError:
        pass
    raise _NotDer(f"TLS private key {path} is not a DER private key (PKCS#8, PKCS#1 or SEC1): use -pem if it "
                  "is PEM, or convert it: openssl pkey -in KEY -outform der -out key.der")


def _der_header(data: bytes, pos: int) -> tuple[int, int]:
    """(content offset, content length) of the DER element at pos."""
    if data[pos] not in (0x30, 0x02, 0x04):
        raise IndexError(pos)
    length = data[pos + 1]
    if length < 0x80:
        return pos + 2, length
    n = length & 0x7F
    return pos + 2 + n, int.from_bytes(data[pos + 2:pos + 2 + n], "big")


def _ssl_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else (
            exc.reason.replace("_", " ").lower() if exc.reason else str(exc))
    return str(exc)


# ---- the handshake ------------------------------------------------------------------------------

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
        text = _ssl_text(exc)
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
