#!/usr/bin/env bash
# The benchmarks: release build, then fleet-bench (see tests/src/bin/fleet-bench.rs).
# Usage: scripts/bench.sh [audit|remap|backup|recreate|rootless|controller] [OPTIONS]; all of them without a name.
set -euo pipefail
cd "$(dirname "$0")/.."
# The controller's benchmark simulates its agents: it needs neither the engine's image nor zstd.
[ "${1:-}" = controller ] || for pkg in busybox-static zstd; do dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; }; done
cargo build --release --locked --bins
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec ./target/release/fleet-bench "$@"
