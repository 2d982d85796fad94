"""Storages files shared by the worker tests (a helper module: test modules never import each other)."""

from __future__ import annotations

from pathlib import Path


def write_storages(tmp_path: Path, events: Path) -> Path:
    """``storages.yml`` with three recording storages logging to ``events``.

    Unsafe (not concurrency-safe) and Safe hold each call 50 ms; Slow holds it 1 s.
    """
    path = tmp_path / "storages.yml"
    path.write_text(
        f"""\
storages:
  - name: Unsafe
    classname: RecordingStorage
    import: tests.recording
    configuration: {{log_path: "{events}", label: Unsafe, call_seconds: 0.05}}
  - name: Safe
    classname: SafeRecordingStorage
    import: tests.recording
    configuration: {{log_path: "{events}", label: Safe, call_seconds: 0.05}}
  - name: Slow
    classname: SafeRecordingStorage
    import: tests.recording
    configuration: {{log_path: "{events}", label: Slow, call_seconds: 1.0}}
"""
    )
    return path
