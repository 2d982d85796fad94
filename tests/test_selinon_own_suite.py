"""Selinon's own test suite passes with ``bridge_selinon()`` on, test for test as it does without it.

The suite is not copied into this repository: it is the ``test/`` directory of Selinon's sdist on PyPI, for
the Selinon version installed here, downloaded with pip when this test first runs (then kept in pytest's cache
directory). It runs unmodified, as Selinon's Makefile runs it (``test/`` first on ``PYTHONPATH`` for its mock
``celery``, ``-p no:celery``), in a subprocess, twice: as it is, and with ``-p css_bridge_plugin``
(tests/selinon_suite/), which calls ``bridge_selinon()`` before the suite starts. Its only extra need,
flexmock, is installed beside it. The sdist leaves out ``test/data``, so the tests that read it fail in both runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

SELINON_VERSION = importlib.metadata.version("selinon")
FLEXMOCK = "flexmock==0.13.0"
PLUGIN_DIR = Path(__file__).with_name("selinon_suite")
#: Selinon 1.4.0's sdist: 167 of its tests pass here (the others read test/data, which it leaves out).
LEAST_PASSED = 160

pytestmark = pytest.mark.service  # PyPI, on the first run


def pip(*arguments: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *arguments],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(
            f"pip {' '.join(arguments)} failed (exit {done.returncode}): {last}; PyPI must be reachable"
        )


@pytest.fixture(scope="module")
def selinon_suite(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Selinon's sdist unpacked (its root, holding ``test/``) and a directory with flexmock."""
    cache = getattr(request.config, "cache", None)
    home = (
        cache.mkdir(f"selinon-{SELINON_VERSION}-suite")
        if cache is not None
        else tmp_path_factory.mktemp("selinon-suite")
    )
    root, deps = home / f"selinon-{SELINON_VERSION}", home / "deps"
    if not (root / "test" / "selinon_test_case.py").is_file():
        download = home / "sdist"
        pip(
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"selinon=={SELINON_VERSION}",
            "-d",
            str(download),
        )
        (sdist,) = download.glob(f"selinon-{SELINON_VERSION}.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(home, filter="data")
    if not (deps / "flexmock").is_dir():
        pip("install", "--no-deps", "--target", str(deps), FLEXMOCK)
    return root, deps


def run_suite(root: Path, deps: Path, report: Path, *, bridged: bool) -> tuple[dict[str, str], str]:
    """Each test's outcome (passed, failed, error, skipped), and the run's output."""
    plugin = ["-p", "css_bridge_plugin"] if bridged else []
    command = [
        sys.executable, "-m", "pytest", "-p", "no:celery", "-p", "no:cacheprovider", *plugin,
        "-c", str(PLUGIN_DIR / "pytest.ini"), "--rootdir", str(root), "--timeout=60", f"--junitxml={report}",
        "test/",
    ]  # fmt: skip
    path = os.pathsep.join(["test", str(deps), str(PLUGIN_DIR)])
    done = subprocess.run(
        command, cwd=root, env={**os.environ, "PYTHONPATH": path},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert report.is_file(), done.stdout + done.stderr
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        found = {child.tag for child in case}
        outcome = next((tag for tag in ("error", "failure", "skipped") if tag in found), "passed")
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return outcomes, done.stdout


def test_selinons_suite_passes_the_same_with_the_bridge_on(
    selinon_suite: tuple[Path, Path], tmp_path: Path
) -> None:
    root, deps = selinon_suite
    plain, plain_output = run_suite(root, deps, tmp_path / "plain.xml", bridged=False)
    bridged, bridged_output = run_suite(root, deps, tmp_path / "bridged.xml", bridged=True)
    assert "bridge_selinon() is on" in bridged_output, bridged_output
    assert "bridge_selinon()" not in plain_output
    passed = sum(outcome == "passed" for outcome in plain.values())
    assert passed >= LEAST_PASSED, (
        f"only {passed} of Selinon's tests passed without the bridge:\n{plain_output}"
    )
    changed = {test: (plain.get(test), bridged.get(test)) for test in plain.keys() | bridged.keys()}
    changed = {test: pair for test, pair in changed.items() if pair[0] != pair[1]}
    assert changed == {}, (
        f"outcomes that differ with the bridge on (without, with): {changed}\n{bridged_output}"
    )
