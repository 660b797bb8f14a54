"""TLS settings → ssl.SSLContext: what is built, what is refused and what the messages say."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from storescpd.config import load as config_load
from storescpd.config import settings as config
from storescpd.dicom import tls
from tests.support.ci import skip_or_fail
from tests.support.paths import DCMTK
from tests.support.peers import require_dcmtk
from tests.support.pki import OPENSSL, Pki


def tls_values(pki: Pki, **changes: object) -> dict[str, object]:
    values = {**config.defaults(), "port": 11112, "output_directory": None,
              "tls": [pki.server_key, pki.server_crt], "tls_ca_files": [pki.ca_crt]}
    values.update(changes)
    return values


def test_default_profile_is_bcp195_rfc8996(pki: Pki) -> None:
    assert tls.validate(tls_values(pki)) == []
    ctx = tls.build_context(tls_values(pki))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    # DCMTK's four RFC 9325 suites, strongest first (server preference).
    assert tls12 == ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384",
                     "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"]
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE


@pytest.mark.parametrize("mode,expected", [("require", ssl.CERT_REQUIRED), ("verify", ssl.CERT_OPTIONAL),
                                           ("ignore", ssl.CERT_NONE)])
def test_peer_certificate_modes(pki: Pki, mode: str, expected: ssl.VerifyMode) -> None:
    assert tls.build_context(tls_values(pki, tls_peer_cert=mode)).verify_mode == expected


def test_crl_file_implies_leaf_check_and_cra_checks_the_chain(pki: Pki) -> None:
    leaf = tls.build_context(tls_values(pki, tls_crl_files=[pki.ca_crl]))
    assert leaf.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    chain = tls.build_context(tls_values(pki, tls_crl_files=[pki.ca_crl], tls_crl_check="all"))
    assert chain.verify_flags & ssl.VERIFY_CRL_CHECK_CHAIN


def test_missing_key_names_the_file_and_the_option(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.key")
    (problem,) = tls.validate(tls_values(pki, tls=[missing, pki.server_crt]))
    assert missing in problem and "+tls" in problem and "does not exist" in problem


def test_unreadable_key_names_the_file_and_the_fix(pki: Pki, tmp_path: Path) -> None:
    # Permission bits do not stop root, a directory in place of the file does.
    (tmp_path / "dir.key").mkdir()
    (problem,) = tls.validate(tls_values(pki, tls=[str(tmp_path / "dir.key"), pki.server_crt]))
    assert str(tmp_path / "dir.key") in problem and "directory" in problem


def test_whole_configuration_build_reports_tls_problems(pki: Pki, tmp_path: Path) -> None:
    values = tls_values(pki, tls=[str(tmp_path / "gone.key"), pki.server_crt], output_directory=str(tmp_path))
    with pytest.raises(config.ConfigError, match="gone.key"):
        config_load.build({}, {k: v for k, v in values.items() if v is not None}, None)


def test_key_of_another_certificate_is_named(pki: Pki) -> None:
    (problem,) = tls.validate(tls_values(pki, tls=[pki.other_key, pki.server_crt]))
    assert pki.other_key in problem and pki.server_crt in problem and "does not belong" in problem


def test_encrypted_key_with_password(pki: Pki) -> None:
    assert tls.validate(tls_values(pki, tls=[pki.encrypted_key, pki.server_crt], tls_password="s3cret")) == []
    (problem,) = tls.validate(tls_values(pki, tls=[pki.encrypted_key, pki.server_crt], tls_password="wrong"))
    assert "wrong password" in problem and pki.encrypted_key in problem


def test_encrypted_key_without_password_and_without_terminal(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", open("/dev/null"))  # +ps prompts only on a terminal
    (problem,) = tls.validate(tls_values(pki, tls=[pki.encrypted_key, pki.server_crt]))
    assert pki.encrypted_key in problem and "+pw" in problem


def test_der_keys_certificates_and_crls(pki: Pki) -> None:
    values = tls_values(pki, tls=[pki.server_key_der, pki.server_crt_der], tls_key_format="der",
                        tls_ca_files=[pki.ca_crt_der], tls_crl_files=[pki.ca_crl_der])
    assert tls.validate(values) == []
    key_problem, ca_problem = tls.validate(tls_values(pki, tls_key_format="der"))  # PEM files read as DER
    assert pki.server_key in key_problem and "-pem" in key_problem
    assert pki.ca_crt in ca_problem and "-pem" in ca_problem


def test_certificate_in_place_of_key_and_key_in_place_of_certificate(pki: Pki) -> None:
    (problem,) = tls.validate(tls_values(pki, tls=[pki.ca_crt, pki.server_crt]))
    assert f"TLS private key {pki.ca_crt}" in problem
    (problem,) = tls.validate(tls_values(pki, tls=[pki.server_key, pki.server_key]))
    assert f"TLS certificate {pki.server_key}" in problem


def test_der_certificate_directory_is_refused_with_the_reason(pki: Pki) -> None:
    problems = tls.validate(tls_values(pki, tls=[pki.server_key_der, pki.server_crt_der], tls_key_format="der",
                                       tls_ca_files=[], tls_ca_dirs=[str(pki.dir)]))
    assert any("PEM only" in p for p in problems)


def test_certificate_directory_needs_hash_names(pki: Pki, tmp_path: Path) -> None:
    shutil.copy(pki.ca_crt, tmp_path / "ca.crt")
    (problem,) = tls.validate(tls_values(pki, tls_ca_files=[], tls_ca_dirs=[str(tmp_path)]))
    assert "openssl rehash" in problem
    subprocess.run([OPENSSL, "rehash", str(tmp_path)], check=True, capture_output=True)
    assert tls.validate(tls_values(pki, tls_ca_files=[], tls_ca_dirs=[str(tmp_path)])) == []


def test_require_without_any_ca_is_refused(pki: Pki) -> None:
    (problem,) = tls.validate(tls_values(pki, tls_ca_files=[]))
    assert "+cf" in problem and "-ic" in problem
    assert tls.validate(tls_values(pki, tls_ca_files=[], tls_peer_cert="ignore")) == []


@pytest.mark.parametrize("profile,minimum,maximum", [
    ("bcp195-nd", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED),
    ("bcp195", ssl.TLSVersion.TLSv1, ssl.TLSVersion.MAXIMUM_SUPPORTED),
    ("bcp195-extended", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
    ("aes", ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_2),
    ("null", ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_2),
])
def test_expressible_profiles(pki: Pki, profile: str, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion) -> None:
    ctx = tls.build_context(tls_values(pki, tls_profile=profile))
    assert ctx.minimum_version == minimum
    assert ctx.maximum_version in (maximum, ssl.TLSVersion.TLSv1_3 if maximum.name == "MAXIMUM_SUPPORTED" else maximum)
    names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"}
    expected = {tls.SUITE_BY_NAME[s].openssl for s in tls.PROFILES[profile].suites}
    assert names == expected


def test_modified_8996_profile_is_refused_because_tls13_suites_cannot_be_set(pki: Pki) -> None:
    (problem,) = tls.validate(tls_values(pki, tls_profile="bcp195-rfc8996-modified"))
    assert "TLS 1.3" in problem and "refused" in problem


def test_basic_profile_needs_3des(pki: Pki) -> None:
    if "DES-CBC3-SHA" in tls.available_openssl_names():
        # CI's OpenSSL 3 (Debian 12) has no 3DES at its default security level: there the check must run
        skip_or_fail("this OpenSSL still offers 3DES")
    (problem,) = tls.validate(tls_values(pki, tls_profile="basic"))
    assert "TLS_RSA_WITH_3DES_EDE_CBC_SHA" in problem and "does not offer" in problem


def test_added_ciphersuites_follow_dcmtk_rules(pki: Pki) -> None:
    ok = tls.build_context(tls_values(pki, tls_ciphers=["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"]))
    assert "ECDHE-RSA-CHACHA20-POLY1305" in {c["name"] for c in ok.get_ciphers()}
    (sha1,) = tls.validate(tls_values(pki, tls_ciphers=["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"]))
    assert "SHA-1" in sha1
    (null,) = tls.validate(tls_values(pki, tls_profile="bcp195-nd", tls_ciphers=["TLS_RSA_WITH_NULL_SHA"]))
    assert "unencrypted" in null
    (extended,) = tls.validate(tls_values(pki, tls_profile="bcp195-extended",
                                          tls_ciphers=["TLS_DHE_RSA_WITH_AES_256_GCM_SHA384"]))
    assert "not permitted" in extended
    (unknown,) = tls.validate(tls_values(pki, tls_ciphers=["ECDHE-RSA-AES128-GCM-SHA256"]))
    assert "IANA name" in unknown
    (tls13,) = tls.validate(tls_values(pki, tls_ciphers=["TLS_AES_128_CCM_SHA256"]))
    assert "TLS 1.3" in tls13


def test_dh_parameters_file(pki: Pki, tmp_path: Path) -> None:
    dh = tmp_path / "dh.pem"
    subprocess.run([OPENSSL, "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe3072",
                    "-out", str(dh)], check=True, capture_output=True)
    assert tls.validate(tls_values(pki, tls_dhparam=str(dh))) == []
    (problem,) = tls.validate(tls_values(pki, tls_dhparam=pki.ca_crt))
    assert pki.ca_crt in problem and "openssl dhparam" in problem


def test_tls_options_without_tls_are_errors(pki: Pki) -> None:
    values = {**config.defaults(), "tls_ca_files": [pki.ca_crt]}
    (problem,) = tls.validate(values)
    assert "+cf" in problem and "+tls" in problem


def test_seed_options_are_accepted(pki: Pki, tmp_path: Path) -> None:
    assert tls.validate(tls_values(pki, tls_seed=str(tmp_path / "seed"), tls_write_seed=True)) == []
    (problem,) = tls.validate(tls_values(pki, tls_write_seed=True))
    assert "+rs" in problem


@pytest.mark.parametrize("role,tls_port,listeners,applies", [
    ("dicom", None, ["dicom"], True),
    ("dicom", 2762, ["dicom", "dicom-tls"], False),
    ("dicom", None, ["dicom", "dicom-tls"], False),  # systemd sockets dicom + dicom-tls, no --tls-port
    ("dicom", None, ["dicom", "api"], True),
    ("dicom-tls", 2762, ["dicom", "dicom-tls"], True),
    ("dicom-tls", None, ["dicom", "dicom-tls"], True),
])
def test_which_connections_are_tls(pki: Pki, monkeypatch: pytest.MonkeyPatch, role: str, tls_port: int | None,
                                   listeners: list[str], applies: bool) -> None:
    monkeypatch.setattr(tls.context, "_separate_tls_listener", False)  # restored after the test
    tls.note_listeners(listeners)
    cfg = config.Config(tls_values(pki, tls_port=tls_port))
    assert tls.applies(cfg, role) is applies
    assert tls.applies(config.Config(config.defaults()), role) is False


def test_handshake_failures_are_classified() -> None:
    assert tls.classify(TimeoutError(), 30)[0] == "timeout"
    assert tls.classify(ConnectionResetError(), 30)[0] == "peer_closed"
    for reason, _cause in [tls.classify(TimeoutError(), 1), tls.classify(ValueError("x"), 1)]:
        assert reason in tls.REASONS


def test_list_ciphers_matches_dcmtk_storescp() -> None:
    require_dcmtk()
    out = subprocess.run([str(DCMTK / "storescp"), "+cc"], capture_output=True, text=True, timeout=30).stdout
    theirs = [ln.strip() for ln in out.splitlines() if ln.startswith("  TLS_")]
    ours = [ln.strip() for ln in tls.list_ciphers().splitlines() if ln.startswith("  TLS_")]
    assert ours == theirs
