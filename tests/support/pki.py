"""A throw-away PKI made with openssl, as docs/tls.md tells an administrator to make one."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


@dataclass(frozen=True)
class Pki:
    """A test CA with a server, a client and a revoked client certificate, and the CA's CRL."""

    dir: Path

    def __getattr__(self, name: str) -> str:
        # pki.server_key -> <dir>/server.key, pki.ca_crt -> <dir>/ca.crt
        stem, _, ext = name.rpartition("_")
        return str(self.dir / f"{stem}.{ext}")


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path, ca_name: str = "storescpd test CA") -> Pki:
    """The commands of docs/tls.md: CA, server/client certificates, one revoked, its CRL."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "7", "-sha256", "-subj", f"/CN={ca_name}")
    for name in ("server", "client", "revoked"):
        _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}")
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "7", "-sha256")
    (d / "ca.cnf").write_text("[ ca ]\ndefault_ca = test\n[ test ]\ndatabase = index.txt\n"
                              "default_md = sha256\ndefault_crl_days = 7\n")
    (d / "index.txt").write_text("")
    _openssl(d, "ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-revoke", "revoked.crt")
    _openssl(d, "ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-gencrl", "-out", "ca.crl")
    # An encrypted copy of the server key, a foreign key, and DER versions.
    _openssl(d, "pkey", "-in", "server.key", "-aes256", "-passout", "pass:s3cret", "-out", "encrypted.key")
    _openssl(d, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "other.key")
    _openssl(d, "pkey", "-in", "server.key", "-outform", "der", "-out", "server_key.der")
    _openssl(d, "x509", "-in", "server.crt", "-outform", "der", "-out", "server_crt.der")
    _openssl(d, "x509", "-in", "ca.crt", "-outform", "der", "-out", "ca_crt.der")
    _openssl(d, "crl", "-in", "ca.crl", "-outform", "der", "-out", "ca_crl.der")
    return Pki(d)
