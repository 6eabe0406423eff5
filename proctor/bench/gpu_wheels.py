"""Which wheels the GPU machine needs, and whether a folder of them is complete (used by bench/gpu_wheels.sh).

    python -m proctor.bench.gpu_wheels wanted             # proctor's run-time requirements the image lacks
    python -m proctor.bench.gpu_wheels drop DIR           # delete the wheels of packages the image has
    python -m proctor.bench.gpu_wheels verify DIR         # every requirement of every wheel met there

The image's packages are bench/gpu_image_packages.txt. Requirements are read from each wheel's METADATA and
evaluated for the machine (CPython 3.12, Linux x86-64, no extras); a requirement on a package the image has is
checked against the image's version where it is known.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
IMAGE = Path(__file__).resolve().parent / "gpu_image_packages.txt"
# The machine's interpreter, for requirement markers.
MACHINE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip


def image_packages(path: Path = IMAGE) -> dict[str, Version | None]:
    """Name -> version (None where no session read it)."""
    out: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = Version(version) if version else None
    return out


def wanted(pyproject: Path = ROOT / "pyproject.toml", image: Path = IMAGE) -> list[str]:
    """proctor's run-time requirements (as written in pyproject.toml) on packages the image does not have."""
    have = image_packages(image)
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in deps if canonicalize_name(Requirement(d).name) not in have]


def _wheels(folder: Path) -> dict[str, tuple[Version, Path]]:
    out: dict[str, tuple[Version, Path]] = {}
    for path in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        if name in out:
            raise SystemExit(f"{folder}: two wheels of {name} ({out[name][0]} and {version}); keep one")
        out[name] = (version, path)
    return out


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's requirements that apply on the machine."""
    with zipfile.ZipFile(wheel) as z:
        [meta] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(z.read(meta).decode())
    found = [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    return [r for r in found if r.marker is None or r.marker.evaluate(MACHINE)]


def problems(folder: Path, image: Path = IMAGE) -> list[str]:
    have = image_packages(image)
    wheels = _wheels(folder)
    out = []
    for name, (_, path) in wheels.items():
        for req in requirements(path):
            dep = canonicalize_name(req.name)
            if dep in wheels:
                version: Version | None = wheels[dep][0]
            elif dep in have:
                version = have[dep]
            else:
                out.append(f"{name} needs {req}: neither carried nor on the image")
                continue
            if version is not None and not req.specifier.contains(version, prereleases=True):
                out.append(f"{name} needs {req}, {'carried' if dep in wheels else 'the image has'} {dep} {version}")
    return out


def unmet_here(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """proctor's run-time requirements, and theirs in turn, that this interpreter does not meet (a `pip check`
    of proctor's closure only: the image's unrelated packages are not ours to judge)."""
    import importlib.metadata as md

    from packaging.markers import default_environment

    env = {key: str(value) for key, value in default_environment().items()} | {"extra": ""}
    todo = [Requirement(d) for d in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    seen: set[str] = set()
    out = []
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        try:
            version = Version(md.version(name))
        except md.PackageNotFoundError:
            out.append(f"{req}: absent")
            continue
        if not req.specifier.contains(version, prereleases=True):
            out.append(f"{req}: {version} here")
        if name not in seen:
            seen.add(name)
            todo.extend(Requirement(r) for r in md.requires(name) or [])
    return sorted(set(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["wanted", "drop", "verify"])
    p.add_argument("folder", nargs="?", type=Path)
    args = p.parse_args(argv)
    if args.action == "wanted":
        print("\n".join(wanted()))
        return
    if args.folder is None:
        p.error(f"{args.action} needs the wheels' folder")
    if args.action == "drop":
        have = image_packages()
        for name, (version, path) in _wheels(args.folder).items():
            if name in have:
                path.unlink()
                print(f"  not carried (the image has it): {name} {version}")
        return
    found = problems(args.folder)
    for line in found:
        print("  " + line, file=sys.stderr)
    if found:
        raise SystemExit(f"{args.folder}: {len(found)} unmet requirement(s)")
    print(f"  every requirement of the {len(_wheels(args.folder))} wheels is carried or on the image")


if __name__ == "__main__":
    main()
