"""The operator's reference tables, generated from the code so that they cannot drift from it.

python -m proctor.engine.jobs.reference --write    # refresh the generated parts of deploy/OPERATIONS.md
python -m proctor.engine.jobs.reference --check    # exit 1 if they are stale (a test runs this)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
from pathlib import Path
from typing import Any

from proctor.engine import config as config_module
from proctor.engine.cores.metrics import Metrics

DOC = Path(__file__).resolve().parents[3] / "deploy" / "OPERATIONS.md"
_SECTIONS = {
    "server": config_module.ServerConfig,
    "http": config_module.HttpConfig,
    "teacher": config_module.TeacherConfig,
    "critic": config_module.CriticConfig,
    "reward": config_module.RewardConfig,
}


def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string right below it), from the class and the dataclasses it extends."""
    found = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        [node] = ast.parse(textwrap.dedent(inspect.getsource(klass))).body
        assert isinstance(node, ast.ClassDef)
        for field, doc in itertools.pairwise(node.body):
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(doc, ast.Expr)
                and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)
            ):
                found[field.target.id] = " ".join(inspect.cleandoc(doc.value.value).split())
    return found


def _default(value: Any) -> str:
    if isinstance(value, str) and "\n" in value:
        return "(multi-line; see the source)"
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`" if value else '`""`'


def _rows(cls: type, prefix: str) -> list[str]:
    rows = []
    docs = field_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += _rows(type(value), f"{prefix}{f.name}.")
            continue
        note = docs.get(f.name, "").replace("|", r"\|")  # a table cell
        rows.append(f"| `{prefix}{f.name}` | {_default(value)} | {note} |")
    return rows


def config_reference() -> str:
    lines = []
    for section, cls in _SECTIONS.items():
        doc = inspect.cleandoc(cls.__doc__ or "")
        if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses write when there is no docstring
            doc = ""
        lines += [f"### `{section}`", "", doc, "", "| key | default | notes |", "|---|---|---|"]
        lines += _rows(cls, f"{section}.")
        lines.append("")
    return "\n".join(lines).replace("\n\n\n", "\n\n")


def metrics_reference() -> str:
    lines = ["| metric | type | help |", "|---|---|---|"]
    for family in Metrics().registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        lines.append(f"| `{family.name}{suffix}` | {family.type} | {family.documentation} |")
    return "\n".join(lines) + "\n"


def render(doc: str) -> str:
    for name, text in (("config", config_reference()), ("metrics", metrics_reference())):
        start, end = f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"
        before, rest = doc.split(start, 1)
        _, after = rest.split(end, 1)
        doc = f"{before}{start}\n{text}{end}{after}"
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    current = DOC.read_text()
    fresh = render(current)
    if args.write:
        DOC.write_text(fresh)
    elif args.check and fresh != current:
        raise SystemExit(f"{DOC} is stale: python -m proctor.engine.jobs.reference --write")
    else:
        print(fresh)


if __name__ == "__main__":
    main()
