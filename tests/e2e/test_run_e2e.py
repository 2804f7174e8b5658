"""End to end: the README's first command, `scripts/run`, as a user runs it from a folder of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, Proxy, assert_no_secrets

# scripts/run sets up the venv it is given; this one is the venv running the tests, on its own interpreter
ENV = {**os.environ, "VENV": Path(sys.prefix).name, "PYTHON": sys.executable, "TERM": "dumb"}


class Run(Proxy):
    """`scripts/run ARGS` started in `cwd`, on a free port, with its log in the test's folder."""

    def __init__(self, cwd: Path, *args: str) -> None:
        super().__init__(cwd / "unused.yaml", cwd, addon=False)
        self.cwd = cwd
        self.args = [str(ROOT / "scripts" / "run"), *args, "--listen-port", str(self.port),
                     "--set", f"confdir={self.confdir}", "--set", "termlog_verbosity=debug"]  # fmt: skip

    def start(self) -> Run:
        self._log = open(self.logfile, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.cwd, env=ENV)  # fmt: skip
        self.wait_for_log(r"HTTP\(S\) proxy listening at", timeout=120)  # the first run may install
        return self


def test_run_applies_the_users_rules_file_named_relative_to_their_folder(tmp_path, upstream):
    (tmp_path / "my-rules.yaml").write_text(
        f'rules:\n  - name: mine\n    match: {{host: "127.0.0.1:{upstream.port}"}}\n    headers: {{X-Mine: "yes"}}\n'
    )
    run = Run(tmp_path, "--set", "rules=my-rules.yaml").start()
    try:
        run.wait_for_log(r"rules: loaded my-rules.yaml: 1 rule\(s\)")
        with httpx.Client(proxy=run.url, timeout=30) as client:
            assert client.get(f"http://127.0.0.1:{upstream.port}/v1/models").status_code == 403  # no token: refused
    finally:
        run.stop()
    assert [r.header("x-mine") for r in upstream.app.received] == ["yes"]
    assert_no_secrets(tmp_path)


def test_run_without_arguments_uses_the_example_rules(tmp_path):
    run = Run(tmp_path).start()
    try:
        run.wait_for_log(rf"rules: loaded {ROOT / 'rules.yaml'}: \d+ rule\(s\)")
    finally:
        run.stop()


@pytest.mark.parametrize(
    "args, messages",
    [
        (["--set", "rules=a.yaml", "--set", "rules=b.yaml"], ["could not set the rules addon's options: Received "
         "multiple values for rules: ['a.yaml', 'b.yaml'] (not applied: rules)", "requests would pass unchanged"]),
        # mitmproxy 11 says "Not an integer: soon", 12 "Failed to parse option retry_timeout: not an integer: soon"
        (["--set", "retry_timeout=soon"], ["could not set the rules addon's options: ", "nteger: soon (not applied: "
         "retry_timeout, rules)"]),
        (["--set", "rules=missing.yaml"], ["missing.yaml:1:1: rules file not found"]),
        # issue 23, attack 10: before, it started and ran as if the option had not been given
        (["--set", "retry_timout=30"], ["unknown option retry_timout (--set retry_timout=…): neither mitmproxy nor a "
         "script it loaded has it (did you mean retry_timeout?). The proxy does not start with an option it would "
         "ignore."]),
    ],
    ids=["rules given twice", "not an integer", "no such rules file", "misspelled option"],
)
def test_an_option_that_cannot_be_set_stops_the_start(tmp_path, args, messages):
    run = Run(tmp_path, *args)
    proc = subprocess.run(run.args, capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=120,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for message in messages:
        assert message in proc.stdout + proc.stderr
    assert "Error logged during startup, exiting" in proc.stderr


OTHER_SCRIPT = """\
class Other:
    def load(self, loader):
        loader.add_option("other_limit", int, 1, "An option of another script.")


addons = [Other()]
"""


def test_options_of_other_scripts_are_known_and_others_in_config_yaml_only_warn(tmp_path, upstream):
    (tmp_path / "other.py").write_text(OTHER_SCRIPT)
    run = Run(tmp_path, "-s", "other.py", "--set", "other_limit=3")
    run.confdir.mkdir()
    (run.confdir / "config.yaml").write_text("web_open_browser: false\nretry_timout: 5\n")  # mitmweb's, and a typo
    run.start()
    try:
        run.wait_for_log(r"unknown option retry_timout in mitmproxy's config.yaml: neither mitmproxy nor a script it "
                         r"loaded has it \(did you mean retry_timeout\?\); it is ignored")  # fmt: skip
        with httpx.Client(proxy=run.url, timeout=30) as client:  # and it runs
            assert client.get(f"http://127.0.0.1:{upstream.port}/v1/models").status_code == 403
    finally:
        run.stop()
    assert "option web_open_browser is one of mitmweb's; this tool of mitmproxy ignores it" in run.log()
    assert "other_limit" not in run.log()


def test_a_rules_file_with_no_rules_says_so(tmp_path):
    (tmp_path / "empty.yaml").write_text("rules: []\n")
    run = Run(tmp_path, "--set", "rules=empty.yaml").start()
    try:
        run.wait_for_log(r"rules: empty.yaml has no rules: every request passes unchanged")
    finally:
        run.stop()


def test_the_mitm_rules_command_works_from_any_folder(tmp_path):
    (tmp_path / "r.yaml").write_text('rules:\n  - match: {host: a.example}\n    headers: {X: "y"}\n')
    command = Path(sys.executable).with_name("mitm-rules")
    ok = subprocess.run([str(command), "check", "r.yaml"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 1 rule(s)"), ok.stdout + ok.stderr
    schema = subprocess.run([str(command), "schema"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert schema.stdout == (ROOT / "rules.schema.json").read_text()
