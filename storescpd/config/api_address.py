"""The API's address and token rules: light, imported by the configuration's validation."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storescpd.config.settings import ConfigError

MIN_TOKEN_LENGTH = 16
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


@dataclass(frozen=True)
class ApiAddress:
    """``unix:PATH``, ``HOST:PORT``, ``[v6]:PORT`` or ``http://HOST:PORT[/]``."""

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
        scheme, url, rest = text.partition("://")
        if url:
            if scheme.lower() != "http":
                raise ValueError(f"'{text}': the API speaks plain http (http://HOST:PORT); for {scheme}:// put a "
                                 "reverse proxy in front of it and point ctl at the API itself")
            if rest.endswith("/"):
                rest = rest[:-1]
            if any(c in rest for c in "/?#@"):
                raise ValueError(f"'{text}': give the API's root, http://HOST:PORT/, without a path, query or user")
        else:
            rest = text
        host, port = split_host_port(rest, default_port=80 if url else None)
        if host is None or port is None:
            raise ValueError(f"'{text}' is none of HOST:PORT (127.0.0.1:8104), [v6]:PORT ([::1]:8104), "
                             "http://HOST:PORT/ and unix:PATH")
        return cls(host=host, port=port)

    @property
    def loopback(self) -> bool:
        return self.unix_path is not None or is_loopback_host(self.host)

    def __str__(self) -> str:
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def split_host_port(text: str, default_port: int | None) -> tuple[str | None, int | None]:
    """``host:port``, ``[v6]:port`` (or without ``:port`` when there is a default) -> (host, port)."""
    if text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None, None
        if not bracket or (tail and not tail.startswith(":")):
            return None, None
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text_or_empty = text.partition(":")
        if ":" in port_text_or_empty:
            return None, None  # a bare IPv6 address: the port is ambiguous without brackets
        port_text = port_text_or_empty if colon else None
    if not host:
        return None, None
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None, None
    return host, int(port_text)


def host_name(text: str) -> str | None:
    """The canonical form of a host name or address, for comparing ``Host`` headers: lower case, no
    trailing dot, an IP address written as ``ipaddress`` writes it (no brackets); None if it is neither."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    name = text.lower().removesuffix(".")
    return name if HOST_NAME.fullmatch(name) else None


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
    problems = [f"api_allowed_hosts: '{name}' is not a host name or IP address (no scheme, port or wildcard: "
                "e.g. storescpd.example.org or 10.1.2.3)"
                for name in values.get("api_allowed_hosts") or () if not isinstance(name, str) or not host_name(name)]
    if problems or not api:
        return problems
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
