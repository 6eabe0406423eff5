"""The wheels the GPU machine is sent: what proctor needs beyond its image, and the completeness check."""

from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from proctor.bench import gpu_wheels


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    """A real wheel file (zip, dist-info METADATA), as pip writes them."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")


def test_wanted_is_every_runtime_requirement_the_image_lacks() -> None:
    image = gpu_wheels.image_packages()
    assert image[canonicalize_name("torch")] is not None and canonicalize_name("grpcio") in image
    wanted = {canonicalize_name(Requirement(r).name) for r in gpu_wheels.wanted()}
    deps = tomllib.loads((gpu_wheels.ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = canonicalize_name(Requirement(dep).name)
        assert (name in image) != (name in wanted), name
    assert {"grpcio-health-checking", "grpcio-reflection"} <= wanted and "torch" not in wanted


def test_problems_names_what_is_neither_carried_nor_on_the_image(tmp_path: Path) -> None:
    _wheel(tmp_path, "alpha", "1.0", ["beta==1.0", "torch>=2.4", "gamma", 'delta; sys_platform == "win32"'])
    _wheel(tmp_path, "beta", "2.0", ["torch>=99", "numpy; extra == 'fast'"])
    found = gpu_wheels.problems(tmp_path)
    assert found == [
        "alpha needs beta==1.0, carried beta 2.0",
        "alpha needs gamma: neither carried nor on the image",
        "beta needs torch>=99, the image has torch 2.11.0",
    ]
    (tmp_path / "beta-2.0-py3-none-any.whl").unlink()
    _wheel(tmp_path, "beta", "1.0", [])
    _wheel(tmp_path, "gamma", "0.1", [])
    assert gpu_wheels.problems(tmp_path) == []


def test_this_environment_meets_proctors_requirements() -> None:
    assert gpu_wheels.unmet_here() == []
