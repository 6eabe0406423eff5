#!/usr/bin/env bash
# vLLM on a GPU machine: a run of its own, apart from gpu-check (proctor/bench/README.md, "On a GPU machine").
#
#     bash proctor/bench/gpu_vllm.sh check          # on the GPU machine, vLLM 0.26.0 installed
# `check` runs, each under its own time limit, 6 minutes in all: the vLLM backend's contract and server tests
# (PROCTOR_REQUIRE_VLLM=1), then bench.vllm_throughput on a Qwen2.5-1.5B-shaped model with dummy weights, 1,024
# prompts x 256 new tokens, proctor's gRPC against AsyncLLM called directly (target >= 97 %). Logs and the
# throughput report go to $OUT. It needs the wheels of proctor/bench/gpu_wheels.sh in .whl/.
#
# A GPU machine without network gets vLLM from a packing kit, run where pip reaches PyPI:
#     bash proctor/bench/gpu_vllm.sh prepare DIR    # 5-7 min: vLLM 0.26.0 and what the image lacks, in ~60 MiB parts
# DIR is the kit: a folder whose prepare.sh builds parts/partNN/, each with a device-step.sh; the last part's
# unpacks vLLM and writes /root/vl/env.sh, which `check` sources. DIR is copied into the git-ignored .gpu/vllm/
# and run there, so the parts travel with the checkout: on the GPU machine run each part's device-step.sh in
# order, then `check`.
set -uo pipefail
kit=${2:+$(readlink -f -- "$2")}  # prepare's DIR, as given from where the script was called
cd "$(dirname "$(readlink -f "$0")")/../.."  # the checkout's root

prepare() {
  set -e
  [ -n "$kit" ] && [ -f "$kit/prepare.sh" ] || { echo "usage: bash proctor/bench/gpu_vllm.sh prepare DIR   (DIR: the kit, with its prepare.sh)" >&2; exit 2; }
  git check-ignore -q .gpu/vllm/x || { echo ".gpu/ is not git-ignored here" >&2; exit 1; }
  [ -n "$(ls .whl/*.whl 2>/dev/null)" ] || echo "note: no .whl/ yet; run proctor/bench/gpu_wheels.sh too (check installs them)"
  mkdir -p .gpu/vllm
  cp -r "$kit"/. .gpu/vllm/
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
  out=${OUT:-proctor/bench/results}
  mkdir -p "$out"
  # The packing kit's environment where its parts were unpacked; else vLLM installed with pip.
  if [ -f /root/vl/env.sh ]; then
    # shellcheck disable=SC1091
    . /root/vl/env.sh
  fi
  python3 -c "import vllm" || { echo "vLLM does not import here: pip install vllm==0.26.0, or the kit's parts first" >&2; exit 3; }
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
  *) echo "usage: bash proctor/bench/gpu_vllm.sh prepare DIR | check   (see the top of this file)" >&2; exit 2 ;;
esac
