#!/usr/bin/env bash
# Try fleet on this machine: builds the binaries, makes a fleet CA and
# certificates, starts a controller and one agent on 127.0.0.1 against the
# local engine, and prints a real audit. Everything lives under .fleet-local/.
#
#   ./scripts/try.sh up      # build, start, audit
#   ./scripts/try.sh audit     # audit again (any fleetctl arguments after it)
#   ./scripts/try.sh examples  # start a few example containers worth auditing
#   ./scripts/try.sh down      # stop both, remove the examples (--purge: and .fleet-local/)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DIR="$ROOT/.fleet-local"
BIN="$ROOT/target/debug"
AGENT_PORT="${FLEET_TRY_AGENT_PORT:-17443}"
CONTROLLER_PORT="${FLEET_TRY_CONTROLLER_PORT:-17400}"

say() { printf '==> %s\n' "$*" >&2; }

fleetctl() {
  "$BIN/fleetctl" --controller "127.0.0.1:$CONTROLLER_PORT" --ca "$DIR/pki/ca.pem" \
    --cert "$DIR/pki/admin.pem" --key "$DIR/pki/admin.key" "$@"
}

stop() {
  for name in agent controller; do
    pidfile="$DIR/$name.pid"
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        say "stopped $name (pid $pid)"
      fi
      rm -f "$pidfile"
    fi
  done
}

up() {
  command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
  say "building fleet-agent, fleet-controller and fleetctl"
  cargo build --locked --bins -q
  stop
  mkdir -p "$DIR/pki" "$DIR/state/agent" "$DIR/state/controller" "$DIR/logs"
  if [ ! -f "$DIR/pki/ca.pem" ]; then
    say "creating a fleet CA and certificates in $DIR/pki"
    "$BIN/fleetctl" certs init --dir "$DIR/pki" >/dev/null
    "$BIN/fleetctl" certs issue --dir "$DIR/pki" --role controller --name controller --san 127.0.0.1 >/dev/null
    "$BIN/fleetctl" certs issue --dir "$DIR/pki" --role agent --name local-agent --san 127.0.0.1 >/dev/null
    "$BIN/fleetctl" certs issue --dir "$DIR/pki" --role operator --name admin >/dev/null
    "$BIN/fleetctl" certs issue --dir "$DIR/pki" --role viewer --name auditor >/dev/null
  fi
  cat > "$DIR/controller.toml" <<TOML
listen = "127.0.0.1:$CONTROLLER_PORT"
ca = "$DIR/pki/ca.pem"
cert = "$DIR/pki/controller.pem"
key = "$DIR/pki/controller.key"
state_dir = "$DIR/state/controller"

[[hosts]]
name = "$(hostname)"
address = "127.0.0.1:$AGENT_PORT"
labels = { env = "local" }
TOML
  cat > "$DIR/agent.toml" <<TOML
listen = "127.0.0.1:$AGENT_PORT"
ca = "$DIR/pki/ca.pem"
cert = "$DIR/pki/local-agent.pem"
key = "$DIR/pki/local-agent.key"
state_dir = "$DIR/state/agent"
TOML
  say "starting the agent on 127.0.0.1:$AGENT_PORT (log: $DIR/logs/agent.log)"
  nohup "$BIN/fleet-agent" serve --config "$DIR/agent.toml" >"$DIR/logs/agent.log" 2>&1 &
  echo $! >"$DIR/agent.pid"
  say "starting the controller on 127.0.0.1:$CONTROLLER_PORT (log: $DIR/logs/controller.log)"
  nohup "$BIN/fleet-controller" --config "$DIR/controller.toml" >"$DIR/logs/controller.log" 2>&1 &
  echo $! >"$DIR/controller.pid"
  for _ in $(seq 100); do
    fleetctl whoami >/dev/null 2>&1 && break
    for name in agent controller; do
      kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null || { echo "the $name did not start:" >&2; tail -5 "$DIR/logs/$name.log" >&2; exit 1; }
    done
    sleep 0.1
  done
  cat > "$DIR/env" <<ENV
export FLEETCTL_CONTROLLER=127.0.0.1:$CONTROLLER_PORT
export FLEETCTL_CA=$DIR/pki/ca.pem
export FLEETCTL_CERT=$DIR/pki/admin.pem
export FLEETCTL_KEY=$DIR/pki/admin.key
export PATH=$BIN:\$PATH
ENV
  say "fleet is up; the audit of this machine:"
  echo
  fleetctl audit || true
  echo
  if [ -z "$(docker ps -aq 2>/dev/null | head -1)" ]; then
    say "this engine has no containers yet: './scripts/try.sh examples' starts a few worth auditing"
  fi
  say "more: 'source $DIR/env' then 'fleetctl audit -o wide', 'fleetctl hosts list'; stop with './scripts/try.sh down'"
}

# Example containers (label fleet-demo) from a FROM-scratch busybox image:
# no registry needed, only Debian's busybox-static.
examples() {
  if ! dpkg -s busybox-static >/dev/null 2>&1; then
    say "installing busybox-static (the example image is FROM scratch with it)"
    apt-get install -y -qq busybox-static >/dev/null
  fi
  ctx="$DIR/example-image"
  mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/etc"
  cp /bin/busybox "$ctx/rootfs/bin/busybox"
  for a in sh sleep su id; do ln -sf busybox "$ctx/rootfs/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n' >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' >"$ctx/rootfs/etc/group"
  printf 'FROM scratch\nCOPY rootfs/ /\nLABEL fleet-demo=1\nCMD ["/bin/sleep","infinity"]\n' >"$ctx/Dockerfile"
  docker build -q -t fleet-demo/busybox "$ctx" >/dev/null 2>"$DIR/logs/example-build.log" \
    || { cat "$DIR/logs/example-build.log" >&2; exit 1; }
  run() { docker rm -f "$1" >/dev/null 2>&1 || true; docker run -d --label fleet-demo=1 --name "$@" >/dev/null; }
  run demo-root fleet-demo/busybox
  run demo-zero-zero -u 0:0 -v /var/run/docker.sock:/var/run/docker.sock fleet-demo/busybox
  run demo-nobody -u nobody --read-only --security-opt no-new-privileges --pids-limit 64 fleet-demo/busybox
  run demo-drops fleet-demo/busybox su -s /bin/sh app -c 'exec sleep infinity'
  run demo-privileged-ish --cap-add NET_ADMIN --network host fleet-demo/busybox
  say "started 5 example containers (label fleet-demo); './scripts/try.sh audit' shows them"
}

remove_examples() {
  ids=$(docker ps -aq --filter label=fleet-demo 2>/dev/null || true)
  [ -n "$ids" ] && docker rm -f $ids >/dev/null && say "removed the example containers"
  docker rmi fleet-demo/busybox >/dev/null 2>&1 || true
  return 0
}

case "${1:-up}" in
  up) up ;;
  audit) shift; fleetctl audit "$@" ;;
  # Any fleetctl command against the local fleet: ./scripts/try.sh ctl plan
  ctl) shift; fleetctl "$@" ;;
  examples) examples ;;
  down)
    stop
    remove_examples
    if [ "${2:-}" = "--purge" ]; then rm -rf "$DIR"; say "removed $DIR"; fi
    ;;
  *) echo "usage: $0 up | audit [fleetctl audit args] | examples | ctl FLEETCTL-ARGS... | down [--purge]" >&2; exit 2 ;;
esac
