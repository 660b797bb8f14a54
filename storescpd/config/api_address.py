"""The API's address and token rules: light, imported by the configuration's validation."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storescpd.config.settings import ConfigError

MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class ApiAddress:
    """``unix:PATH`` or ``HOST:PORT`` (``[v6]:PORT``)."""

    unix_path: str | None = None
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> "ApiAddress":
        if text.startswith("unix:"):
            path = text[5:]
            if not path.startswith("/"):
                raise ValueError(f"unix socket path must be absolute, not '{path}'")
            return cls(unix_path=path)
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"'{text}' is neither HOST:PORT (e.g. 127.0.0.1:8080) nor unix:PATH")
        return cls(host=host.strip("[]"), port=int(port))

    @property
    def loopback(self) -> bool:
        return self.unix_path is not None or is_loopback_host(self.host)

    def __str__(self) -> str:
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that could resolve anywhere: treat as exposed


def socket_is_loopback(sock: socket.socket) -> bool:
    if sock.family == socket.AF_UNIX:
        return True
    return is_loopback_host(str(sock.getsockname()[0]))


def api_problems(values: dict[str, Any]) -> list[str]:
    """Configuration problems of the api settings (called from the configuration's validation)."""
    api = values.get("api")
    token_file = values.get("api_token_file")
    if not api:
        return []
    try:
        address = ApiAddress.parse(api)
    except ValueError as exc:
        return [f"api {exc}"]
    if not address.loopback and not token_file:
        return [f"api {address} listens outside loopback: set api_token_file (--api-token-file) to a file "
                "holding a bearer token, or listen on 127.0.0.1 or a unix: socket"]
    if token_file and not os.path.isfile(token_file):
        return [f"api_token_file {token_file} does not exist: create it (one line, the token) or unset it"]
    return []


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read API token file {path}: {exc.strerror} (check its owner and mode)") from None
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"API token file {path} holds a token shorter than {MIN_TOKEN_LENGTH} characters: use e.g. "
                          "`openssl rand -hex 32 > FILE`")
    return token
