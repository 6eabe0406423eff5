#!/usr/bin/env bash
# The wheels the GPU machine lacks, into the checkout's git-ignored .whl/ (proctor/bench/README.md, "On a GPU machine").
# Run on a machine that reaches PyPI, in the checkout's venv; then copy the checkout with .whl/ to the GPU machine:
#     bash proctor/bench/gpu_wheels.sh
# What: proctor's run-time requirements that proctor/bench/gpu_image_packages.txt (the image) lacks, resolved for CPython
# 3.12 manylinux x86-64 with the image's grpcio and protobuf held fixed (grpcio-health-checking / -reflection must not
# be newer than the grpcio that runs them); pytest-asyncio for the vLLM tests there; liger-kernel and
# cut-cross-entropy, which the kernels check times beside ours (their own requirements, torch and triton, are on the
# image). Wheels of packages the image has are dropped; what is left is checked to be complete and <= 20 MiB.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-python3}
OUT=.whl
LIMIT_MIB=20
git check-ignore -q "$OUT/x.whl" || { echo "$OUT/ is not git-ignored here: add /$OUT/ to .gitignore" >&2; exit 1; }

image=proctor/bench/gpu_image_packages.txt
grpcio=$(sed -n 's/^grpcio==//p' "$image")
protobuf=$(sed -n 's/^protobuf==//p' "$image")
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${tag}_x86_64"); done
target=(--only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}")
mapfile -t want < <("$PY" -m proctor.bench.gpu_wheels wanted)
echo "proctor needs there, beyond the image: ${want[*]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q -d "$work" "${target[@]}" "${want[@]}" pytest-asyncio "grpcio==$grpcio" "protobuf==$protobuf"
"$PY" -m pip download -q -d "$work" "${target[@]}" --no-deps liger-kernel==0.8.5 cut-cross-entropy==25.1.1
"$PY" -m proctor.bench.gpu_wheels drop "$work"
rm -rf "$OUT"
mkdir -p "$OUT"
mv "$work"/*.whl "$OUT"/
"$PY" -m proctor.bench.gpu_wheels verify "$OUT"
size=$(du -sb "$OUT" | cut -f1)
ls -1 "$OUT" | sed 's/^/  /'
awk -v b="$size" -v l="$LIMIT_MIB" 'BEGIN { printf "%s: %.1f MiB (limit %d MiB)\n", ".whl", b / 1048576, l; exit !(b <= l * 1048576) }'

cat <<EOF

Ready. On the GPU machine, in a copy of this checkout with its .whl/ (proctor/bench/README.md, "On a GPU machine"):
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:\$PWD PYTHONUNBUFFERED=1
  python3 -m proctor.bench.gpu_check --out DIR
EOF
