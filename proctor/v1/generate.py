"""Regenerate the Python modules and typed stubs of the wire contract.

    python -m proctor.v1.generate            # rewrite the committed files
    python -m proctor.v1.generate --check    # exit 1 if they differ from a fresh generation

protoc names a generated module after its .proto path (`proctor/v1/x.proto` -> `proctor.v1.x_pb2`), and the
files live at exactly that path in the package, so protoc's own imports resolve as written.
The output depends on the grpcio-tools version, which the `dev` extra pins.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The folder that holds the `proctor` package: protoc's include root, so `proctor/v1/x.proto` is the import path.
PROTO_ROOT = PACKAGE_DIR.parents[1]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generated_files(directory: Path = PACKAGE_DIR) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def _plugin(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def generate(out_root: Path) -> list[Path]:
    """Run protoc into `out_root/proctor/v1/` and return the generated files."""
    from grpc_tools import protoc  # dev-only dependency

    out_root.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return generated_files(out_root / "proctor" / "v1")


def differences() -> list[str]:
    """Names of generated files that a fresh generation would change, add or remove."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(Path(tmp))}
    committed = {p.name: p.read_bytes() for p in generated_files()}
    return sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if args.check:
        changed = differences()
        if changed:
            raise SystemExit(f"generated files out of date: {', '.join(changed)}")
        print("generated files are up to date")
        return
    for path in generate(PROTO_ROOT):
        print(path.relative_to(PROTO_ROOT))


if __name__ == "__main__":
    main()
