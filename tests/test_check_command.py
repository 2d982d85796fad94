"""``celery-selinon-storage check FILE`` validates a storages file without a worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_selinon_storage.__main__ import main


def test_a_good_file_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "storages.yml"
    path.write_text("storages:\n  - name: Scratch\n    classname: InMemoryStorage\n")
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out == "Scratch: InMemoryStorage ok\n"


def test_a_bad_file_exits_78_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "storages.yml"
    path.write_text("storages:\n  - name: Scratch\n    classname: InMemoryStorag\n")
    assert main(["check", str(path)]) == 78
    err = capsys.readouterr().err
    assert err.startswith(
        f"celery-selinon-storage: error: {path}:3: storage 'Scratch': class 'InMemoryStorag'"
    )
    assert err.count("\n") == 1


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: celery-selinon-storage check STORAGES.yml" in capsys.readouterr().err
