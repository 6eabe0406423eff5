"""What the GPU's own compile of proctor's Triton kernels gave, read from Triton's JIT caches after the check has
run them: registers and spills as the driver loaded each variant, shared memory, warps, stages, wgmma use, and the
constexprs that name the variant. bench/hopper.py predicts all of it on the CPU; the GPU check reports it beside
its timings and fails on a spill, so one GPU run confirms (or refutes) the compile report too."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

# (module, function): every Triton kernel the scoring dispatchers launch
KERNELS = (
    ("proctor.kernels.lm_head_logprobs", "_lm_head_kernel"),
    ("proctor.kernels.target_logprobs", "_target_logprobs_kernel"),
)


@dataclass
class Compiled:
    kernel: str
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    shared: int
    wgmma: int  # wgmma.mma_async instructions in the PTX
    registers: int | None  # known once the driver has loaded the binary (a launch), else None
    spills: int | None  # bytes of local memory a thread uses (the driver's LOCAL_SIZE_BYTES), None likewise

    @property
    def problem(self) -> str:
        return f"spills {self.spills} B" if self.spills else ""


def describe(kernel: str, compiled: Any) -> Compiled:
    """One of Triton's CompiledKernel objects, compiled from the JIT function (its src an ASTSource)."""
    src, meta = compiled.src, compiled.metadata
    names = src.fn.arg_names
    consts = {names[key[0]]: value for key, value in sorted(src.constants.items()) if len(key) == 1}
    return Compiled(
        kernel,
        {k: v for k, v in consts.items() if k.isupper()},  # the kernels' tile constexprs are the upper-case ones
        meta.num_warps,
        meta.num_stages,
        meta.shared,
        compiled.asm["ptx"].count("wgmma.mma_async") if "ptx" in compiled.asm else -1,
        getattr(compiled, "n_regs", None),
        None if getattr(compiled, "n_spills", None) is None else 4 * compiled.n_spills,  # triton 3.6 gives 4-byte words
    )


def compiled_kernels() -> list[Compiled]:
    """Every variant this process has compiled for a GPU (none under the interpreter)."""
    out = []
    for module, name in KERNELS:
        fn = getattr(importlib.import_module(module), name)
        for caches in getattr(fn, "device_caches", {}).values():
            out += [describe(name, compiled) for compiled in caches[0].values()]
    return out


def markdown(compiled: list[Compiled]) -> list[str]:
    lines = [
        "Compiled on this GPU (Triton's JIT caches; registers and spills as the driver loaded each variant):",
        "",
        "| kernel | constexprs | warps | stages | regs | spills B | shared KB | wgmma | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in compiled:
        consts = ", ".join(f"{k}={v}" for k, v in c.constexprs.items())
        lines.append(
            f"| {c.kernel} | {consts} | {c.num_warps} | {c.num_stages} | {c.registers} | {c.spills} | "
            f"{c.shared / 1024:.1f} | {c.wgmma} | {c.problem or 'ok'} |"
        )
    return lines
