"""Compatibility tests: real dockerd, podman and CNI runtimes driving cnet. Like the
integration tests they need root, `ip`, `nft` and `nsenter` (skipped with the reason
otherwise); each file checks its own runtime's tools."""

from __future__ import annotations

import harness
import pytest


@pytest.fixture(autouse=True)
def _harness_requirements():
    reason = harness.requirements_missing()
    if reason:
        pytest.skip(reason)
