"""Hooks run as argument vectors: splitting, substitution, environment, spawning, timeouts."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from storescpd.config.commands import command_problem, command_warnings, split_command
from storescpd.store.hooks import HookRequest, HookRunner, environment, substitute

INJECTIONS = ['x";touch PWNED;"', "$(id)", "`id`", "-rf", "a b", "1.2;3", "'; rm -rf / #", "#p#f"]


@pytest.mark.parametrize("value", INJECTIONS)
def test_a_value_is_exactly_one_argument(value: str) -> None:
    argv = substitute(split_command("/usr/bin/process --ae=#a -- #a #c"), {"calling_ae": value, "called_ae": value})
    assert argv == ["/usr/bin/process", f"--ae={value}", "--", value, value]


@pytest.mark.parametrize("command, values, expected", [
    ("prog #a", {"calling_ae": "-rf /"}, ["prog", "-rf /"]),
    ("prog '#a'", {"calling_ae": "-rf"}, ["prog", "-rf"]),  # quotes in the command change nothing
    ("prog x #c", {"called_ae": "--output=/etc/passwd"}, ["prog", "x", "--output=/etc/passwd"]),
    ("prog #r", {"peer": "-oProxyCommand=id"}, ["prog", "-oProxyCommand=id"]),  # a PTR record says what #r is
    ("prog #a#c", {"calling_ae": "", "called_ae": "-rf"}, ["prog", "-rf"]),
    ("prog -- #a", {"calling_ae": "-rf"}, ["prog", "--", "-rf"]),
    ("prog x#a", {"calling_ae": "-rf"}, ["prog", "x-rf"]),
    ("prog --ae=#a", {"calling_ae": "-rf"}, ["prog", "--ae=-rf"]),
    ("prog #p/#a", {"calling_ae": "-rf", "path": "/out"}, ["prog", "/out/-rf"]),
])
def test_a_peer_value_beginning_with_a_dash_is_passed_as_one_argument(command: str, values: dict[str, str],
                                                                      expected: list[str]) -> None:
    # As DCMTK passes it (docs/hooks.md): the hook always runs; the value never becomes two arguments.
    assert substitute(split_command(command), values) == expected


def test_substitution_is_one_pass_and_leaves_unknown_placeholders() -> None:
    values = {"path": "/out/#f", "file": "CT.1"}
    assert substitute(["prog", "#p", "#f", "#x", "#a"], values) == ["prog", "/out/#f", "CT.1", "#x", "#a"]
    assert substitute(["prog", "#a"], {"calling_ae": "A\0B"}) == ["prog", "AB"]  # exec cannot pass NUL


def test_placeholders_survive_splitting() -> None:
    # shlex treats "#" as a comment only when asked to; DCMTK's sh would drop "#f ..." after a space.
    assert split_command("script #p '#f' \"#a x\"") == ("script", "#p", "#f", "#a x")


@pytest.mark.parametrize("command, token", [
    ("a | b", "|"), ("a|b", "|"), ("a; b", ";"), ("a && b", "&&"), ("a > out", ">"),
    ("a 2>/dev/null", ">"), ("a < in", "<"), ("a &", "&"), ("echo $HOME", "$HOME"),
    ("echo $(id)", "$(...)"), ("echo `id`", "`...`"), ('echo "$1"', "$1"), ("rm *.tmp", "*"),
    ("ls ~/x", "~"), ("echo ${X}", "${...}"),
])
def test_shell_syntax_is_refused_with_a_way_out(command: str, token: str) -> None:
    problem = command_problem(command)
    assert problem is not None and f"({token}" in problem
    assert "sh -c" in problem and "STORESCPD_PATH" in problem


@pytest.mark.parametrize("command", [
    "/usr/local/bin/ingest #p #f", "sh -c 'a | b \"$1\" > /tmp/x' -- #p", "prog 'a;b' \"x|y\" a\\;b",
    "prog --x=~ a~b", "prog 50%",
])
def test_commands_without_shell_syntax_pass(command: str) -> None:
    assert command_problem(command) is None


def test_unusable_commands() -> None:
    assert "quotes" in (command_problem("prog 'unterminated") or "")
    assert command_problem("   ") == "is empty"
    assert "program name" in (command_problem("#p/run.sh") or "")


def test_warnings_for_placeholders_read_as_options_and_hash_f_at_end_of_study() -> None:
    assert any("'--'" in w for w in command_warnings("prog #a", "--exec-on-reception"))
    assert command_warnings("prog -- #a", "--exec-on-reception") == []
    assert command_warnings("prog #p #f", "--exec-on-reception") == []
    assert any("#f" in w for w in command_warnings("prog #p #f", "--exec-on-eostudy"))


def test_environment_carries_values_and_no_systemd_channels() -> None:
    base = {"PATH": "/bin", "NOTIFY_SOCKET": "/run/x", "LISTEN_FDS": "1", "LISTEN_PID": "2",
            "STORESCPD_FILE": "stale"}
    env = environment({"path": "/out/P", "calling_ae": "$(id)"}, "end-of-study", base)
    assert env == {"PATH": "/bin", "STORESCPD_PATH": "/out/P", "STORESCPD_CALLING_AE": "$(id)",
                   "STORESCPD_EVENT": "end-of-study"}


# ---- running them ------------------------------------------------------------------------

RECORDER = """import json, os, sys
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"argv": sys.argv[2:], "stdin": os.readlink("/proc/self/fd/0"), "fds": fds,
                          "env": {k: v for k, v in os.environ.items() if k.startswith(("STORESCPD", "NOTIFY"))},
                          "pgid_is_pid": os.getpgid(0) == os.getpid()}) + "\\n")
print("to stdout"); print("to stderr", file=sys.stderr)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def recorder(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    return [sys.executable, str(script), str(tmp_path / "calls.jsonl")], tmp_path / "calls.jsonl"


def request(argv: list[str], values: dict[str, str], **env: str) -> HookRequest:
    base = {**os.environ, "NOTIFY_SOCKET": "/run/not-for-hooks", **env}
    return HookRequest("--exec-on-reception", substitute(argv + ["#a"], values),
                       environment(values, "reception", base))


def test_run_sync_passes_values_literally_and_inherits_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv, calls = recorder(tmp_path)
    leaked = os.open(tmp_path, os.O_RDONLY)
    os.set_inheritable(leaked, True)  # a descriptor someone forgot to make close-on-exec
    caplog.set_level(logging.INFO, "storescpd.hooks")
    try:
        code = HookRunner().run_sync(request(argv, {"calling_ae": 'x";touch PWNED;"'}))
    finally:
        os.close(leaked)
    assert code == 0
    call = json.loads(calls.read_text())
    assert call["argv"] == ['x";touch PWNED;"']
    assert call["stdin"] == "/dev/null"
    assert call["fds"][:3] == [0, 1, 2] and leaked not in call["fds"]
    assert call["env"] == {"STORESCPD_CALLING_AE": 'x";touch PWNED;"', "STORESCPD_EVENT": "reception"}
    assert call["pgid_is_pid"]
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
    assert "to stderr" in caplog.text


def test_failing_hook_is_logged_with_status_and_output(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv, _ = recorder(tmp_path)
    assert HookRunner().run_sync(request(argv, {"calling_ae": "A"}, EXIT="3")) == 3
    assert "exited with status 3" in caplog.text and "to stderr" in caplog.text


def test_missing_program_is_an_error_not_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    assert HookRunner().run_sync(HookRequest("--exec-on-reception", ["/nonexistent/hook"], {})) is None
    assert "cannot execute --exec-on-reception" in caplog.text


def test_timeout_kills_the_hook_and_what_it_started(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "grandchild.pid"
    script = f"sleep 30 & echo $! > {marker}; wait"
    started = time.monotonic()
    code = HookRunner(timeout=0.5).run_sync(HookRequest("--exec-on-eostudy", ["sh", "-c", script], dict(os.environ)))
    assert time.monotonic() - started < 5
    assert code == -9
    assert "killed after" in caplog.text
    grandchild = int(marker.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.05)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_async_hooks_are_queued_reaped_and_logged(tmp_path: Path) -> None:
    argv, calls = recorder(tmp_path)
    runner = HookRunner(max_running=2)
    for n in range(5):
        runner.start(request(argv, {"calling_ae": f"AE{n}"}))
    assert len(runner.running) == 2 and len(runner.queue) == 3
    deadline = time.monotonic() + 20
    while (runner.running or runner.queue) and time.monotonic() < deadline:
        runner.reap()
        runner.poll()
        time.sleep(0.02)
    assert not runner.running and not runner.queue
    assert sorted(json.loads(line)["argv"][0] for line in calls.read_text().splitlines()) == \
        [f"AE{n}" for n in range(5)]


def test_hook_timeout_comes_from_the_configuration(tmp_path: Path) -> None:
    from storescpd.config import settings as cfg
    from storescpd.store.study_service import StudyService

    values = {**cfg.defaults(), "output_directory": str(tmp_path), "exec_on_reception": "/bin/true #f",
              "hook_timeout": 7}
    assert StudyService(cfg.Config(values), in_supervisor=True).runner.timeout == 7


def test_a_reloaded_hook_timeout_applies_to_hooks_started_after_it(tmp_path: Path) -> None:
    from storescpd.config import settings as cfg
    from storescpd.store.study_service import StudyService

    values = {**cfg.defaults(), "output_directory": str(tmp_path), "exec_on_reception": "/bin/true #f",
              "hook_timeout": 7}
    service = StudyService(cfg.Config(values), in_supervisor=True)
    service.reconfigure(cfg.Config({**values, "hook_timeout": 3}))
    assert service.runner.timeout == 3


def test_a_hook_started_without_a_timeout_keeps_none_after_a_reload_sets_one(tmp_path: Path) -> None:
    clock = [0.0]
    runner = HookRunner(timeout=0, clock=lambda: clock[0])
    pid = runner.start(request(["/bin/sh", "-c", "exec sleep 30"], {}))
    assert pid is not None
    try:
        runner.timeout = 5  # a reload; before the fix, the old hook's deadline was its start
        clock[0] = 10.0
        runner.poll()
        assert _alive(pid) and not runner.running[pid].killed
    finally:
        os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        runner.exited(pid, os.waitstatus_to_exitcode(status))
