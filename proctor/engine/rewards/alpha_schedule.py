"""The Atom-Searcher mixing schedule: alpha = 0.5 * (1 - T / T_MAX), decaying linearly from 0.5 to 0."""

from __future__ import annotations

from proctor.engine.errors import ItemError


def alpha(step: int, total_steps: int) -> float:
    if total_steps <= 0:
        raise ItemError(
            f"T_MAX must be > 0, got {total_steps} (set total_steps in the request or reward.total_steps)",
            "total_steps",
        )
    if not 0 <= step <= total_steps:
        raise ItemError(f"{step} is outside [0, T_MAX={total_steps}]; not clamped", "training_step")
    return 0.5 * (1.0 - step / total_steps)


def mix(alpha_: float, r_atom: float, r_f1: float) -> float:
    return alpha_ * r_atom + (1.0 - alpha_) * r_f1
