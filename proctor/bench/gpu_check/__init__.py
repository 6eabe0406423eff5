"""`proctor gpu-check`: every GPU path of proctor checked, and its bars measured, by one prepared command that runs
in <= 8 minutes on one H200, and rehearsed on the CPU in CI so that it cannot rot between GPU runs.

    python -m proctor.bench.gpu_check --out $OUT        # on the GPU machine (bench/README.md: "On a GPU machine")
    python -m proctor.bench.gpu_check --rehearse        # the same phases on the CPU: tiny shapes, interpreted kernels

Phases, in order, each in its own process under its own budget (run.py): env (the ceilings), kernels, models,
serve (correctness through gRPC), bars (rates beside anchors), packed (flex_attention rows), tp (2+ GPUs). The report
is bench/results/DATE-<gpu>-gpu-check.{json,md} (or under --out), rewritten after every phase.
"""
