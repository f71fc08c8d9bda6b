#!/usr/bin/env bash
# shoal vs Docker Engine (Debian docker.io) in swarm mode, side by side. Run as root:  sudo bench/swarm.sh
# Env: RUNS (default 3) REPLICAS (30) NCREATE (200) POLL (0.02 s: how often "all running?" is asked) SKIP_DOCKER=1 SKIP_BUILD=1
#      SKIP_CARGO_BENCH=1 KEEP_LOGS=DIR OUT_DIR=DIR (default bench/results)  SHOAL_LOG (RUST_LOG for the shoal daemon)
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/common.sh"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RUNS=${RUNS:-3}
REPLICAS=${REPLICAS:-30}
NCREATE=${NCREATE:-200}
POLL=${POLL:-0.02}
# agent `task state` lines (per-task pipeline) and API request lines are debug-level.
SHOAL_LOG=${SHOAL_LOG:-info,shoal_agent=debug,shoal_api=debug,hyper=warn,libcontainer=warn,libcgroups=warn}
CLI=/usr/local/bin/docker   # docker 28.2 CLI, used for BOTH engines
HELPER="python3 $HERE/helper.py"
export PYTHONDONTWRITEBYTECODE=1
SH="python3 $HERE/swarm_helper.py"
ADDR=10.77.0.1

[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
[ -x "$CLI" ] || { echo "$CLI (docker 28.x CLI) missing" >&2; exit 1; }
for b in ip nsenter python3; do command -v $b >/dev/null || { echo "missing $b" >&2; exit 1; }; done
if [ -z "${SKIP_DOCKER:-}" ]; then
  for b in dockerd containerd runc; do
    command -v $b >/dev/null || { echo "missing $b: run bench/run.sh once (it installs docker.io) or set SKIP_DOCKER=1" >&2; exit 1; }
  done
fi


# ---------------------------------------------------------------- build
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SHOAL=$TARGET/release/shoal
if [ -z "${SKIP_BUILD:-}" ]; then
  log "cargo build --release -p shoal"
  (cd "$ROOT" && cargo build --release -p shoal >&2)
fi
[ -x "$SHOAL" ] || { echo "missing $SHOAL" >&2; exit 1; }
IMGDIR=$TARGET/test-images/v1/images
if [ ! -f "$IMGDIR/busybox/docker-archive.tar" ]; then
  log "building test images"
  (cd "$ROOT" && cargo test -p shoal-testkit --test testkit images_and_archives >&2)
fi

# ---------------------------------------------------------------- workspace + cleanup
setup_workspace sw
# Both exec-roots on a tmpfs, as each engine has by default (/run/docker, /run/shoal); the
# data-roots share the disk.
mkdir -p "$W/run" && mount -t tmpfs -o mode=755,size=2g tmpfs "$W/run"
pre_run_docker=$([ -e /run/docker ] && echo 1 || true)

swarm_teardown() { # engine: services, swarm, containers (daemon still running)
  local e=$1 s ids
  s=$(timeout 30 $CLI -H unix://$W/$e.sock service ls -q 2>/dev/null) || true
  [ -n "$s" ] && timeout 60 $CLI -H unix://$W/$e.sock service rm $s >/dev/null 2>&1
  timeout 60 $CLI -H unix://$W/$e.sock swarm leave --force >/dev/null 2>&1
  ids=$(timeout 30 $CLI -H unix://$W/$e.sock ps -aq 2>/dev/null) || true
  [ -n "$ids" ] && timeout 60 $CLI -H unix://$W/$e.sock rm -f $ids >/dev/null 2>&1
  return 0
}
cleanup() {
  set +e
  trap - EXIT INT TERM
  log "cleanup"
  for e in shoal:$SHOAL_PID docker:$DOCKERD_PID; do
    local name=${e%%:*} pid=${e#*:}
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && swarm_teardown "$name"
  done
  kill_wait "$SHOAL_PID" 20
  kill_wait "$DOCKERD_PID" 30
  cleanup_leftovers
  # dockerd creates /run/docker (plugins dir) even with --exec-root; remove it only if we made it and it is empty
  [ -z "$pre_run_docker" ] && [ -d /run/docker ] && find /run/docker -depth -type d -empty -delete 2>/dev/null
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS"; cp -r "$W"/*.log "$W/res" "$KEEP_LOGS"/ 2>/dev/null; fi
  [ -z "$(awk -v w="$W" 'index($5, w) == 1' /proc/self/mountinfo)" ] && rm -rf --one-file-system "$W"
  [ -d "$W" ] && echo "WARNING: $W left behind (mounts?)" >&2
  for cg in "$SHOAL_CG" "$DOCKER_CG"; do [ -n "$(cg_dirs "$cg")" ] && echo "WARNING: cgroup $cg left" >&2; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_START=$(loadavg)

# ---------------------------------------------------------------- scheduler micro-benchmark
# Before the daemons start, so its compile does not overlap the measurements.
if [ -z "${SKIP_CARGO_BENCH:-}" ]; then
  log "cargo bench -p shoal-manager (scheduler: 10,000 tasks on 1,000 nodes)"
  if (cd "$ROOT" && timeout 1800 cargo bench -p shoal-manager) >"$W/res/cargo-bench.txt" 2>&1; then
    grep '^scheduler:' "$W/res/cargo-bench.txt" >&2 || true
  else
    echo "cargo bench failed: $(tail -5 "$W/res/cargo-bench.txt")" >&2
  fi
  $SH cargo-bench "$W/res/cargo-bench.txt" "$W/res/cargo-bench.json"
fi

# ---------------------------------------------------------------- namespaces
# daemon netns <-veth-> client netns: daemon 10.77.0.1/24 (the swarm advertise address), client 10.77.0.2/24
for pair in "$NS_S $NS_SC" "$NS_D $NS_DC"; do
  set -- $pair
  ip netns add "$1"; ip netns add "$2"
  ip -n "$1" link set lo up; ip -n "$2" link set lo up
  ip -n "$1" link add bveth0 type veth peer name bveth1 netns "$2"
  ip -n "$1" addr add $ADDR/24 dev bveth0; ip -n "$1" link set bveth0 up
  ip -n "$2" addr add 10.77.0.2/24 dev bveth1; ip -n "$2" link set bveth1 up
  ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1
done

start_shoal() {
  RUST_LOG=$SHOAL_LOG nsenter --net=/run/netns/$NS_S "$SHOAL" daemon -H "unix://$W/shoal.sock" \
    --data-root "$W/shoal-data" --exec-root "$W/run/sx" >"$W/shoal.log" 2>&1 &
  SHOAL_PID=$!
  wait_sock shoal "$SHOAL_PID" || { tail -20 "$W/shoal.log" >&2; return 1; }
}
start_docker() {
  nsenter --net=/run/netns/$NS_D dockerd -H "unix://$W/docker.sock" \
    --data-root "$W/docker-data" --exec-root "$W/run/dx" --pidfile "$W/docker.pid" \
    --iptables=true --cgroup-parent "/$DOCKER_CG" --log-level warn >"$W/docker.log" 2>&1 &
  DOCKERD_PID=$!
  wait_sock docker "$DOCKERD_PID" || { tail -30 "$W/docker.log" >&2; return 1; }
}

bench_engine() {
  local E=$1 k
  log "[$E] start daemon"
  if ! start_$E; then engine_fail "daemon did not start (see log above)"; return 0; fi
  dk "$E" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null \
    | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' >"$W/res/$E-info.json"
  log "[$E] load busybox"
  dk "$E" load -i "$IMGDIR/busybox/docker-archive.tar" >&2 || { engine_fail "load busybox failed"; return 0; }

  log "[$E] swarm init --advertise-addr $ADDR"
  if ! timeout 120 $CLI -H "unix://$W/$E.sock" swarm init --advertise-addr $ADDR >"$W/res/$E-init.txt" 2>&1; then
    engine_fail "swarm init failed: $(tail -3 "$W/res/$E-init.txt")"; return 0
  fi
  timeout 90 $SH wait-ready "$W/$E.sock" || { engine_fail "node not ready after swarm init"; return 0; }
  sleep 2

  log "[$E] 1. service create -d --replicas $REPLICAS busybox sleep 3600 → all running (x$RUNS)"
  for ((k = 1; k <= RUNS; k++)); do
    timeout 900 $SH scale "$W/$E.sock" "$CLI" "$REPLICAS" b "$W/res/$E-scale-$k.json" "$POLL" \
      || { engine_fail "scale run $k failed"; break; }
    sleep 1
  done

  log "[$E] 2. POST /services/create latency ($NCREATE sequential, replicas 0)"
  timeout 900 $SH create-latency "$W/$E.sock" "$NCREATE" "$W/res/$E-latency.json" || engine_fail "create-latency failed"

  if [ "$E" = shoal ]; then
    $SH pipeline "$W/shoal.log" "$W"/res/shoal-scale-*.json >"$W/res/shoal-pipeline.json" 2>/dev/null || rm -f "$W/res/shoal-pipeline.json"
  fi

  log "[$E] swarm leave --force, stop daemon"
  swarm_teardown "$E"
  if [ "$E" = shoal ]; then kill_wait "$SHOAL_PID" 20; else kill_wait "$DOCKERD_PID" 30; fi
}

bench_engine shoal
[ -n "${SKIP_DOCKER:-}" ] || bench_engine docker

printf '{"start": "%s", "end": "%s"}\n' "$LOAD_START" "$(loadavg)" >"$W/res/loadavg.json"
$SH summary "$W" "${OUT_DIR:-$HERE/results}"
