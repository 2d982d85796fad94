"""The one place a process's storage state lives.

- the storages of this process (``ProcessStorages``), bound to the pid that started them;
- under prefork, the plan the parent made before forking (the checked specs and the directory where
  children leave their reports), inherited by every child;
- why this process's storages failed to start, when they did.

Everything else reads this module; ``is_this_process`` is the one "same process?" check.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .guards import GuardKind
    from .inspection import ChildReports
    from .lifecycle import ProcessStorages
    from .specs import StorageSpec


@dataclass(frozen=True)
class ChildPlan:
    """Prefork: what the parent checked, for each child to build after the fork."""

    specs: Sequence[StorageSpec]
    guard_kind: GuardKind
    reports: ChildReports


_storages: ProcessStorages | None = None
_failure: tuple[int, str] | None = None
_plan: ChildPlan | None = None


#: This process's id, kept up to date across forks (read it as ``state.this_pid``): every storage call
#: asks, and ``os.getpid`` is a system call.
this_pid = os.getpid()


def _after_fork_in_child() -> None:
    global this_pid
    this_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def is_this_process(pid: int) -> bool:
    """Whether ``pid`` is the calling process (objects made before a fork belong to the parent)."""
    return pid == this_pid


def current() -> ProcessStorages | None:
    """This process's storages, or None when none were started here."""
    if _storages is None or not is_this_process(_storages.pid):
        return None
    return _storages


def set_current(storages: ProcessStorages) -> None:
    """Make ``storages`` this process's (``get_storage`` hands them out)."""
    global _storages, _failure
    _storages, _failure = storages, None


def take_current() -> ProcessStorages | None:
    """Forget this process's storages and return them (None when there were none here)."""
    global _storages
    storages, _storages = current(), None
    return storages


def record_failure(reason: str) -> None:
    """Remember why this process's storages could not start (``get_storage`` says so)."""
    global _failure
    _failure = (os.getpid(), reason)


def failure() -> str | None:
    """Why this process's storages failed to start, or None."""
    if _failure is None or not is_this_process(_failure[0]):
        return None
    return _failure[1]


def set_plan(plan: ChildPlan | None) -> None:
    """Prefork parent: the plan its children build from (None at shutdown)."""
    global _plan
    _plan = plan


def plan() -> ChildPlan | None:
    """The prefork plan (in the parent and every child), or None outside prefork."""
    return _plan
