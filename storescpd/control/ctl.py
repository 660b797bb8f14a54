"""``storescpd ctl``: the command-line client of the control API (tables for people, --json for scripts)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
from datetime import datetime
from typing import Any, Sequence
from urllib.parse import urlencode

from storescpd.config.api_address import ApiAddress

DEFAULT_CONFIG = "/etc/storescpd/storescpd.toml"
JOURNAL_COMMANDS = ("receipts", "studies")
EXIT_OK = 0
EXIT_FAILED = 1  # the daemon answered no (unknown association, invalid configuration, 401)
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
COMMANDS = ("status", "associations", "abort", "reload", "metrics", *JOURNAL_COMMANDS)


class CtlError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="storescpd ctl", description="Talk to a running storescpd through its control API.",
        epilog="The API address comes from --api, $STORESCPD_API, or the api key of --config "
               f"(default {DEFAULT_CONFIG}); the token likewise from --api-token-file, "
               "$STORESCPD_API_TOKEN_FILE or api_token_file.")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("id", nargs="?", help="association id (abort)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of tables")
    parser.add_argument("--api", help="http://HOST:PORT/, HOST:PORT, [v6]:PORT or unix:PATH")
    parser.add_argument("--api-token-file", help="file holding the bearer token")
    parser.add_argument("--config", help="read api and api_token_file from this TOML file")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for an answer")
    journal_arguments(parser)
    args = parser.parse_intermixed_args(list(argv))
    if args.command == "abort" and not args.id:
        parser.error("abort needs the association id (see `storescpd ctl associations`)")
    return args


def _from_config(path: str | None) -> dict[str, Any]:
    import tomllib

    candidate = path or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if not candidate:
        return {}
    try:
        with open(candidate, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        if path:
            raise CtlError(f"cannot read {path}: {exc}", EXIT_USAGE) from None
        return {}


class ApiClient:
    def __init__(self, address: str, token_file: str | None, timeout: float) -> None:
        try:
            self.address = ApiAddress.parse(address)
        except ValueError as exc:
            raise CtlError(f"--api: {exc}", EXIT_USAGE) from None
        self.token = self._token(token_file)
        self.token_file = token_file
        self.timeout = timeout

    @staticmethod
    def _token(path: str | None) -> str | None:
        if not path:
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None  # reads still work on loopback; a mutating call will say why it failed

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        a = self.address
        if a.unix_path:
            conn: http.client.HTTPConnection = _UnixHTTPConnection(a.unix_path, self.timeout)
        else:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(a.host, a.host)
            conn = http.client.HTTPConnection(host, a.port, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError as exc:
            raise CtlError(f"cannot reach the storescpd API on {a}: {exc.strerror or exc} "
                           "(is the daemon running with api set?)", EXIT_UNREACHABLE) from None
        finally:
            conn.close()

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200, 202)) -> Any:
        status, body = self.request(method, path)
        if status in ok:
            return body if path == "/metrics" else json.loads(body)
        try:
            detail = json.loads(body)
            detail = validation_text(detail.get("detail", detail.get("message", detail)))
        except ValueError:
            detail = body.decode(errors="replace")
        if status == 401:
            hint = (f" (cannot read {self.token_file}: run as a user who can)" if self.token_file and not self.token
                    else " (pass --api-token-file)")
            raise CtlError(f"401 unauthorized: {detail}{hint}")
        raise CtlError(f"{status}: {detail}")


# ---- tables ------------------------------------------------------------------------------------
def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines) + "\n"


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{s:02d}"


def format_status(s: dict[str, Any]) -> str:
    t = s["totals"]
    last = s["last_reload"]
    reload_text = f"{last['result']} at {last['time']}: {last['message']}" if last.get("result") else "none"
    out = [
        f"storescpd {s['version']}, pid {s['pid']}, up {human_duration(s['uptime_seconds'])}, "
        f"{s['process_mode']} mode" + (f", stopping ({s['stopping']})" if s.get("stopping") else ""),
        f"configuration: {s.get('config_file') or '(command line only)'}, generation {s.get('generation', '?')}, "
        f"loaded {s['config_loaded']}",
        f"last reload:   {reload_text}",
        f"output:        {s['output_directory']}"
        + (f" ({human_bytes(s['output_free_bytes'])} free)" if s.get("output_free_bytes") is not None else ""),
        f"associations:  {s['active_associations']} running; "
        + ", ".join(f"{k} {v}" for k, v in t["associations"].items()),
        f"objects:       " + ", ".join(f"{k} {v}" for k, v in t["objects"].items())
        + f"; {human_bytes(t['received_bytes'])} received; {t['worker_restarts']} worker restarts",
        "",
    ]
    rows = [[str(w["pid"]), w["kind"], w["state"], str(w["associations_served"]), str(w["generation"]),
             w["started"] or ""] for w in s["workers"]]
    return "\n".join(out) + table(rows, ["PID", "KIND", "STATE", "SERVED", "GEN", "STARTED"])


def format_associations(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no associations running\n"
    rows = [[a["id"], a["peer"], a["calling_ae"], a["called_ae"], a["started"], a["state"],
             str(a["objects_received"]), human_bytes(a["bytes_received"]), a["last_sop_class"]] for a in items]
    return table(rows, ["ID", "PEER", "CALLING", "CALLED", "STARTED", "STATE", "OBJECTS", "RECEIVED", "LAST SOP CLASS"])


def metrics_json(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: {"type": f.type, "samples": [{"name": s.name, "labels": s.labels, "value": s.value}
                                                 for s in f.samples]}
            for f in text_string_to_metric_families(text)}


# ---- the receipt journal: receipts, studies -------------------------------------------------------
def journal_arguments(parser: argparse.ArgumentParser) -> None:
    journal = parser.add_argument_group("receipts and studies (the receipt journal)")
    journal.add_argument("--study", metavar="UID", help="receipts of this Study Instance UID")
    journal.add_argument("--series", metavar="UID", help="receipts of this Series Instance UID")
    journal.add_argument("--patient", metavar="ID", help="receipts of this Patient ID")
    journal.add_argument("--calling-ae", metavar="AE", help="receipts of objects this AE title sent")
    journal.add_argument("--since", metavar="TIME", help="received at or after TIME (ISO 8601; local time "
                                                          "without an offset), e.g. 2024-05-01T14:00")
    journal.add_argument("--until", metavar="TIME", help="received before TIME")
    journal.add_argument("--limit", type=int, default=100, help="rows (default 100, at most 1000)")
    journal.add_argument("--cursor", help="the page after the one that printed this cursor")


def with_offset(text: str | None) -> str | None:
    """A time the person typed: one without an offset is their local time (the API's default is UTC)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text  # the API says what is wrong with it
    return (moment.astimezone() if moment.tzinfo is None else moment).isoformat()


def local_time(utc: str | None) -> str:
    """``2024-05-01T14:02:00.123Z`` as local time, ``2024-05-01 16:02:00.123``."""
    if not utc:
        return ""
    moment = datetime.fromisoformat(utc.replace("Z", "+00:00")).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def run_journal(args: argparse.Namespace, client: "ApiClient", out: Any) -> None:
    """``ctl receipts`` and ``ctl studies``: one page, and how to ask for the next."""
    query: dict[str, Any] = {"since": with_offset(args.since), "limit": args.limit, "cursor": args.cursor}
    if args.command == "receipts":
        query.update(study_uid=args.study, series_uid=args.series, patient_id=args.patient,
                     calling_ae=args.calling_ae, until=with_offset(args.until))
    data = client.call("GET", f"/{args.command}?" + urlencode({k: v for k, v in query.items() if v is not None}))
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
        return
    out.write(format_receipts(data["receipts"]) if args.command == "receipts" else format_studies(data["studies"]))
    if data.get("next_cursor"):
        out.write(f"(more: add --cursor {data['next_cursor']})\n")


def format_receipts(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no receipts\n"
    rows = [[local_time(r["received_at"]), r["calling_ae"] or "", r["modality"] or "", r["patient_id"] or "",
             r["sop_instance_uid"], f"0x{r['status']:04X}", human_bytes(r["size"] or 0), r["path"] or ""]
            for r in items]
    return table(rows, ["RECEIVED", "CALLING", "MOD", "PATIENT ID", "SOP INSTANCE UID", "STATUS", "SIZE", "PATH"])


def format_studies(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no studies\n"
    rows = [[local_time(s["last_received"]), s["study_instance_uid"], s["patient_id"] or "", str(s["objects"]),
             human_bytes(s["bytes"]), ",".join(s["calling_aes"]), "yes" if s["ended"] else "no", s["directory"] or ""]
            for s in items]
    return table(rows, ["LAST RECEIVED", "STUDY INSTANCE UID", "PATIENT ID", "OBJECTS", "SIZE", "CALLING", "ENDED",
                        "DIRECTORY"])


def validation_text(detail: Any) -> Any:
    """FastAPI's 422 list as one line naming each parameter: ``since: '...' is not an ISO 8601 ...``."""
    if isinstance(detail, list) and all(isinstance(e, dict) and "loc" in e for e in detail):
        return "; ".join(f"{e['loc'][-1]}: {e.get('msg', 'invalid')}" for e in detail)
    return detail


# ---- commands ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    config = _from_config(args.config) if not (args.api and args.api_token_file) else {}
    address = args.api or os.environ.get("STORESCPD_API") or config.get("api")
    if not address:
        raise CtlError("no API address: pass --api http://HOST:PORT/ (or unix:PATH), set STORESCPD_API, or set api in "
                       f"{args.config or DEFAULT_CONFIG}", EXIT_USAGE)
    token_file = args.api_token_file or os.environ.get("STORESCPD_API_TOKEN_FILE") or config.get("api_token_file")
    client = ApiClient(address, token_file, args.timeout)
    out = sys.stdout
    if args.command == "status":
        data = client.call("GET", "/status")
        out.write(json.dumps(data, indent=2) + "\n" if args.json else format_status(data))
    elif args.command == "associations":
        data = client.call("GET", "/associations")
        out.write(json.dumps(data, indent=2) + "\n" if args.json else format_associations(data))
    elif args.command == "abort":
        data = client.call("DELETE", f"/associations/{args.id}")
        out.write(json.dumps(data, indent=2) + "\n" if args.json else
                  f"aborting association {data['id']} from {data['calling_ae'] or '?'} ({data['peer']}), "
                  f"worker {data['worker_pid']}\n")
    elif args.command == "reload":
        data = client.call("POST", "/reload", ok=(200, 422))
        out.write(json.dumps(data, indent=2) + "\n" if args.json else f"reload {data['result']}: {data['message']}\n")
        return EXIT_OK if data.get("result") == "success" else EXIT_FAILED
    elif args.command == "metrics":
        text = client.call("GET", "/metrics").decode()
        out.write(json.dumps(metrics_json(text), indent=2) + "\n" if args.json else text)
    elif args.command in JOURNAL_COMMANDS:
        run_journal(args, client, out)
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    try:
        args = parse(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        return run(args)
    except CtlError as exc:
        sys.stderr.write(f"storescpd ctl: {exc}\n")
        return exc.code
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
