"""``python -m storescpd.control.api``: the API process, exec'd by the supervisor on a socket it passes in.

Also ``python -m storescpd.control.api --print-openapi`` writes the schema (api/openapi.json).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import socket
import sys
from typing import Any, Sequence

API_BOOT_ERROR = 3
PARENT_CHECK_SECONDS = 1.0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m storescpd.control.api")
    parser.add_argument("--fd", type=int, help="listening socket inherited from the supervisor")
    parser.add_argument("--control", help="the supervisor's control socket")
    parser.add_argument("--api-token-file", dest="token_file")
    parser.add_argument("--journal", help="the receipt journal (SQLite) that /receipts and /studies read")
    parser.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[],
                        help="a Host name the API answers to besides its address and localhost (repeatable)")
    parser.add_argument("--describe", default="", help="how to name the listening address in messages")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--print-openapi", action="store_true", help="print the OpenAPI schema and exit")
    return parser.parse_args(argv)


def openapi_text() -> str:
    from storescpd.control.api.app import create_app

    return json.dumps(create_app("/nonexistent").openapi(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.print_openapi:
        sys.stdout.write(openapi_text())
        return 0
    from storescpd.config.logs import LEVELS, setup_logging

    setup_logging(args.log_level if args.log_level in LEVELS else "info")
    import logging

    log = logging.getLogger("storescpd.api")
    if args.fd is None or not args.control:
        log.critical("the API process is started by the supervisor (--fd and --control are required)")
        return API_BOOT_ERROR
    import uvicorn

    from storescpd.config.settings import ConfigError
    from storescpd.config.api_address import socket_is_loopback
    from storescpd.control.api.app import create_app

    sock = socket.socket(fileno=args.fd)
    os.set_inheritable(args.fd, False)
    exposed = not socket_is_loopback(sock)
    if exposed and not args.token_file:
        log.critical("refusing to serve the API on %s outside loopback without a bearer token: set "
                     "api_token_file (--api-token-file)", args.describe)
        return API_BOOT_ERROR
    try:
        app = create_app(args.control, args.token_file, exposed, allowed_hosts(sock, args.allowed_hosts),
                         journal=args.journal)
    except ConfigError as exc:
        log.critical("%s", exc)
        return API_BOOT_ERROR
    quiet = "debug" if args.log_level in ("debug", "trace") else "warning"  # our own messages say enough
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", server_header=False,
                            log_level=quiet)
    server = uvicorn.Server(config)
    asyncio.run(_serve(server, sock))
    return 0


def allowed_hosts(sock: socket.socket, configured: list[str]) -> list[str] | None:
    """The Host names requests may carry: None (any) on a unix socket, else localhost, the bound
    address unless it is a wildcard (then the address each connection arrived on, checked per
    request), and the configured names."""
    if sock.family == socket.AF_UNIX:
        return None
    bound = str(sock.getsockname()[0])
    wildcard = ipaddress.ip_address(bound).is_unspecified
    return ["localhost", *([] if wildcard else [bound]), *configured]


async def _serve(server: Any, sock: socket.socket) -> None:
    """Serve until SIGTERM (uvicorn's handler) or until the supervisor is gone."""
    parent = os.getppid()

    async def watch_parent() -> None:
        while not server.should_exit:
            await asyncio.sleep(PARENT_CHECK_SECONDS)
            if os.getppid() != parent:
                server.should_exit = True

    watcher = asyncio.create_task(watch_parent())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()


if __name__ == "__main__":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload is the supervisor's business
    sys.exit(main())
