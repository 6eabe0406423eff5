"""The repository holds one importable package, `proctor`, and nothing at its root shadows another distribution.

On 2026-12-07 transformers 5.25 began importing Hugging Face's `kernels` package; proctor then kept its kernels in a
top-level `kernels/` folder, which any Python started in the checkout found first, and the test run stopped at
collection. These tests run from the repository root, as a user's Python does.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `tests` is pytest's package of this suite; nothing else at the root may be importable.
ALLOWED = {"proctor", "tests"}
# The generic names the package's rooms had as top-level folders until 2026-12-07.
FORMER_TOP_LEVEL = ["engine", "kernels", "proto", "clients", "bench"]


def _importable_names(root: Path) -> set[str]:
    """Names `import x` finds at `root`: modules, packages, and folders holding Python (namespace packages)."""
    names = set()
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".py":
            names.add(entry.stem)
        elif entry.is_dir() and any(entry.rglob("*.py")):
            names.add(entry.name)
    return names


def test_only_proctor_is_importable_from_the_root() -> None:
    assert _importable_names(ROOT) <= ALLOWED


def test_no_top_level_name_shadows_an_installed_distribution() -> None:
    installed = importlib.metadata.packages_distributions()
    shadowed = {name: installed[name] for name in _importable_names(ROOT) if set(installed.get(name, [])) - {"proctor"}}
    assert shadowed == {}, f"these names at the repository root hide installed distributions' modules: {shadowed}"


def test_no_symlinks_in_the_tree() -> None:
    links = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        links += [os.path.join(folder, n) for n in dirs + files if os.path.islink(os.path.join(folder, n))]
    assert links == []


def test_the_former_top_level_names_are_not_ours_from_the_root() -> None:
    """`python -c` puts the working directory first on sys.path: what it finds for these names is never the
    checkout (it is the installed distribution, e.g. Hugging Face's `kernels`, or nothing)."""
    probe = (
        "import importlib.util, json, sys\n"
        f"names = {FORMER_TOP_LEVEL!r}\n"
        "specs = {n: importlib.util.find_spec(n) for n in names}\n"
        "print(json.dumps({n: (s.origin or str(list(s.submodule_search_locations or []))) if s else None"
        " for n, s in specs.items()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    found = json.loads(out)
    ours = {name: where for name, where in found.items() if where is not None and str(ROOT / name) in where}
    assert ours == {}


def test_transformers_imports_from_the_root() -> None:
    """The failure of 2026-12-07 itself: transformers, started in the checkout, imports its own dependencies."""
    code = "from transformers import LlamaConfig; LlamaConfig(); import proctor.kernels, proctor.engine.cli"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_engine_opens_no_grpc_channel_of_its_own() -> None:
    """The engine's own callers (distill --server, the remote critic, the demo) reach a server through the client
    library, which carries TLS, tokens and the per-item error handling; a bare channel would bypass all three."""
    import ast

    openers = {"insecure_channel", "secure_channel"}
    found = []
    for path in sorted((ROOT / "proctor" / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in openers:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
