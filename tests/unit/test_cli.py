"""The storescp command line generated from the settings table."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from storescpd.cli.main import main
from storescpd.config import cmdline as cli
from storescpd.config.settings import SETTINGS, ConfigError
from storescpd.config.load import load_toml


def values(*argv: str) -> dict:
    return cli.parse(list(argv))[0]


def test_option_blocks_are_last_wins() -> None:
    assert values("+xe", "+xi")["transfer_syntaxes"] == "implicit"
    assert values("+xi", "+xe")["transfer_syntaxes"] == "little"
    assert values("-q", "-v")["log_level"] == "info"
    assert values("-ll", "debug", "-ll", "trace")["log_level"] == "trace"
    assert values("--fork", "--single-process")["process_mode"] == "single"


def test_plus_and_minus_spellings_differ() -> None:
    assert values("+v")["verbose_pc"] is True
    assert values("-v")["log_level"] == "info"
    assert values("+F")["write_file_format"] is True
    assert values("-F")["write_file_format"] is False
    assert values("+uf")["filenames"] == "unique"
    assert values("-uf")["filenames"] == "default"


def test_timenames_is_a_switch_outside_the_filenames_block(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # DCMTK: -tn -uf names by time; +uf with -tn, in either order, is refused.
    assert values("-tn", "-uf") == {"timenames": True, "filenames": "default"}
    assert values("-uf", "-tn") == {"timenames": True, "filenames": "default"}
    for argv in (["+uf", "-tn"], ["-tn", "+uf"]):
        assert main([*argv, "-od", str(tmp_path), "--check-config", "104"]) == 1
        assert "--timenames not allowed with --unique-filenames" in capsys.readouterr().err


def test_filenames_timenames_of_earlier_files_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'filenames = "timenames"\noutput_directory = "{tmp_path}"\n')
    config, _ = cli.load_config(["--config", str(path), "104"])
    assert config.timenames is True and config.filenames == "default"


def test_an_encoding_option_named_at_its_default_re_encodes(tmp_path: Path) -> None:
    # DCMTK's +e writes explicit lengths even though it is the default; no option keeps the stream.
    from storescpd.store.convert import EXPLICIT_LE, encoding_for

    plain, _ = cli.load_config(["-od", str(tmp_path), "104"])
    assert encoding_for(plain, EXPLICIT_LE) is None
    for flag in ("+e", "+g=", "+t=", "+u", "-uc", "-p"):
        config, _ = cli.load_config([flag, "-od", str(tmp_path), "104"])
        assert encoding_for(config, EXPLICIT_LE) is not None, flag
    path = tmp_path / "c.toml"
    path.write_text(f'length_encoding = "explicit"\noutput_directory = "{tmp_path}"\n')
    config, _ = cli.load_config(["--config", str(path), "104"])
    assert encoding_for(config, EXPLICIT_LE) is None  # a file at the default states, it does not ask
    config, _ = cli.load_config(["+B", "-od", str(tmp_path), "104"])
    assert encoding_for(config, EXPLICIT_LE) is None


def test_values_and_port() -> None:
    v = values("-aet", "MYAE", "-pdu", "65536", "-od", "/tmp", "11112")
    assert v == {"aetitle": "MYAE", "max_pdu": 65536, "output_directory": "/tmp", "port": 11112}


def test_tagged_values_keep_their_mode() -> None:
    assert values("-ss", "PFX")["sort"] == ["concurrent", "PFX"]
    assert values("-su", "P")["sort"] == ["studyuid", "P"]
    assert values("-su", "P", "-sp")["sort"] == ["patientname", ""]


def test_two_value_options() -> None:
    assert values("-xf", "a.cfg", "Default")["config_file"] == ["a.cfg", "Default"]


def test_non_integer_is_a_usage_error() -> None:
    with pytest.raises(cli.UsageError, match="'x' is not an integer"):
        values("-pdu", "x")


def test_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(cli.UsageError):
        values("--no-such-option")


def test_command_file_expands_with_quotes(tmp_path: Path) -> None:
    f = tmp_path / "args.txt"
    f.write_text('-aet   "MY AE"\n +xa  -od /data\n')
    assert cli.expand_command_files(["-v", f"@{f}", "104"]) == ["-v", "-aet", "MY AE", "+xa", "-od", "/data", "104"]


def test_command_file_cannot_nest(tmp_path: Path) -> None:
    f = tmp_path / "args.txt"
    f.write_text("@other.txt")
    with pytest.raises(cli.UsageError, match="cannot contain another command file"):
        cli.expand_command_files([f"@{f}"])


def test_out_of_range_value_names_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-pdu", "100", "-od", str(tmp_path), "--check-config", "104"]) == 1
    assert "max_pdu must be at least 4096, not 100" in capsys.readouterr().err


def test_missing_output_directory_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-od", "/nonexistent/dir", "--check-config", "104"]) == 1
    assert "output directory /nonexistent/dir does not exist: create it" in capsys.readouterr().err


def test_conflicts_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--inetd", "--fork", "-od", str(tmp_path), "--check-config"]) == 1
    assert "--inetd cannot be combined with --fork" in capsys.readouterr().err


def test_help_lists_every_spelling_grouped_like_the_manual(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == 0
    text = capsys.readouterr().out
    for setting in SETTINGS:
        for flag in setting.flags:
            for spelling in flag.spellings:
                assert spelling in text, spelling
    assert text.index("network options:") < text.index("output options:") < text.index("event options:")


def test_print_config_is_valid_toml_that_loads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-od", str(tmp_path), "-aet", "X", "+xa", "--print-config", "104"]) == 0
    text = capsys.readouterr().out
    data = tomllib.loads(text)
    assert data["aetitle"] == "X" and data["transfer_syntaxes"] == "all" and data["port"] == 104
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert load_toml(str(path))["output_directory"] == str(tmp_path)


def test_config_file_unknown_key_and_type_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("no_such_key = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'no_such_key'"):
        load_toml(str(path))
    path.write_text("workers = 'four'\n")
    with pytest.raises(ConfigError, match="key 'workers' must be an integer"):
        load_toml(str(path))


def test_command_line_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'aetitle = "FROMFILE"\nworkers = 7\noutput_directory = "{tmp_path}"\n')
    config, _ = cli.load_config(["--config", str(path), "-aet", "FROMCLI", "104"])
    assert config.aetitle == "FROMCLI" and config.workers == 7


def test_arguments_prints_the_expansion_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "a.txt"
    f.write_text("+xa -v")
    # --check-config stops the run after the arguments were printed, as a port would keep it running
    assert main(["--arguments", f"@{f}", "-od", str(tmp_path), "--check-config", "104"]) == 0
    captured = capsys.readouterr()
    assert "I: calling 'storescpd' with 7 arguments: '--arguments' '+xa' '-v' '-od'" in captured.err
    assert "configuration OK" in captured.out


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "usage: storescpd [options] [port]" in capsys.readouterr().out


def test_documented_config_file_is_generated_from_the_table() -> None:
    from storescpd.config.load import documented_defaults

    committed = (Path(__file__).resolve().parents[2] / "etc" / "storescpd.toml").read_text()
    assert committed == documented_defaults(), "regenerate: python -m storescpd.config.load > etc/storescpd.toml"


@pytest.mark.parametrize("argv", [["--version"], ["--version", "-od", "/nonexistent", "104"]])
def test_version_prints_ours_and_the_dcmtk_line_and_exits_0(argv: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from storescpd import __version__

    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"storescpd v{__version__}"
    assert lines[1] == "(DCMTK storescp 3.6.7 command line compatible)"


def test_version_from_the_installed_command_exits_0() -> None:
    import subprocess

    from tests.support.paths import STORESCPD

    result = subprocess.run([STORESCPD, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "(DCMTK storescp 3.6.7 command line compatible)" in result.stdout


def test_command_file_single_quotes_and_latin1(tmp_path: Path) -> None:
    # Measured with DCMTK 3.6.7's --arguments: single quotes group words as double quotes do.
    f = tmp_path / "args.txt"
    f.write_text("-aet 'STORESCP2' -fe '.dcm' -od 'out dir'\n")
    assert cli.expand_command_files([f"@{f}"]) == ["-aet", "STORESCP2", "-fe", ".dcm", "-od", "out dir"]
    f.write_bytes(b"-od d\xe9\n")  # written by an editor in Latin-1
    assert cli.expand_command_files([f"@{f}"]) == ["-od", "dé"]


@pytest.mark.parametrize("argv", [["+a"], ["-rn"], ["-vd"], ["-ae", "FOO"], ["--max-pd", "5000"]])
def test_no_abbreviations_or_joined_flags(argv: list[str]) -> None:
    """DCMTK answers 'Unknown option' to each; a typo must not switch something on."""
    with pytest.raises(cli.UsageError):
        values(*argv)


def test_values_dcmtk_takes_that_a_strict_reading_refused(tmp_path: Path) -> None:
    assert values("-ll", "INFO")["log_level"] == "info"
    assert values("-ts", "-1")["socket_timeout"] == -1  # DCMTK's minimum: no timeout, as 0
    from storescpd.config.load import validate

    assert validate({"socket_timeout": -1}) == []
    assert any("output directory is empty" in p for p in validate({"output_directory": ""}))


@pytest.mark.parametrize("argv,message", [
    (["+v"], "--verbose-pc only allowed with verbose mode"),
    (["+v", "-ll", "warn"], "--verbose-pc only allowed with verbose mode"),
    (["-q", "-ll", "debug"], "--log-level not allowed with --verbose, --debug or --quiet"),
    (["-lc", "x.cfg", "-v"], "--log-config not allowed with --verbose, --debug or --quiet"),
    (["+p", "-1", "8"], "Invalid value for option --padding-create (-1)"),
    (["-td", "0"], "Invalid value for option --dimse-timeout (underflow: 0)"),
])
def test_combinations_and_values_dcmtk_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                               message: str) -> None:
    """Each message measured with /usr/bin/storescp 3.6.7 on the same command line (exit 1)."""
    assert main([*argv, "-od", str(tmp_path), "--check-config", "104"]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-v", "+v"], ["-ll", "info", "+v"], ["-d", "+v"], ["-td", "1"]])
def test_what_dcmtk_accepts_of_those(tmp_path: Path, argv: list[str]) -> None:
    assert main([*argv, "-od", str(tmp_path), "--check-config", "104"]) == 0
