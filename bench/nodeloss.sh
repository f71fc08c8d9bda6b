#!/usr/bin/env bash
# Node loss: how long until a lost worker is marked down and its task runs elsewhere, and what the
# heartbeats cost. shoal on a `shoal lab` (1 manager + 2 workers, default settings); Docker Swarm
# on the same layout when SKIP_DOCKER is unset (bench/nodeloss_docker.sh). Run as root:
#   sudo bench/nodeloss.sh
# Env: RUNS (default 3 per way of losing the node) TRAFFIC_S (10) SKIP_DOCKER=1 SKIP_BUILD=1
#      OUT_DIR=DIR (default bench/results)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RUNS=${RUNS:-3}
TRAFFIC_S=${TRAFFIC_S:-10}
CLI=/usr/local/bin/docker
export PYTHONDONTWRITEBYTECODE=1
NH="python3 $HERE/nodeloss_helper.py"
log() { printf '\n== %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
[ -x "$CLI" ] || { echo "$CLI (docker 28.x CLI) missing" >&2; exit 1; }
for b in ip nsenter unshare python3; do command -v $b >/dev/null || { echo "missing $b" >&2; exit 1; }; done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SHOAL=$TARGET/release/shoal
if [ -z "${SKIP_BUILD:-}" ]; then
  log "cargo build --release -p shoal"
  (cd "$ROOT" && cargo build --release -p shoal >&2)
fi
IMGDIR=$TARGET/test-images/v1/images
if [ ! -f "$IMGDIR/busybox/docker-archive.tar" ]; then
  log "building test images"
  (cd "$ROOT" && cargo test -p shoal-testkit --test testkit images_and_archives >&2)
fi

W=$(mktemp -d /tmp/nl.XXXXXX)
mkdir -p "$W/res"
LAB=nlb$(basename "$W" | tr -dc 'a-z0-9' | tail -c 5)
SUBNET=10.97.0.0/24
cleanup() {
  set +e
  trap - EXIT INT TERM
  log "cleanup"
  # a frozen daemon cannot stop: thaw everything of this lab first
  for p in $(pgrep -f "/run/shoal-lab/$LAB/"); do kill -CONT "$p" 2>/dev/null; done
  "$SHOAL" lab down --name "$LAB" >&2
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

node_field() { python3 -c "import json,sys;l=json.load(open('/run/shoal-lab/$LAB/lab.json'));print([n['$2'] for n in l['nodes'] if n['name']=='$1'][0])"; }
sock() { echo "/run/shoal-lab/$LAB/$1/docker.sock"; }
dk() { local n=$1; shift; $CLI -H "unix://$(sock "$n")" "$@"; }
daemon_pid() { # the live daemon of a node (the lab's, or the one this script restarted)
  pgrep -f "shoal daemon -H unix://$(sock "$1")" | head -1
}
restart_daemon() { # node: the way `shoal lab up` starts it (own UTS namespace named after the node)
  local n=$1
  setsid unshare --uts sh -c "hostname $n; exec nsenter --net=/run/netns/$(node_field "$n" netns) -- \
    $SHOAL daemon -H unix://$(sock "$n") --data-root $(node_field "$n" data_root) --exec-root $(node_field "$n" exec_root)" \
    >>"/run/shoal-lab/$LAB/$n/daemon.log" 2>&1 </dev/null &
  disown  # the next run kills it on purpose: no "Killed" notice from bash
}

log "shoal lab up --name $LAB"
"$SHOAL" lab up --name "$LAB" --managers 1 --workers 2 --subnet "$SUBNET" >"$W/lab-up.txt"
for n in mgr1 wrk1 wrk2; do dk "$n" load -i "$IMGDIR/busybox/docker-archive.tar" >/dev/null; done
$NH wait-nodes "$(sock mgr1)" 3 30
dk mgr1 info --format '{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}' >"$W/res/shoal-period.txt"

log "idle heartbeat traffic of wrk1 for ${TRAFFIC_S}s"
sleep 2
$NH traffic "$(node_field wrk1 netns)" eth0 "$TRAFFIC_S" "$W/res/shoal-traffic.json"

for sig in KILL STOP; do
  for r in $(seq 1 "$RUNS"); do
    name=nl-$sig-$r
    log "run $r: $sig wrk1 ($name)"
    dk mgr1 service create -d -q --name "$name" --constraint node.role==worker --replicas 2 busybox sleep 1d >/dev/null
    $NH wait-service "$(sock mgr1)" "$name" 2 60 wrk1 wrk2
    pid=$(daemon_pid wrk1)
    $NH loss "$(sock mgr1)" "$name" wrk1 "$pid" "$sig" "$W/res/shoal-loss-$sig-$r.json"
    if [ "$sig" = STOP ]; then kill -CONT "$pid"; else restart_daemon wrk1; fi
    $NH wait-nodes "$(sock mgr1)" 3 60
    dk mgr1 service rm "$name" >/dev/null
  done
done

if [ -z "${SKIP_DOCKER:-}" ] && [ -x "$HERE/nodeloss_docker.sh" ]; then
  log "Docker Swarm"
  RUNS=$RUNS TRAFFIC_S=$TRAFFIC_S W=$W IMGDIR=$IMGDIR "$HERE/nodeloss_docker.sh" || echo "docker side failed" >&2
fi

$NH summary "$W" "${OUT_DIR:-$HERE/results}"
