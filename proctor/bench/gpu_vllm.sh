#!/usr/bin/env bash
# vLLM on the GPU machine: a prepared run of its own, apart from gpu-check (proctor/bench/README.md, "On a GPU machine").
#
# HERE (a machine that reaches PyPI; in the checkout the device tool sends; after proctor/bench/gpu_wheels.sh):
#     bash proctor/bench/gpu_vllm.sh prepare     # 5-7 min: vLLM 0.26.0 and what the image lacks, in ~60 MiB parts
# It copies ../shared/gpu-vllm (prepare.sh, device-step.sh, smoke_vllm.py, requirements-carry.txt) into the
# git-ignored .gpu/vllm/ of this checkout (the device gets the checkout only) and builds .gpu/vllm/parts/partNN there.
#
# THERE, one call per part, each within 30 s of the last (a machine that idles longer loses the parts: exit 3):
#     carry [".gpu/vllm/parts/part01"]          bash .gpu/vllm/parts/part01/device-step.sh
#     carry [".gpu/vllm/parts/part02"]          bash .gpu/vllm/parts/part02/device-step.sh
#     carry [".gpu/vllm/parts/part03", ".whl"]  SMOKE=0 bash .gpu/vllm/parts/part03/device-step.sh && bash proctor/bench/gpu_vllm.sh check
# `check` runs, each under its own time limit, 6 minutes in all: the vLLM backend's contract and server tests
# (PROCTOR_REQUIRE_VLLM=1), then bench.vllm_throughput on a Qwen2.5-1.5B-shaped model with dummy weights, 1,024
# prompts x 256 new tokens, proctor's gRPC against AsyncLLM called directly (target >= 97 %). Logs and the
# throughput report go to $OUT.
set -uo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || dirname "$(dirname "$(readlink -f "$0")")")"

prepare() {
  set -e
  local src=${GPU_VLLM:-$(cd .. && pwd)/shared/gpu-vllm}
  [ -f "$src/prepare.sh" ] || { echo "no $src/prepare.sh (set GPU_VLLM to the gpu-vllm folder)" >&2; exit 1; }
  git check-ignore -q .gpu/vllm/x || { echo ".gpu/ is not git-ignored here" >&2; exit 1; }
  [ -n "$(ls .whl/*.whl 2>/dev/null)" ] || echo "note: no .whl/ yet; run proctor/bench/gpu_wheels.sh too (the last call carries it)"
  mkdir -p .gpu/vllm
  cp "$src"/prepare.sh "$src"/device-step.sh "$src"/smoke_vllm.py "$src"/requirements-carry.txt .gpu/vllm/
  bash .gpu/vllm/prepare.sh
}

# step NAME SECONDS COMMAND...: one part of the check under its own limit; its output to $OUT/NAME.log too.
failed=()
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== vllm $name (limit ${limit} s): $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== vllm $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (out of time)')"
  [ "$rc" = 0 ] || failed+=("$name")
}

check() {
  out=${OUT:-bench/results}
  mkdir -p "$out"
  # shellcheck disable=SC1091
  . /root/vl/env.sh || { echo "no /root/vl/env.sh: the parts' device-step.sh did not finish on this machine" >&2; exit 3; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 4
  # vLLM's site first: its pins of the packages both bring (fastapi, pydantic, ...) are the ones it was built with.
  export PYTHONPATH=$PYTHONPATH:/tmp/site:$PWD
  step vllm-tests 170 env PROCTOR_REQUIRE_VLLM=1 python3 -m pytest -q -p no:cacheprovider \
    tests/engine/backends/test_generator_contract.py tests/engine/server/test_vllm_server.py
  python3 -m proctor.bench.gpu_check.models --config-only /tmp/qwen-1.5b-shape || failed+=(model)
  step vllm-throughput 170 python3 -m proctor.bench.vllm_throughput --model /tmp/qwen-1.5b-shape \
    --load-format dummy --prompts 1024 --prompt-len 64 --max-tokens 256 --max-model-len 2048 \
    --gpu-memory-utilization 0.85
  cp proctor/bench/results/"$(date +%F)"-*-vllm-throughput.* "$out"/ 2>/dev/null
  echo "== vllm check: ${failed[*]:-all passed}"
  [ "${#failed[@]}" = 0 ]
}

case "${1:-}" in
  prepare) prepare ;;
  check) check ;;
  *) echo "usage: bash proctor/bench/gpu_vllm.sh prepare|check   (see the top of this file)" >&2; exit 2 ;;
esac
