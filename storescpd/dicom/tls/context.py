"""The TLS settings of a configuration: which connections use TLS, validation, the server SSLContext.

The server context is built (and every file read) while the configuration is validated, so a
reload with a broken key is refused and the old context stays. Where ``ssl`` cannot express a
DCMTK profile exactly the profile is refused with the reason; nothing is weakened silently.
"""

from __future__ import annotations

import logging
import ssl
import warnings
from typing import Any, Callable, Iterable

from storescpd.dicom.tls.files import load_dh, load_key_and_certificate, load_trust, ssl_text
from storescpd.dicom.tls.suites import PROFILES, cipher_string

LOG = logging.getLogger("storescpd.tls")

TLS_ROLE = "dicom-tls"
ALPN_DICOM = "dicom"

VERIFY_MODES = {"require": ssl.CERT_REQUIRED, "verify": ssl.CERT_OPTIONAL, "ignore": ssl.CERT_NONE}


class TLSSetupError(Exception):
    """Problems that stop a TLS context from being built; each names the file and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# The contexts of the last few validated configurations (a reload validates before it applies).
_context_cache: list[tuple[dict[str, Any], ssl.SSLContext]] = []


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
    ciphers = cipher_string(profile_name, profile, list(values.get("tls_ciphers") or []), problems)
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            problems.append(f"OpenSSL refuses the ciphersuite list {ciphers}: {ssl_text(exc)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 for the retired profiles
        ctx.minimum_version = profile.minimum
        ctx.maximum_version = profile.maximum
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_TICKET
    ctx.num_tickets = 0  # DCMTK turns session caching off
    ctx.set_alpn_protocols([ALPN_DICOM])
    key, cert = values["tls"]
    load_key_and_certificate(ctx, key, cert, der, values.get("tls_password"), problems)
    ctx.verify_mode = VERIFY_MODES[values.get("tls_peer_cert") or "require"]
    load_trust(ctx, values, der, problems)
    load_dh(ctx, values.get("tls_dhparam"), problems)
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


def _sni_checker(expected: str) -> Callable[[Any, str | None, ssl.SSLContext], int | None]:
    def check(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        if server_name is not None and server_name != expected:
            LOG.error("SNI failure: client requested server '%s', my name is '%s'", server_name, expected)
            sslobj.storescpd_sni_refused = server_name
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    return check
