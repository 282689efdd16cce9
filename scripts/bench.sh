#!/usr/bin/env bash
# The benchmarks: release build, then fleet-bench (see tests/src/bin/fleet-bench.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
dpkg -s busybox-static >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null; }
cargo build --release --locked --bins
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec ./target/release/fleet-bench "$@"
