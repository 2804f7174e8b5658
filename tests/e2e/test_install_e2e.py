"""End to end: `pip install .` of a copy of the repository into a fresh venv of this Python gives a
working `mitm-rules` (every package of addon/ shipped, the dependencies declared), run from a folder
of its own, with nothing of the repository on its path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from addon import __version__
from helpers import ROOT, TOKENS, write_rules

RULES = """\
rules:
  - name: account
    match: {host: api.example.com}
    headers: {Authorization: "Bearer {token}", User-Agent: Mozilla/5.0}
tokens: {file: tokens.txt}
"""


def _copy_of_the_repository(to: Path) -> Path:
    """The files git tracks (a clean checkout: no venv, no build output), as `pip install .` would see them."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    for name in ("addon", "pyproject.toml", "LICENSE", "README.md"):  # what a change not yet committed has too
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, to / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, to / name)
    return to


def test_pip_install_into_a_fresh_venv_gives_a_working_mitm_rules(tmp_path):
    source = _copy_of_the_repository(tmp_path / "source")
    venv = tmp_path / "venv"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    installed = subprocess.run([*pip, "install", "-q", str(source)], capture_output=True, text=True, env=env, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert subprocess.run([*pip, "check"], capture_output=True, text=True, env=env, timeout=120).returncode == 0

    folder = tmp_path / "elsewhere"
    folder.mkdir()
    write_rules(folder, RULES, captcha=None)
    command = str(venv / "bin" / "mitm-rules")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([command, *args], cwd=folder, capture_output=True, text=True, env=env, timeout=120)

    assert run("--version").stdout.strip() == f"mitm-rules {__version__}"
    checked = run("check", "rules.yaml")
    assert checked.returncode == 0 and checked.stdout.startswith("ok:"), checked.stdout + checked.stderr
    explained = run("explain", "GET", "https://api.example.com/v1/models")
    assert explained.returncode == 0, explained.stderr
    assert f"Authorization: Bearer …{TOKENS[0][-4:]}" in explained.stdout
    # every module imports (the whole pipeline, as mitmdump loads it; the Lua scripts are read at import)
    code = "import addon, addon.pipeline, addon.tokens.storerecords as s; print(addon.__file__, len(s.SCRIPTS))"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=folder, capture_output=True, text=True,
                           env=env, timeout=60)  # fmt: skip
    assert where.stdout.startswith(str(venv)) and where.stdout.split()[1] == "7", where.stdout + where.stderr
