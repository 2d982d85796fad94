"""Hypothesis settings for every property test: "ci" under CI=true (bounded, repeatable), else "dev" (quick).

``HYPOTHESIS_PROFILE`` (or pytest's ``--hypothesis-profile``) picks another registered profile, e.g. to hunt
longer locally. tests/conftest.py loads the profile once, before any test module builds its settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, settings

from tests.services import IN_CI

CI = "ci"
DEV = "dev"

settings.register_profile(
    CI,
    max_examples=1000,
    deadline=None,  # a shared 2-core machine: timings say nothing
    derandomize=True,  # the same examples on every run: a red build is reproducible, never flaky
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(DEV, max_examples=100, deadline=None)


@dataclass(frozen=True)
class ServerBudget:
    """Examples, and steps per example, of a stateful test whose every step calls a real server."""

    examples: int
    steps: int


#: Per profile; a profile not named here gets the "dev" budget.
SERVER_BUDGETS = {CI: ServerBudget(examples=50, steps=25), DEV: ServerBudget(examples=12, steps=20)}

_loaded: str | None = None


def load() -> str:
    """Load the profile for this run (once; later calls return its name) and return its name."""
    global _loaded
    if _loaded is None:
        _loaded = os.environ.get("HYPOTHESIS_PROFILE") or (CI if IN_CI else DEV)
        settings.load_profile(_loaded)
    return _loaded


def server_settings(share: float = 1.0) -> settings:
    """Settings for a stateful test on real servers: ``share`` of the loaded profile's budget.

    Under "ci" a failure is reported as found, not shrunk: shrinking replays hundreds of examples on the
    servers. Run the test locally ("dev" profile) for the minimal failing sequence.
    """
    load()
    profile = settings.get_current_profile_name()
    budget = SERVER_BUDGETS.get(profile, SERVER_BUDGETS[DEV])
    phases = settings().phases  # the loaded profile's
    if profile == CI:
        phases = tuple(phase for phase in phases if phase not in (Phase.shrink, Phase.explain))
    return settings(
        max_examples=max(3, round(budget.examples * share)),
        stateful_step_count=budget.steps,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
