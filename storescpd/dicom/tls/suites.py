"""DCMTK's TLS ciphersuites and security profiles, and what the linked OpenSSL offers of them.

The suite table and the profiles are DCMTK's (dcmtls/libsrc/tlsciphr.cc, the +px/+pg/... options);
``cipher_string`` turns a profile and the ``+cs`` additions into OpenSSL's cipher list, refusing
what OpenSSL lacks or what the profile does not permit, with the reason.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

LOG = logging.getLogger("storescpd.tls")


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


def cipher_string(profile_name: str, profile: Profile, extra: list[str], problems: list[str]) -> str:
    """OpenSSL's cipher list for a profile and the +cs additions, strongest first ("" after a problem)."""
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
