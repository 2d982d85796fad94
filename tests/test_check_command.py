"""``celery-selinon-storage check FILE``: validates, connects to every storage, exit status for probes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from celery_selinon_storage.__main__ import main

pytestmark = pytest.mark.service

PASSWORD = "s3cr3t-Check-pw"


@pytest.fixture
def storages_file(tmp_path: Path, redis_url: str, mongo_uri: str) -> Path:
    path = tmp_path / "storages.yml"
    path.write_text(
        f"""\
storages:
  - name: Sqlite
    classname: SqlStorage
    configuration: {{connection_string: "sqlite:///{tmp_path}/r.sqlite3"}}
  - name: Redis
    classname: RedisStorage
    configuration: {{url: "{redis_url}"}}
  - name: Mongo
    classname: MongoStorage
    configuration: {{uri: "{mongo_uri}", db_name: css_tests, collection_name: check}}
"""
    )
    return path


def add_down_storage(path: Path) -> None:
    with path.open("a") as file:
        file.write(
            "  - name: Down\n    classname: SqlStorage\n"
            f"    configuration: {{connection_string: 'postgres://app:{PASSWORD}@127.0.0.1:1/app'}}\n"
        )


def aligned_rows(lines: list[str]) -> list[list[str]]:
    """The cells of a check table, after asserting that its columns are aligned under the heading."""
    rows = [re.split(r" {2,}", line.strip()) for line in lines]
    heading = lines[0]
    assert rows[0] == ["NAME", "TARGET", "TIME", "CONNECT"]
    for line, row in zip(lines, rows, strict=True):
        assert len(row) == 4, line
        assert line.index(row[1], len(row[0])) == heading.index("TARGET"), line
        assert (
            line.index(row[2], heading.index("TARGET") + len(row[1])) + len(row[2])
            == heading.index("TIME") + 4
        )
        assert line.rindex(row[3]) == heading.index("CONNECT"), line
    return rows[1:]


def test_all_answering_exits_zero_with_a_line_each(
    storages_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(storages_file)]) == 0
    rows = aligned_rows(capsys.readouterr().out.splitlines())
    assert [row[0] for row in rows] == ["Sqlite", "Redis", "Mongo"]
    assert all(row[2].endswith(" ms") for row in rows)
    # check creates no table: the worker does, at start
    missing = "table selinon_results does not exist (the worker creates it at start)"
    assert [row[3] for row in rows] == [f"ok; {missing}", "ok", "ok"]
    assert rows[1][1].startswith("RedisStorage('redis://127.0.0.1:6379/13'")


def test_without_connecting_the_table_has_the_same_columns(
    storages_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(storages_file)]) == 0
    connected = aligned_rows(capsys.readouterr().out.splitlines())
    assert main(["check", "--no-connect", str(storages_file)]) == 0
    not_tried = aligned_rows(capsys.readouterr().out.splitlines())
    assert [row[:2] for row in not_tried] == [row[:2] for row in connected]
    assert [row[2:] for row in not_tried] == [["-", "not tried"]] * 3


def test_a_down_storage_fails_the_check_without_leaking_its_password(
    storages_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_down_storage(storages_file)
    assert main(["check", str(storages_file), "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] is False
    down = report["storages"][-1]
    assert (down["name"], down["ok"]) == ("Down", False)
    # psycopg (the default) says OperationalError, pg8000 InterfaceError
    assert down["connect"] == "failed"
    assert down["error"].startswith(("OperationalError: ", "InterfaceError: "))
    assert "Connection refused" in down["error"]
    assert "app:***@127.0.0.1:1/app" in down["target"]
    assert PASSWORD not in out + err
    assert [s["ok"] for s in report["storages"][:-1]] == [True, True, True]


def test_a_slow_storage_shows_progress_and_a_silent_one_times_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "storages.yml"
    path.write_text(
        "storages:\n  - name: Slow\n    classname: RecordingStorage\n    import: tests.recording\n"
        f"    configuration: {{log_path: '{tmp_path / 'e.jsonl'}', label: Slow, connect_seconds: 3}}\n"
    )
    assert main(["check", str(path), "--timeout", "1.5"]) == 1
    out, err = capsys.readouterr()
    assert "waiting for Slow (1 s)..." in err
    assert out.splitlines()[1].endswith("  timed out: no answer within 1.5 s")
    assert main(["check", str(path), "--timeout", "10"]) == 0
    assert "waiting for Slow (2 s)..." in capsys.readouterr().err


def test_a_bad_file_exits_78_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "storages.yml"
    path.write_text("storages:\n  - name: Scratch\n    classname: InMemoryStorag\n")
    assert main(["check", str(path)]) == 78
    err = capsys.readouterr().err
    assert err.startswith(
        f"celery-selinon-storage: error: {path}:3: storage 'Scratch': class 'InMemoryStorag'"
    )
    assert err.count("\n") == 1


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "Usage: celery-selinon-storage [OPTIONS] COMMAND [ARGS]..." in capsys.readouterr().err


def test_the_installed_command_is_a_readiness_probe(storages_file: Path) -> None:
    command = Path(sys.executable).with_name("celery-selinon-storage")
    ready = subprocess.run(
        [command, "check", storages_file], capture_output=True, text=True, timeout=60, check=False
    )
    assert ready.returncode == 0, ready.stderr
    add_down_storage(storages_file)
    down = subprocess.run(
        [sys.executable, "-m", "celery_selinon_storage", "check", storages_file],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 1 and PASSWORD not in down.stdout + down.stderr
