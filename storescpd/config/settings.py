"""The settings table: every setting declared once.

The storescp-compatible command line (cli.py), the TOML file, ``--print-config``,
``--check-config`` and docs/options.md are all generated from ``SETTINGS``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from storescpd.config.commands import command_problem

SUPPORTED = "supported"
NOT_YET = "not supported yet"


class ConfigError(ValueError):
    """A configuration a person must fix; the message says what and how."""


@dataclass(frozen=True)
class Flag:
    """One command-line spelling pair of a setting (e.g. ``+xa`` / ``--accept-all``).

    ``const`` is what the flag stores when it takes no value; ``nargs`` > 0 means it
    takes that many values (``metavar`` names them as the manual does).
    """

    short: str | None
    long: str | None
    help: str
    const: Any = None
    nargs: int = 0
    metavar: tuple[str, ...] = ()
    status: str = SUPPORTED
    subgroup: str = ""

    @property
    def spellings(self) -> tuple[str, ...]:
        return tuple(s for s in (self.short, self.long) if s)


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    group: str
    flags: tuple[Flag, ...] = ()
    type: type = str
    choices: tuple[Any, ...] | None = None
    reloadable: bool = True
    in_file: bool = True
    minimum: int | None = None
    maximum: int | None = None
    check: Callable[[Any], str | None] | None = None


def _flag(short: str | None, long: str | None, help: str, **kw: Any) -> Flag:
    return Flag(short, long, help, **kw)


def _value(short: str | None, long: str | None, metavar: str, help: str, **kw: Any) -> Flag:
    return Flag(short, long, help, nargs=1, metavar=(metavar,), **kw)


G_GENERAL = "general options"
G_MULTI = "multi-process options"
G_NETWORK = "network options"
G_TLS = "transport layer security (TLS) options"
G_OUTPUT = "output options"
G_EVENT = "event options"
G_DAEMON = "daemon options (storescpd)"

# Transfer-syntax preference blocks of the manual, in manual order.
PREFER = "preferred network transfer syntaxes (not with --config-file):"
PREFERENCES: tuple[tuple[str, str, str, str], ...] = (
    ("+x=", "--prefer-uncompr", "uncompressed", "prefer explicit VR local byte order (default)"),
    ("+xe", "--prefer-little", "little", "prefer explicit VR little endian TS"),
    ("+xb", "--prefer-big", "big", "prefer explicit VR big endian TS"),
    ("+xs", "--prefer-lossless", "lossless", "prefer default JPEG lossless TS"),
    ("+xy", "--prefer-jpeg8", "jpeg8", "prefer default JPEG lossy TS for 8 bit data"),
    ("+xx", "--prefer-jpeg12", "jpeg12", "prefer default JPEG lossy TS for 12 bit data"),
    ("+xv", "--prefer-j2k-lossless", "j2k-lossless", "prefer JPEG 2000 lossless TS"),
    ("+xw", "--prefer-j2k-lossy", "j2k-lossy", "prefer JPEG 2000 lossy TS"),
    ("+xt", "--prefer-jls-lossless", "jls-lossless", "prefer JPEG-LS lossless TS"),
    ("+xu", "--prefer-jls-lossy", "jls-lossy", "prefer JPEG-LS lossy TS"),
    ("+xm", "--prefer-mpeg2", "mpeg2", "prefer MPEG2 Main Profile @ Main Level TS"),
    ("+xh", "--prefer-mpeg2-high", "mpeg2-high", "prefer MPEG2 Main Profile @ High Level TS"),
    ("+xn", "--prefer-mpeg4", "mpeg4", "prefer MPEG4 AVC/H.264 High Profile / Level 4.1 TS"),
    ("+xl", "--prefer-mpeg4-bd", "mpeg4-bd", "prefer MPEG4 AVC/H.264 BD-compatible HP / Level 4.1 TS"),
    ("+x2", "--prefer-mpeg4-2-2d", "mpeg4-2-2d", "prefer MPEG4 AVC/H.264 HP / Level 4.2 TS for 2D Videos"),
    ("+x3", "--prefer-mpeg4-2-3d", "mpeg4-2-3d", "prefer MPEG4 AVC/H.264 HP / Level 4.2 TS for 3D Videos"),
    ("+xo", "--prefer-mpeg4-2-st", "mpeg4-2-st", "prefer MPEG4 AVC/H.264 Stereo HP / Level 4.2 TS"),
    ("+x4", "--prefer-hevc", "hevc", "prefer HEVC H.265 Main Profile / Level 5.1 TS"),
    ("+x5", "--prefer-hevc10", "hevc10", "prefer HEVC H.265 Main 10 Profile / Level 5.1 TS"),
    ("+xr", "--prefer-rle", "rle", "prefer RLE lossless TS"),
    ("+xd", "--prefer-deflated", "deflated", "prefer deflated explicit VR little endian TS"),
    ("+xi", "--implicit", "implicit", "accept implicit VR little endian TS only"),
    ("+xa", "--accept-all", "all", "accept all supported transfer syntaxes"),
)

TLS_PROFILES: tuple[tuple[str, str, str, str], ...] = (
    ("+pg", "--profile-8996", "bcp195-rfc8996", "BCP 195 RFC 8996 TLS Profile (default)"),
    ("+pm", "--profile-8996-mod", "bcp195-rfc8996-modified", "Modified BCP 195 RFC 8996 TLS Profile"),
    ("+py", "--profile-bcp195-nd", "bcp195-nd", "Non-downgrading BCP 195 TLS Profile (retired)"),
    ("+px", "--profile-bcp195", "bcp195", "BCP 195 TLS Profile (retired)"),
    ("+pz", "--profile-bcp195-ex", "bcp195-extended", "Extended BCP 195 TLS Profile (retired)"),
    ("+pb", "--profile-basic", "basic", "Basic TLS Secure Transport Connection Profile (retired)"),
    ("+pa", "--profile-aes", "aes", "AES TLS Secure Transport Connection Profile (retired)"),
    ("+pn", "--profile-null", "null", "Authenticated unencrypted communication (retired, was used in IHE ATNA)"),
)

LOG_LEVELS = ("fatal", "error", "warn", "info", "debug", "trace")
PROCESS_MODES = ("prefork", "fork", "single")
DUPLICATE_POLICIES = ("overwrite", "keep-first", "unique")
JOURNAL_DIGESTS = ("none", "sha256")


def _check_aetitle(value: str) -> str | None:
    if not value or len(value) > 16 or not value.isprintable() or "\\" in value:
        return "must be 1 to 16 printable characters without backslash"
    return None


def _check_command(value: str) -> str | None:
    return command_problem(value)


def _check_networks(value: list[Any]) -> str | None:
    """proxy_protocol_from: CIDR networks or single addresses, none that lists every address."""
    for entry in value:
        try:
            network = ipaddress.ip_network(entry if isinstance(entry, str) else "?")
        except ValueError as exc:
            if isinstance(entry, str) and "has host bits set" in str(exc):
                return (f"entry {entry!r} has host bits set: write the network "
                        f"({ipaddress.ip_network(entry, strict=False)}) or one address ({entry.split('/')[0]})")
            return (f"entry {entry!r} is not an IP address or CIDR network: list the load balancers, "
                    "e.g. [\"10.0.0.5\", \"10.1.0.0/24\"]")
        if network.prefixlen == 0:
            return (f"entry {entry!r} lists every address: anyone could then claim any address in a PROXY "
                    "header; list the load balancers' addresses")
    return None


def _check_journal(value: str) -> str | None:
    path = Path(value)
    if not value or value.endswith("/") or path.is_dir():
        return f"must name a file, not the directory '{value}' (e.g. /var/lib/storescpd/journal.sqlite)"
    if not path.absolute().parent.is_dir():
        return f"{value}: its directory {path.absolute().parent} does not exist: create it or name another file with --journal"
    return None


NETWORK_PREF_FLAGS = tuple(
    _flag(s, long, h, const=c, subgroup=PREFER) for s, long, c, h in PREFERENCES
)

SETTINGS: tuple[Setting, ...] = (
    # general options
    Setting(
        "log_level", "warn", "logging level of stderr output", G_GENERAL,
        flags=(
            _flag("-q", "--quiet", "quiet mode, print no warnings and errors", const="fatal"),
            _flag("-v", "--verbose", "verbose mode, print processing details", const="info"),
            _flag("-d", "--debug", "debug mode, print debug information", const="debug"),
            _value("-ll", "--log-level", "[l]evel: string constant",
                   "(fatal, error, warn, info, debug, trace)\nuse level l for the logger"),
        ),
        choices=LOG_LEVELS,
    ),
    Setting(
        "log_config", None, "logger configuration file (DCMTK oflog format)", G_GENERAL,
        flags=(_value("-lc", "--log-config", "[f]ilename: string", "use config file f for the logger"),),
        reloadable=False,
    ),
    Setting(
        "verbose_pc", False, "show presentation contexts in verbose mode", G_GENERAL,
        flags=(_flag("+v", "--verbose-pc", "show presentation contexts in verbose mode", const=True),),
        type=bool,
    ),
    # multi-process options
    Setting(
        "process_mode", "prefork",
        "prefork: a pool of worker processes; fork: one process per association (DCMTK --fork); "
        "single: one association at a time in one process (DCMTK default)",
        G_MULTI,
        flags=(
            _flag(None, "--single-process", "single process mode (DCMTK's default)", const="single"),
            _flag(None, "--fork", "fork child process for each association", const="fork"),
            _flag(None, "--prefork", "pre-forked pool of --workers processes (default)", const="prefork"),
        ),
        choices=PROCESS_MODES, reloadable=False,
    ),
    # network options
    Setting(
        "config_file", None, "association negotiation profile: [file, profile]", G_NETWORK,
        flags=(Flag("-xf", "--config-file", "use profile p from config file f", nargs=2,
                    metavar=("[f]ilename", "[p]rofile: string"),
                    subgroup="association negotiation profile from configuration file:"),),
        type=list,
    ),
    Setting(
        "transfer_syntaxes", "uncompressed", "preferred network transfer syntaxes", G_NETWORK,
        flags=NETWORK_PREF_FLAGS, choices=tuple(p[2] for p in PREFERENCES),
    ),
    Setting(
        "access_control", False, "enforce host access control rules (tcp wrapper)", G_NETWORK,
        flags=(
            _flag("-ac", "--access-full", "accept connections from any host (default)", const=False,
                  subgroup="network host access control (tcp wrapper):"),
            _flag("+ac", "--access-control", "enforce host access control rules", const=True,
                  subgroup="network host access control (tcp wrapper):"),
        ),
        type=bool,
    ),
    Setting(
        "hosts_allow", "/etc/hosts.allow", "the allow rules that +ac applies (hosts_access(5) format)", G_NETWORK,
        flags=(_value(None, "--hosts-allow", "[f]ilename: string", "rules granting access with +ac "
                      "(default: /etc/hosts.allow)", subgroup="network host access control (tcp wrapper):"),),
    ),
    Setting(
        "hosts_deny", "/etc/hosts.deny", "the deny rules that +ac applies (hosts_access(5) format)", G_NETWORK,
        flags=(_value(None, "--hosts-deny", "[f]ilename: string", "rules denying access with +ac "
                      "(default: /etc/hosts.deny)", subgroup="network host access control (tcp wrapper):"),),
    ),
    Setting(
        "inetd", False, "run from inetd super server: the association is on stdin", G_NETWORK,
        flags=(_flag("-id", "--inetd", "run from inetd super server (not with --fork)", const=True,
                     subgroup="other network options:"),),
        type=bool, in_file=False, reloadable=False,
    ),
    Setting(
        "socket_timeout", 60, "timeout for network socket in seconds (0 for none)", G_NETWORK,
        flags=(_value("-ts", "--socket-timeout", "[s]econds: integer (default: 60)",
                      "timeout for network socket (0 for none)"),),
        type=int, minimum=-1,  # DCMTK's minimum; -1, like 0, is no timeout
    ),
    Setting(
        "acse_timeout", 30, "timeout for ACSE messages in seconds", G_NETWORK,
        flags=(_value("-ta", "--acse-timeout", "[s]econds: integer (default: 30)", "timeout for ACSE messages"),),
        type=int, minimum=1,
    ),
    Setting(
        "dimse_timeout", 0, "timeout for DIMSE messages in seconds (0: unlimited)", G_NETWORK,
        flags=(_value("-td", "--dimse-timeout", "[s]econds: integer (default: unlimited)",
                      "timeout for DIMSE messages"),),
        type=int, minimum=0,
    ),
    Setting(
        "aetitle", "STORESCP", "my AE title", G_NETWORK,
        flags=(_value("-aet", "--aetitle", "[a]etitle: string", "set my AE title (default: STORESCP)"),),
        check=_check_aetitle,
    ),
    Setting(
        "max_pdu", 16384, "maximum receive PDU size in bytes (4096..131072)", G_NETWORK,
        flags=(_value("-pdu", "--max-pdu", "[n]umber of bytes: integer (4096..131072)",
                      "set max receive pdu to n bytes (default: 16384)"),),
        type=int, minimum=4096, maximum=131072,
    ),
    Setting(
        "disable_host_lookup", False, "disable hostname lookup", G_NETWORK,
        flags=(_flag("-dhl", "--disable-host-lookup", "disable hostname lookup", const=True),),
        type=bool,
    ),
    Setting(
        "refuse", False, "refuse every association (testing)", G_NETWORK,
        flags=(_flag(None, "--refuse", "refuse association", const=True),), type=bool,
    ),
    Setting(
        "reject_without_implementation_uid", False,
        "reject association if no implementation class UID", G_NETWORK,
        flags=(_flag(None, "--reject", "reject association if no implementation class UID", const=True),),
        type=bool,
    ),
    Setting(
        "ignore", False, "receive but do not store data (testing)", G_NETWORK,
        flags=(_flag(None, "--ignore", "ignore store data, receive but do not store", const=True),),
        type=bool,
    ),
    Setting(
        "sleep_after", 0, "sleep s seconds after store (testing)", G_NETWORK,
        flags=(_value(None, "--sleep-after", "[s]econds: integer", "sleep s seconds after store (default: 0)"),),
        type=int, minimum=0,
    ),
    Setting(
        "sleep_during", 0, "sleep s seconds during store, per received PDU (testing)", G_NETWORK,
        flags=(_value(None, "--sleep-during", "[s]econds: integer", "sleep s seconds during store (default: 0)"),),
        type=int, minimum=0,
    ),
    Setting(
        "abort_after", False, "abort association after receipt of C-STORE-RQ (testing)", G_NETWORK,
        flags=(_flag(None, "--abort-after",
                     "abort association after receipt of C-STORE-RQ\n(but before sending response)", const=True),),
        type=bool,
    ),
    Setting(
        "abort_during", False, "abort association during receipt of C-STORE-RQ (testing)", G_NETWORK,
        flags=(_flag(None, "--abort-during", "abort association during receipt of C-STORE-RQ", const=True),),
        type=bool,
    ),
    Setting(
        "promiscuous", False, "accept unknown SOP classes as storage", G_NETWORK,
        flags=(_flag("-pm", "--promiscuous", "promiscuous mode, accept unknown SOP classes\n(not with --config-file)",
                     const=True),),
        type=bool,
    ),
    Setting(
        "uid_padding", False, "silently correct space-padded UIDs", G_NETWORK,
        flags=(_flag("-up", "--uid-padding", "silently correct space-padded UIDs", const=True),),
        type=bool,
    ),
    # TLS
    Setting(
        "tls", None, "[private key file, certificate file]; unset: plain TCP", G_TLS,
        flags=(
            _flag("-tls", "--disable-tls", "use normal TCP/IP connection (default)", const=None,
                  subgroup="transport protocol stack:"),
            Flag("+tls", "--enable-tls", "use authenticated secure TLS connection", nargs=2,
                 metavar=("[p]rivate key file", "[c]ertificate file: string"),
                 subgroup="transport protocol stack:"),
        ),
        type=list,
    ),
    Setting(
        "tls_port", None, "also listen for TLS on this port while the main port stays plain (unset: with "
        "+tls the main port is TLS, as in DCMTK)", G_TLS,
        flags=(_value(None, "--tls-port", "[p]ort: integer",
                      "also listen for TLS on port p, the main port stays plain\n(storescpd)",
                      subgroup="transport protocol stack:"),),
        type=int, minimum=1, maximum=65535, reloadable=False,
    ),
    Setting(
        "tls_password", None, "private key password; unset: prompt (+ps)", G_TLS,
        flags=(
            _flag("+ps", "--std-passwd", "prompt user to type password on stdin (default)", const=None,
                  subgroup="private key password (only with --enable-tls):"),
            _value("+pw", "--use-passwd", "[p]assword: string", "use specified password",
                   subgroup="private key password (only with --enable-tls):"),
            _flag("-pw", "--null-passwd", "use empty string as password", const="",
                  subgroup="private key password (only with --enable-tls):"),
        ),
    ),
    Setting(
        "tls_key_format", "pem", "key and certificate file format", G_TLS,
        flags=(
            _flag("-pem", "--pem-keys", "read keys and certificates as PEM file (default)", const="pem",
                  subgroup="key and certificate file format:"),
            _flag("-der", "--der-keys", "read keys and certificates as DER file", const="der",
                  subgroup="key and certificate file format:"),
        ),
        choices=("pem", "der"),
    ),
    Setting(
        "tls_ca_files", [], "certificate files of trusted CAs", G_TLS,
        flags=(_value("+cf", "--add-cert-file", "[f]ilename: string", "add certificate file to list of certificates",
                      subgroup="certification authority:"),),
        type=list,
    ),
    Setting(
        "tls_ca_dirs", [], "directories of trusted CA certificates", G_TLS,
        flags=(_value("+cd", "--add-cert-dir", "[d]irectory: string", "add certificates in d to list of certificates",
                      subgroup="certification authority:"),),
        type=list,
    ),
    Setting(
        "tls_crl_files", [], "certificate revocation list files (imply leaf CRL verification)", G_TLS,
        flags=(_value("+crl", "--add-crl-file", "[f]ilename: string",
                      "add certificate revocation list file\n(implies --enable-crl-vfy)",
                      subgroup="certification authority:"),),
        type=list,
    ),
    Setting(
        "tls_crl_check", "none", "CRL verification: none, leaf or all", G_TLS,
        flags=(
            _flag("+crv", "--enable-crl-vfy", "enable leaf CRL verification", const="leaf",
                  subgroup="certification authority:"),
            _flag("+cra", "--enable-crl-all", "enable full chain CRL verification", const="all",
                  subgroup="certification authority:"),
        ),
        choices=("none", "leaf", "all"),
    ),
    Setting(
        "tls_profile", "bcp195-rfc8996", "TLS security profile", G_TLS,
        flags=tuple(_flag(s, long, h, const=c, subgroup="security profile:")
                    for s, long, c, h in TLS_PROFILES),
        choices=tuple(p[2] for p in TLS_PROFILES),
    ),
    Setting(
        "tls_list_ciphers", False, "show list of supported TLS ciphersuites and exit", G_TLS,
        flags=(_flag("+cc", "--list-ciphers", "show list of supported TLS ciphersuites and exit", const=True,
                     subgroup="ciphersuite:"),),
        type=bool, in_file=False,
    ),
    Setting(
        "tls_ciphers", [], "ciphersuites to negotiate (added to the profile's)", G_TLS,
        flags=(_value("+cs", "--cipher", "[c]iphersuite name: string", "add ciphersuite to list of negotiated suites",
                      subgroup="ciphersuite:"),),
        type=list,
    ),
    Setting(
        "tls_dhparam", None, "DH parameters file", G_TLS,
        flags=(_value("+dp", "--dhparam", "[f]ilename: string", "read DH parameters for DH/DSS ciphersuites",
                      subgroup="ciphersuite:"),),
    ),
    Setting(
        "tls_expect_sni", None, "server name to expect in SNI; unset: no SNI", G_TLS,
        flags=(
            _flag(None, "--no-sni", "do not use SNI (default)", const=None, subgroup="server name indication:"),
            _value(None, "--expect-sni", "[s]erver name: string", "expect requests for server name s",
                   subgroup="server name indication:"),
        ),
    ),
    Setting(
        "tls_seed", None, "random seed file (accepted; Python's generator needs no seed)", G_TLS,
        flags=(_value("+rs", "--seed", "[f]ilename: string", "seed random generator with contents of f",
                      subgroup="pseudo random generator:"),),
    ),
    Setting(
        "tls_write_seed", None, "file to write the seed back to, same-as-seed for +ws (accepted, no effect)", G_TLS,
        flags=(
            _flag("+ws", "--write-seed", "write back modified seed (only with --seed)", const="same-as-seed",
                  subgroup="pseudo random generator:"),
            _value("+wf", "--write-seed-file", "[f]ilename: string (only with --seed)",
                   "write modified seed to file f", subgroup="pseudo random generator:"),
        ),
    ),
    Setting(
        "tls_peer_cert", "require", "peer certificate: require, verify or ignore", G_TLS,
        flags=(
            _flag("-rc", "--require-peer-cert", "verify peer certificate, fail if absent (default)",
                  const="require", subgroup="peer authentication:"),
            _flag("-vc", "--verify-peer-cert", "verify peer certificate if present", const="verify",
                  subgroup="peer authentication:"),
            _flag("-ic", "--ignore-peer-cert", "don't verify peer certificate", const="ignore",
                  subgroup="peer authentication:"),
        ),
        choices=("require", "verify", "ignore"),
    ),
    # output options
    Setting(
        "output_directory", ".", "write received objects to this existing directory", G_OUTPUT,
        flags=(_value("-od", "--output-directory", "[d]irectory: string (default: '.')",
                      "write received objects to existing directory d", subgroup="general:"),),
    ),
    Setting(
        "bit_preserving", False, "write data exactly as read", G_OUTPUT,
        flags=(
            _flag("-B", "--normal", "allow implicit format conversions (default)", const=False,
                  subgroup="bit preserving mode:"),
            _flag("+B", "--bit-preserving", "write data exactly as read", const=True,
                  subgroup="bit preserving mode:"),
        ),
        type=bool,
    ),
    Setting(
        "write_file_format", True, "write DICOM file format (with meta information)", G_OUTPUT,
        flags=(
            _flag("+F", "--write-file", "write file format (default)", const=True, subgroup="output file format:"),
            _flag("-F", "--write-dataset", "write data set without file meta information", const=False,
                  subgroup="output file format:"),
        ),
        type=bool,
    ),
    Setting(
        "write_transfer_syntax", "same", "output transfer syntax", G_OUTPUT,
        flags=tuple(
            _flag(s, long, h, const=c,
                  subgroup="output transfer syntax (not with --bit-preserving or compressed transmission):")
            for s, long, c, h in (
                ("+t=", "--write-xfer-same", "same", "write with same TS as input (default)"),
                ("+te", "--write-xfer-little", "little", "write with explicit VR little endian TS"),
                ("+tb", "--write-xfer-big", "big", "write with explicit VR big endian TS"),
                ("+ti", "--write-xfer-implicit", "implicit", "write with implicit VR little endian TS"),
                ("+td", "--write-xfer-deflated", "deflated", "write with deflated explicit VR little endian TS"),
            )
        ),
        choices=("same", "little", "big", "implicit", "deflated"),
    ),
    Setting(
        "new_vr", True, "enable support for new VRs (UN/UT)", G_OUTPUT,
        flags=(
            _flag("+u", "--enable-new-vr", "enable support for new VRs (UN/UT) (default)", const=True,
                  subgroup="post-1993 value representations (not with --bit-preserving):"),
            _flag("-u", "--disable-new-vr", "disable support for new VRs, convert to OB", const=False,
                  subgroup="post-1993 value representations (not with --bit-preserving):"),
        ),
        type=bool,
    ),
    Setting(
        "group_length", "recalc", "group length encoding", G_OUTPUT,
        flags=(
            _flag("+g=", "--group-length-recalc", "recalculate group lengths if present (default)", const="recalc",
                  subgroup="group length encoding (not with --bit-preserving):"),
            _flag("+g", "--group-length-create", "always write with group length elements", const="create",
                  subgroup="group length encoding (not with --bit-preserving):"),
            _flag("-g", "--group-length-remove", "always write without group length elements", const="remove",
                  subgroup="group length encoding (not with --bit-preserving):"),
        ),
        choices=("recalc", "create", "remove"),
    ),
    Setting(
        "length_encoding", "explicit", "length encoding in sequences and items", G_OUTPUT,
        flags=(
            _flag("+e", "--length-explicit", "write with explicit lengths (default)", const="explicit",
                  subgroup="length encoding in sequences and items (not with --bit-preserving):"),
            _flag("-e", "--length-undefined", "write with undefined lengths", const="undefined",
                  subgroup="length encoding in sequences and items (not with --bit-preserving):"),
        ),
        choices=("explicit", "undefined"),
    ),
    Setting(
        "padding", None, "[file-pad, item-pad]; unset: no padding", G_OUTPUT,
        flags=(
            _flag("-p", "--padding-off", "no padding (default)", const=None,
                  subgroup="data set trailing padding (not with --write-dataset or --bit-preserving):"),
            Flag("+p", "--padding-create", "align file on multiple of f bytes and items on\nmultiple of i bytes",
                 nargs=2, metavar=("[f]ile-pad", "[i]tem-pad: integer"),
                 subgroup="data set trailing padding (not with --write-dataset or --bit-preserving):"),
        ),
        type=list,
    ),
    Setting(
        "convert_un", False, "convert defined-length UN elements to their real VR if known", G_OUTPUT,
        flags=(
            _flag("-uc", "--retain-un", "retain elements as UN (default)", const=False,
                  subgroup="handling of defined length UN elements:"),
            _flag("+uc", "--convert-un", "convert to real VR if known", const=True,
                  subgroup="handling of defined length UN elements:"),
        ),
        type=bool,
    ),
    Setting(
        "compression_level", 6, "deflate compression level (0..9)", G_OUTPUT,
        flags=(_value("+cl", "--compression-level", "[l]evel: integer (default: 6)",
                      "0=uncompressed, 1=fastest, 9=best compression",
                      subgroup="deflate compression level (only with --write-xfer-deflated/same):"),),
        type=int, minimum=0, maximum=9,
    ),
    Setting(
        "sort", None, "sorting into study subdirectories: [mode, prefix]", G_OUTPUT,
        flags=(
            _value("-ss", "--sort-conc-studies", "[p]refix: string", "sort studies using prefix p and a timestamp",
                   const="concurrent", subgroup="sorting into subdirectories (not with --bit-preserving):"),
            _value("-su", "--sort-on-study-uid", "[p]refix: string",
                   "sort studies using prefix p and the Study Instance UID", const="studyuid",
                   subgroup="sorting into subdirectories (not with --bit-preserving):"),
            _flag("-sp", "--sort-on-patientname", "sort studies using the Patient's Name and a timestamp",
                  const=["patientname", ""],
                  subgroup="sorting into subdirectories (not with --bit-preserving):"),
        ),
        type=list,
    ),
    Setting(
        "filenames", "default", "file name generation: default (from the instance UID) or unique (the value "
        "timenames of earlier versions reads as timenames = true)", G_OUTPUT,
        flags=(
            _flag("-uf", "--default-filenames", "generate filename from instance UID (default)", const="default",
                  subgroup="filename generation:"),
            _flag("+uf", "--unique-filenames", "generate unique filenames", const="unique",
                  subgroup="filename generation:"),
        ),
        choices=("default", "unique"),
    ),
    # A switch of its own in DCMTK, outside the -uf/+uf block: -tn -uf writes time names.
    Setting(
        "timenames", False, "generate file names from the creation time (not with unique filenames)", G_OUTPUT,
        flags=(_flag("-tn", "--timenames", "generate filename from creation time", const=True,
                     subgroup="filename generation:"),),
        type=bool,
    ),
    Setting(
        "filename_extension", "", "append this to all file names", G_OUTPUT,
        flags=(_value("-fe", "--filename-extension", "[e]xtension: string", "append e to all filenames",
                      subgroup="filename generation:"),),
    ),
    # event options
    Setting(
        "exec_on_reception", None, "command to run after each stored object", G_EVENT,
        flags=(_value("-xcr", "--exec-on-reception", "[c]ommand: string",
                      "execute command c after having received and processed\none C-STORE-RQ message"),),
        check=_check_command,
    ),
    Setting(
        "exec_on_eostudy", None, "command to run at the end of each study", G_EVENT,
        flags=(_value("-xcs", "--exec-on-eostudy", "[c]ommand: string",
                      "execute command c after having received and processed\n"
                      "all C-STORE-RQ messages that belong to one study"),),
        check=_check_command,
    ),
    Setting(
        "rename_on_eostudy", False, "rename a finished study's files", G_EVENT,
        flags=(_flag("-rns", "--rename-on-eostudy",
                     "having received and processed all C-STORE-RQ messages\nthat belong to one study, "
                     "rename output files according\nto a certain pattern", const=True),),
        type=bool,
    ),
    Setting(
        "eostudy_timeout", 0, "seconds of silence that end a study (0: off)", G_EVENT,
        flags=(_value("-tos", "--eostudy-timeout", "[t]imeout: integer",
                      "specifies a timeout of t seconds for end-of-study\ndetermination"),),
        type=int, minimum=0,
    ),
    Setting(
        "exec_sync", False, "run hooks synchronously", G_EVENT,
        flags=(_flag("-xs", "--exec-sync", "execute command synchronously in foreground", const=True),),
        type=bool,
    ),
    Setting(
        "hook_timeout", 600, "seconds a -xcr/-xcs command may run before it is killed (0: no limit)", G_EVENT,
        flags=(_value(None, "--hook-timeout", "[s]econds: integer",
                      "kill a hook still running after s seconds (default: 600, 0: never)"),),
        type=int, minimum=0,
    ),
    # daemon options (storescpd's own)
    Setting(
        "port", None, "TCP port to listen on (the positional argument of storescp)", G_DAEMON,
        type=int, minimum=1, maximum=65535, reloadable=False,
    ),
    Setting(
        "bind", "0.0.0.0", "address to listen on (IPv4 or IPv6; DCMTK listens on all IPv4 addresses)",
        G_DAEMON, flags=(_value(None, "--bind", "[a]ddress: string", "listen on address a (default: 0.0.0.0)"),),
        reloadable=False,
    ),
    Setting(
        "on_duplicate", "overwrite",
        "same SOP Instance UID stored again: overwrite (DCMTK, with a warning), keep-first "
        "(keep the stored file, answer success) or unique (store under a new unique name)",
        G_DAEMON,
        flags=(_value(None, "--on-duplicate", "[p]olicy: string",
                      "overwrite (default), keep-first or unique"),),
        choices=DUPLICATE_POLICIES,
    ),
    Setting(
        "fsync", True, "fsync each file and its directory before acknowledging (durability)", G_DAEMON,
        flags=(
            _flag(None, "--fsync", "fsync every object before success (default)", const=True),
            _flag(None, "--no-fsync", "do not fsync: faster, an acknowledged object can be lost on power loss",
                  const=False),
        ),
        type=bool,
    ),
    Setting(
        "workers", 4, "worker processes of the pre-fork pool", G_DAEMON,
        flags=(_value(None, "--workers", "[n]umber: integer", "pre-fork pool size (default: 4)"),),
        type=int, minimum=1, maximum=1024,
    ),
    Setting(
        "max_requests", 0, "recycle a pool worker after this many associations (0: never)", G_DAEMON,
        flags=(_value(None, "--max-requests", "[n]umber: integer", "recycle a worker after n associations"),),
        type=int, minimum=0,
    ),
    Setting(
        "max_associations", 0, "concurrent associations across all workers (0: unlimited)", G_DAEMON,
        flags=(_value(None, "--max-associations", "[n]umber: integer", "reject associations over n at once"),),
        type=int, minimum=0,
    ),
    Setting(
        "graceful_timeout", 30, "seconds a stop waits for running associations", G_DAEMON,
        flags=(_value(None, "--graceful-timeout", "[s]econds: integer", "drain time on SIGTERM (default: 30)"),),
        type=int, minimum=0,
    ),
    Setting(
        "api", None, "control API address HOST:PORT or unix:PATH; unset: off", G_DAEMON,
        flags=(_value(None, "--api", "[a]ddress: string", "serve the control API on a (HOST:PORT or unix:PATH)"),),
        reloadable=False,
    ),
    Setting(
        "api_token_file", None, "file holding the API bearer token", G_DAEMON,
        flags=(_value(None, "--api-token-file", "[f]ilename: string",
                      "require this bearer token on the API (mutating calls;\nevery call outside loopback)"),),
        reloadable=False,
    ),
    Setting(
        "api_allowed_hosts", [], "names the API also answers to (the Host a browser or proxy sends) besides its "
        "own address and localhost; any other Host gets 400",
        G_DAEMON,
        flags=(_value(None, "--api-allowed-host", "[n]ame: string",
                      "the API also answers requests for host name n\n(repeatable)"),),
        type=list, reloadable=False,
    ),
    Setting(
        "proxy_protocol_from", [],
        "load balancers (addresses or CIDR networks) whose connections begin with a PROXY protocol header "
        "(HAProxy send-proxy or send-proxy-v2) naming the client; a connection from one of them without "
        "a header, or from anywhere else with one, is refused",
        G_DAEMON,
        flags=(_value(None, "--proxy-protocol-from", "[n]etwork: string",
                      "connections from network n (CIDR or address) begin\nwith a PROXY protocol header "
                      "(repeatable)"),),
        type=list, check=_check_networks,
    ),
    Setting(
        "drain_delay", 0,
        "seconds a graceful stop (SIGTERM) keeps accepting while /readyz answers 503, so that a load "
        "balancer's health check sends new connections elsewhere before the listeners close (0: close at once)",
        G_DAEMON,
        flags=(_value(None, "--drain-delay", "[s]econds: integer",
                      "after SIGTERM, keep accepting s seconds while /readyz\nanswers 503 (default: 0)"),),
        type=int, minimum=0,
    ),
    Setting(
        "journal", None, "SQLite file of the receipt journal (one row per acknowledged object); unset: no journal",
        G_DAEMON,
        flags=(_value(None, "--journal", "[f]ilename: string",
                      "record every acknowledged object in the SQLite journal f"),),
        reloadable=False, check=_check_journal,
    ),
    Setting(
        "journal_digest", "none", "none, or sha256: the journal records each file's SHA-256 (computed while "
        "the data arrives)",
        G_DAEMON,
        flags=(_value(None, "--journal-digest", "[d]igest: string", "none (default) or sha256"),),
        choices=JOURNAL_DIGESTS,
    ),
    Setting(
        "journal_retention_days", 0, "days the journal keeps a receipt (0: forever)", G_DAEMON,
        flags=(_value(None, "--journal-retention-days", "[n]umber: integer",
                      "remove receipts older than n days (default: 0, never)"),),
        type=int, minimum=0,
    ),
    Setting(
        "run_directory", None, "directory for the control socket; unset: a private temporary one", G_DAEMON,
        flags=(_value(None, "--run-directory", "[d]irectory: string", "where the control socket lives"),),
        reloadable=False,
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass
class Config:
    """The effective configuration: one attribute per setting, plus where it came from."""

    values: dict[str, Any]
    source_file: str | None = None
    explicit: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        # Settings become plain attributes: the receive path reads some per PDU.
        for name, value in self.values.items():
            if name not in ("values", "source_file", "explicit"):
                self.__dict__[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, values={**self.values, **changes})


def defaults() -> dict[str, Any]:
    return {s.name: (list(s.default) if isinstance(s.default, list) else s.default) for s in SETTINGS}
