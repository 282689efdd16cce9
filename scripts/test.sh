#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine,
# then runs the whole suite against this machine's real container engine.
# Everything the tests create carries the label fleet-test and is removed at
# the end, even when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

need_apt=()
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
# The test images are FROM scratch with a static busybox inside.
dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
# Podman, rootful and rootless (newuidmap from uidmap, runc: crun fails here),
# is tested too; a rootless move copies a volume across mounts with rsync.
for pkg in podman uidmap slirp4netns runc rsync; do dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg"); done
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
  echo "no Docker engine answers at /var/run/docker.sock: install and start it (apt-get install docker.io; systemctl start docker)" >&2
  exit 1
fi

cleanup() {
  ids=$(docker ps -aq --filter label=fleet-test 2>/dev/null || true)
  [ -n "$ids" ] && docker rm -f -v $ids >/dev/null 2>&1 || true
  vols=$(docker volume ls -q --filter label=fleet-test 2>/dev/null || true)
  [ -n "$vols" ] && docker volume rm -f $vols >/dev/null 2>&1 || true
  nets=$(docker network ls -q --filter label=fleet-test 2>/dev/null || true)
  [ -n "$nets" ] && docker network rm $nets >/dev/null 2>&1 || true
  imgs=$(docker images -q --filter label=fleet-test 2>/dev/null | sort -u || true)
  [ -n "$imgs" ] && docker rmi -f $imgs >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

say "building the binaries (the crash tests run them as separate processes)"
cargo build --workspace --bins --locked
say "running the test suite (cargo test --workspace)"
cargo test --workspace --locked "$@"
