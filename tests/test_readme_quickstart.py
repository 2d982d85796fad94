"""The README's quick start, as written: taken from README.md and run in a fresh virtual environment.

Each quick-start block in the README follows an HTML comment ``<!-- quickstart: NAME -->``: ``install``
(the pip command), the files ``storages.yml``, ``proj.py`` and ``send.py``, ``worker`` (the worker command)
and ``send`` (``$ command`` lines, then the output they print). The package is installed from this
checkout with the extras the README names; everything else runs as the README says, in a directory of its
own, with a real worker.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import venv
from pathlib import Path

import pytest

from tests.workers import ROOT, wait_for

QUICKSTART_BLOCK = re.compile(r"<!-- quickstart: (?P<name>\S+) -->\n```[^\n]*\n(?P<body>.*?)\n```", re.DOTALL)
PACKAGE = "celery-selinon-storage"
#: What of the checkout a wheel is built from (pyproject's readme is README.md).
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "celery_selinon_storage")


def quickstart_blocks(readme: str) -> dict[str, str]:
    """The README's quick-start blocks by name."""
    blocks = {match["name"]: match["body"] for match in QUICKSTART_BLOCK.finditer(readme)}
    missing = {"install", "storages.yml", "proj.py", "worker", "send.py", "send"} - set(blocks)
    assert not missing, f"README.md has no quick-start block for {sorted(missing)}"
    return blocks


def pip_arguments(install_command: str, checkout: Path) -> list[str]:
    """The README's ``pip install`` arguments, the package itself taken from ``checkout`` (extras kept)."""
    words = shlex.split(install_command)
    assert words[:2] == ["pip", "install"], f"the quick start's install block is not a pip install: {words}"
    arguments = [
        str(checkout) + word.removeprefix(PACKAGE)
        if word == PACKAGE or word.startswith(PACKAGE + "[")
        else word
        for word in words[2:]
    ]
    assert any(str(checkout) in word for word in arguments), (
        f"{PACKAGE} is not installed by: {install_command}"
    )
    return arguments


def copy_of_checkout(destination: Path) -> Path:
    """What a wheel is built from, copied, so that building leaves nothing in the repository."""
    for name in PACKAGE_SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            destination.mkdir(exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def fresh_environment(path: Path, install_command: str, checkout: Path) -> dict[str, str]:
    """A new venv with the README's pip install done in it; the environment that runs its commands first."""
    venv.create(path, with_pip=True)
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("CELERY_SELINON_STORAGES", None)
    env.update(PATH=f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(path))
    install = subprocess.run(
        [str(path / "bin" / "pip"), "install", "--quiet", *pip_arguments(install_command, checkout)],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    return env


def commands_and_output(session: str) -> tuple[list[str], str]:
    """``$ command`` lines and the output shown after them."""
    lines = session.splitlines()
    commands = [line[2:] for line in lines if line.startswith("$ ")]
    output = "\n".join(line for line in lines if not line.startswith("$ "))
    return commands, output


@pytest.mark.worker
def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    blocks = quickstart_blocks((ROOT / "README.md").read_text(encoding="utf-8"))

    checkout = copy_of_checkout(tmp_path / "checkout")
    env = fresh_environment(tmp_path / "venv", blocks["install"], checkout)

    project = tmp_path / "project"
    project.mkdir()
    for name in ("storages.yml", "proj.py", "send.py"):
        (project / name).write_text(blocks[name] + "\n", encoding="utf-8")

    commands, expected = commands_and_output(blocks["send"])
    worker_command = shlex.split(blocks["worker"])
    found = shutil.which(worker_command[0], path=env["PATH"])
    assert found is not None and Path(found).parent == tmp_path / "venv" / "bin", (
        f"not the new venv's: {found}"
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(worker_command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    def worker_ready() -> bool:
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited with {worker.returncode}:\n{log_text()}")
        return re.search(r"\bready\.", log_text()) is not None and "storages started in process" in log_text()

    try:
        wait_for(worker_ready, 60, "the README's worker to be ready", detail=log_text)
        for command in commands:
            sent = subprocess.run(
                shlex.split(command),
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr + log_text()
            assert sent.stdout.strip() == expected.strip(), sent.stdout + sent.stderr
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            status = worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
            raise AssertionError(f"the worker did not stop on SIGTERM within 60 s:\n{log_text()}") from None

    # The record is in the database, read here without the package.
    with sqlite3.connect(project / "results.sqlite3") as database:
        rows = database.execute(
            "SELECT task_id, flow_name, task_name, result FROM selinon_results"
        ).fetchall()
    assert [(flow, task, json.loads(result)) for _, flow, task, result in rows] == [
        ("proj", "square", ast.literal_eval(expected.strip()))  # what the README says send.py prints
    ]
    assert status == 0, log_text()
    assert "storages closed in process" in log_text()
    assert "Traceback" not in log_text(), log_text()
