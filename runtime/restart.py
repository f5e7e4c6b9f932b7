"""Docker's restart policies: whether an exited container comes back, and when."""

from __future__ import annotations

from dataclasses import dataclass

MIN_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0  # a container that ran this long starts again with the minimum delay


@dataclass
class Decision:
    restart: bool
    delay: float = 0.0


def decide(policy: dict, exit_code: int, restart_count: int, stopped_by_user: bool,
           ran_for: float, last_delay: float) -> Decision:
    """After an exit (not during daemon start-up): restart, and after how long?"""
    name = policy.get("Name") or "no"
    if stopped_by_user or name == "no":
        return Decision(False)
    if name == "on-failure":
        if exit_code == 0:
            return Decision(False)
        limit = int(policy.get("MaximumRetryCount") or 0)
        if limit and restart_count >= limit:
            return Decision(False)
    delay = MIN_DELAY if ran_for >= RESET_AFTER or not last_delay else min(last_delay * 2,
                                                                          MAX_DELAY)
    return Decision(True, delay)


def start_on_daemon_boot(policy: dict, stopped_by_user: bool, started_before: bool) -> bool:
    """`always` comes back even after a manual stop; `unless-stopped` does not."""
    name = policy.get("Name") or "no"
    if not started_before:
        return False
    if name == "always":
        return True
    return name == "unless-stopped" and not stopped_by_user
