"""Key material and trust for the TLS server context: keys, certificates, CAs, CRLs, DH parameters.

Each loader appends to ``problems`` a sentence naming the file, the cause and the fix instead of
raising, so that one validation reports every problem at once. DER files are converted to PEM in
memory (a memfd): key material never reaches the disk.
"""

from __future__ import annotations

import base64
import getpass
import os
import re
import ssl
import sys
from typing import Any, Callable

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

_prompted: dict[str, str] = {}  # +ps: each key's password is asked once per process


def load_key_and_certificate(ctx: ssl.SSLContext, key: str, cert: str, der: bool, password: str | None,
                              problems: list[str]) -> None:
    """Our key and certificate (PEM, or DER with ``-der``; a password from +pw or a +ps prompt)."""
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
    text = ssl_text(exc)
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


def load_trust(ctx: ssl.SSLContext, values: dict[str, Any], der: bool, problems: list[str]) -> None:
    """The CAs (+cf, +cd) and CRLs (+crl, +crv/+cra) client certificates are checked against."""
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
                            f"{ssl_text(exc)} (use {'-pem' if der else '-der'} if it is in the other format)")
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
                            f"{ssl_text(exc)} (use {'-pem' if der else '-der'} if it is in the other format)")
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


def load_dh(ctx: ssl.SSLContext, path: str | None, problems: list[str]) -> None:
    """DH parameters for the DHE suites: the +dp file, or RFC 7919 ffdhe2048."""
    if path:
        problem = _readable(path, "DH parameter file", "+dp")
        if problem:
            problems.append(problem)
            return
        try:
            ctx.load_dh_params(path)
        except (ssl.SSLError, ValueError, OSError) as exc:
            problems.append(f"cannot read DH parameters from {path}: {ssl_text(exc)} (they must be PEM "
                            f"'DH PARAMETERS'; make them with: openssl dhparam -out {path} 2048)")
        return
    with _memory_file(FFDHE2048_PEM, "ffdhe2048") as builtin:
        ctx.load_dh_params(builtin)


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


def ssl_text(exc: BaseException) -> str:
    """OpenSSL's reason for an error, in words."""
    if isinstance(exc, ssl.SSLError):
        return exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else (
            exc.reason.replace("_", " ").lower() if exc.reason else str(exc))
    return str(exc)
