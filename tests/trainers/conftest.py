"""The trainers' own packages (verl, OpenRLHF, TRL) run their reward paths against proctor. They are installed in
CI's trainers venv (.ci/run); elsewhere these tests skip, unless PROCTOR_REQUIRE_TRAINERS=1 makes a missing
package a failure."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(name: str) -> ModuleType:
    if os.environ.get("PROCTOR_REQUIRE_TRAINERS") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name)
