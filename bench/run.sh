#!/usr/bin/env bash
# shoal vs Docker Engine (Debian docker.io) side by side. Run as root:  sudo bench/run.sh
# Env: RUNS (default 20) WARMUP (3) WRK_DURATION (10s) HTTP_ROUNDS (3) SKIP_DOCKER=1 SKIP_INSTALL=1 SKIP_BUILD=1 KEEP_LOGS=DIR OUT_DIR=DIR (default bench/results)
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/common.sh"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RUNS=${RUNS:-20}
WARMUP=${WARMUP:-3}
WRK_DURATION=${WRK_DURATION:-10s}
HTTP_ROUNDS=${HTTP_ROUNDS:-3}
NCONT=10
CLI=/usr/local/bin/docker   # docker 28.2 CLI, used for BOTH engines
HELPER="python3 $HERE/helper.py"

[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
[ -x "$CLI" ] || { echo "$CLI (docker 28.x CLI) missing" >&2; exit 1; }


# ---------------------------------------------------------------- 1. install
if [ -z "${SKIP_INSTALL:-}" ]; then
  need=()
  for b in dockerd:docker.io containerd:containerd runc:runc wrk:wrk hyperfine:hyperfine; do
    command -v "${b%%:*}" >/dev/null || need+=("${b#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} (services blocked by policy-rc.d)"
    before=$(pgrep -x 'dockerd|containerd' | sort || true)
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q "${need[@]}" >&2 || rc=$?
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    # Stop any dockerd/containerd the package started anyway (only new pids).
    for p in $(pgrep -x 'dockerd|containerd' | sort || true); do
      grep -qx "$p" <<<"$before" || { echo "stopping package-started $(cat /proc/$p/comm) pid $p" >&2; kill "$p" || true; }
    done
    [ $rc = 0 ] || exit $rc
  fi
fi
for b in wrk hyperfine ip nsenter python3; do command -v $b >/dev/null || { echo "missing $b" >&2; exit 1; }; done

# ---------------------------------------------------------------- 2. build
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SHOAL=$TARGET/release/shoal
if [ -z "${SKIP_BUILD:-}" ]; then
  log "cargo build --release -p shoal"
  (cd "$ROOT" && cargo build --release -p shoal >&2)
fi
[ -x "$SHOAL" ] || { echo "missing $SHOAL" >&2; exit 1; }
IMGDIR=$TARGET/test-images/v1/images
if [ ! -f "$IMGDIR/busybox/docker-archive.tar" ] || [ ! -f "$IMGDIR/nginx/docker-archive.tar" ]; then
  log "building test images"
  (cd "$ROOT" && cargo test -p shoal-testkit --test testkit images_and_archives >&2)
fi

# ---------------------------------------------------------------- workspace + cleanup
setup_workspace sb

cleanup() {
  set +e
  trap - EXIT INT TERM
  log "cleanup"
  for e in shoal:$SHOAL_PID docker:$DOCKERD_PID; do
    local name=${e%%:*} pid=${e#*:}
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      ids=$(timeout 30 $CLI -H unix://$W/$name.sock ps -aq 2>/dev/null)
      [ -n "$ids" ] && timeout 60 $CLI -H unix://$W/$name.sock rm -f $ids >/dev/null 2>&1
    fi
  done
  kill_wait "$SHOAL_PID" 20
  kill_wait "$DOCKERD_PID" 30
  cleanup_leftovers
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS"; cp -r "$W"/*.log "$W/res" "$KEEP_LOGS"/ 2>/dev/null; fi
  [ -z "$(awk -v w="$W" 'index($5, w) == 1' /proc/self/mountinfo)" ] && rm -rf --one-file-system "$W"
  [ -d "$W" ] && echo "WARNING: $W left behind (mounts?)" >&2
  for cg in "$SHOAL_CG" "$DOCKER_CG"; do [ -n "$(cg_dirs "$cg")" ] && echo "WARNING: cgroup $cg left" >&2; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- 3. namespaces
# daemon netns <-veth-> client netns:  daemon 10.77.0.1/24, client 10.77.0.2/24 (one pair per engine)
for pair in "$NS_S $NS_SC" "$NS_D $NS_DC"; do
  set -- $pair
  ip netns add "$1"; ip netns add "$2"
  ip -n "$1" link set lo up; ip -n "$2" link set lo up
  ip -n "$1" link add bveth0 type veth peer name bveth1 netns "$2"
  ip -n "$1" addr add 10.77.0.1/24 dev bveth0; ip -n "$1" link set bveth0 up
  ip -n "$2" addr add 10.77.0.2/24 dev bveth1; ip -n "$2" link set bveth1 up
  ip -n "$2" route add 172.17.0.0/16 via 10.77.0.1
  ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1
done


start_shoal() {
  nsenter --net=/run/netns/$NS_S "$SHOAL" daemon -H "unix://$W/shoal.sock" \
    --data-root "$W/shoal-data" --exec-root "$W/sx" >"$W/shoal.log" 2>&1 &
  SHOAL_PID=$!
  wait_sock shoal "$SHOAL_PID" || { tail -20 "$W/shoal.log" >&2; return 1; }
}
start_docker() {
  nsenter --net=/run/netns/$NS_D dockerd -H "unix://$W/docker.sock" \
    --data-root "$W/docker-data" --exec-root "$W/dx" --pidfile "$W/docker.pid" \
    --iptables=true --cgroup-parent "/$DOCKER_CG" --log-level warn >"$W/docker.log" 2>&1 &
  DOCKERD_PID=$!
  wait_sock docker "$DOCKERD_PID" || { tail -30 "$W/docker.log" >&2; return 1; }
  # Let the client netns reach containers/published ports through dockerd's FORWARD chain.
  ip netns exec "$NS_D" iptables -I DOCKER-USER -i bveth0 -j ACCEPT 2>/dev/null || true
  ip netns exec "$NS_D" iptables -I DOCKER-USER -o bveth0 -j ACCEPT 2>/dev/null || true
}
daemon_pids() { # engine -> the daemon pid(s) whose memory counts as "daemon"
  if [ "$1" = shoal ]; then echo "$SHOAL_PID"
  else echo "$DOCKERD_PID $($HELPER pids docker "$W" | tr ' ' '\n' | while read -r p; do
    [ -n "$p" ] && [ "$(cat /proc/$p/comm 2>/dev/null)" = containerd ] && echo "$p"; done)"
  fi
}


bench_engine() {
  local E=$1 NSD NSC
  if [ "$E" = shoal ]; then NSD=$NS_S; NSC=$NS_SC; else NSD=$NS_D; NSC=$NS_DC; fi
  log "[$E] start daemon"
  if ! start_$E; then engine_fail "daemon did not start (see log above)"; return 0; fi
  dk "$E" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null \
    | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' >"$W/res/$E-info.json"

  log "[$E] load images"
  dk "$E" load -i "$IMGDIR/busybox/docker-archive.tar" >&2 || { engine_fail "load busybox failed"; return 0; }
  dk "$E" load -i "$IMGDIR/nginx/docker-archive.tar" >&2 || engine_fail "load nginx failed"

  log "[$E] b. idle daemon memory (5 s idle)"
  sleep 5
  $HELPER mem "$E" "$W" $(daemon_pids "$E") >"$W/res/$E-idle.json"

  log "[$E] a. docker run --rm busybox true ($WARMUP warm-ups, $RUNS runs)"
  timeout $((RUNS * 30 + 120)) hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" --export-json "$W/res/$E-run.json" \
    "$CLI -H unix://$W/$E.sock run --rm busybox true" >&2 || engine_fail "hyperfine run failed"

  log "[$E] c. per-container memory ($NCONT x busybox sleep 3600, after one warm-up container)"
  # The marginal cost of a running container: one detached container first, so code paths the
  # daemon runs only once (first long-running start) are not charged to the ten measured ones.
  timeout 60 $CLI -H "unix://$W/$E.sock" run -d busybox sleep 3600 >/dev/null || engine_fail "warm-up container failed"
  sleep 3
  $HELPER mem "$E" "$W" $(daemon_pids "$E") >"$W/res/$E-mem-before.json"
  local i ok=1
  for ((i = 0; i < NCONT; i++)); do timeout 60 $CLI -H "unix://$W/$E.sock" run -d busybox sleep 3600 >/dev/null || ok=; done
  [ -n "$ok" ] || engine_fail "starting sleep containers failed"
  sleep 3
  $HELPER mem "$E" "$W" $(daemon_pids "$E") >"$W/res/$E-mem-after.json"
  dk "$E" rm -f $(dk "$E" ps -aq) >/dev/null 2>&1 || true

  log "[$E] d. HTTP published vs direct"
  local cid ip
  if cid=$(timeout 60 $CLI -H "unix://$W/$E.sock" run -d -p 8080:80 nginx); then
    ip=$(dk "$E" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cid")
    [ -n "$ip" ] || ip=$(dk "$E" inspect -f '{{.NetworkSettings.IPAddress}}' "$cid")
    echo "container IP $ip" >&2
    for ((i = 0; i < 100; i++)); do
      ip netns exec "$NSD" curl -fsS -o /dev/null "http://$ip:80/" 2>/dev/null && break; sleep 0.1
    done
    local k ns url r
    # HTTP_ROUNDS rounds, the four cases alternating within each: wrk, nginx and the kernel share
    # 2 cores, so a single 10 s run per case swings by ±10 %; the summary takes the median.
    for ((r = 1; r <= HTTP_ROUNDS; r++)); do
      for k in client_direct client_published local_direct local_published; do
        case $k in
          client_direct) ns=$NSC; url=http://$ip:80/ ;;
          client_published) ns=$NSC; url=http://10.77.0.1:8080/ ;;
          local_direct) ns=$NSD; url=http://$ip:80/ ;;
          local_published) ns=$NSD; url=http://127.0.0.1:8080/ ;;
        esac
        if ip netns exec "$ns" curl -fsS -m 5 -o /dev/null "$url"; then
          ip netns exec "$ns" wrk -t2 -c50 -d"$WRK_DURATION" "$url" >"$W/res/$E-wrk-$k-$r.txt" 2>&1 || engine_fail "wrk $k failed"
          echo "  round $r $k $url: $(grep Requests/sec "$W/res/$E-wrk-$k-$r.txt")" >&2
        else
          engine_fail "$k: $url not reachable"
        fi
      done
    done
    dk "$E" rm -f "$cid" >/dev/null || true
  else
    engine_fail "docker run -d -p 8080:80 nginx failed"
  fi

  log "[$E] stop daemon"
  if [ "$E" = shoal ]; then kill_wait "$SHOAL_PID" 20; else kill_wait "$DOCKERD_PID" 30; fi
}

bench_engine shoal
[ -n "${SKIP_DOCKER:-}" ] || bench_engine docker

# ---------------------------------------------------------------- 6. summary
$HELPER summary "$W" "${OUT_DIR:-$HERE/results}"
