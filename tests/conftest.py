"""Shared test configuration: hypothesis profiles.

``make test`` runs the short default profile; ``make fuzz`` sets HYPOTHESIS_PROFILE=fuzz.
Tests that fuzz leave ``max_examples`` to the profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=100, deadline=None, derandomize=True)
settings.register_profile("fuzz", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
