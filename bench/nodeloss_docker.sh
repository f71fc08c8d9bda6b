#!/usr/bin/env bash
# Docker Swarm side of bench/nodeloss.sh: the same node-loss test on the same layout, with Debian's
# dockerd 20.10 (docker.io). Called by nodeloss.sh (unless SKIP_DOCKER is set); standalone, as root:
#   W=$(mktemp -d /tmp/nl.XXXXXX) IMGDIR=target/test-images/v1/images bench/nodeloss_docker.sh
# Env: W (work dir; results go to $W/res/docker-*), IMGDIR (holds busybox/docker-archive.tar),
#      RUNS (3 per way of losing the node), TRAFFIC_S (10), KEEP_LOGS=DIR (copy dockerd logs there)
#
# Layout: netns nld<id>-hub with bridge br0, and one netns nld<id>-<node> per node (mgr1, wrk1,
# wrk2) whose eth0 (veth peer of v<N> on br0) carries 10.96.0.<N>/24 (the shoal lab uses
# 10.97.0.0/24). One dockerd per node, started like the lab starts shoal: in its own session and
# UTS namespace (hostname = node name: Docker names nodes by hostname) and `nsenter --net`, with its
# own --data-root/--exec-root/socket/pidfile/config file (engine key) under $W/d and --cgroup-parent
# /nld<id>-<node>; each starts its own containerd. `swarm init` on mgr1, `swarm join` on the
# workers, default settings (heartbeat 5 s). Errors that stop the Docker side are appended to
# $W/res/docker-error.txt (shown by the summary).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/common.sh"   # log, kill_wait, cg_dirs
: "${W:?W (work dir) not set}" "${IMGDIR:?IMGDIR not set}"
RUNS=${RUNS:-3}
TRAFFIC_S=${TRAFFIC_S:-10}
CLI=/usr/local/bin/docker
export PYTHONDONTWRITEBYTECODE=1
NH="python3 $HERE/nodeloss_helper.py"
HELPER="python3 $HERE/helper.py"

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
mkdir -p "$W/res"
ERR=$W/res/docker-error.txt
fail() { echo "$*" >>"$ERR"; echo "[docker] $*" >&2; exit 1; }
note() { echo "$*" >>"$ERR"; echo "[docker] $*" >&2; }

for b in dockerd containerd runc ip nsenter unshare setsid hostname python3; do
  command -v $b >/dev/null || fail "missing $b (bench/run.sh installs docker.io, containerd, runc)"
done
[ -x "$CLI" ] || fail "$CLI (docker 28.x CLI) missing"
[ -f "$IMGDIR/busybox/docker-archive.tar" ] || fail "missing $IMGDIR/busybox/docker-archive.tar"
# dockerd 20.10 uses a running system containerd instead of starting its own when this socket exists
[ -S /run/containerd/containerd.sock ] && fail "a system containerd is running (/run/containerd/containerd.sock): dockerd would share it"

ID=$(basename "$W" | tr -dc 'a-z0-9' | tail -c 5)
P=nld$ID                  # netns prefix and cgroup-parent prefix
D=$W/d                    # everything dockerd writes
NODES=(mgr1 wrk1 wrk2)
declare -A ADDR=([mgr1]=10.96.0.1 [wrk1]=10.96.0.2 [wrk2]=10.96.0.3) VETH=([mgr1]=v1 [wrk1]=v2 [wrk2]=v3)
declare -A PID=()
mkdir -p "$D"
pre_run_docker=$([ -e /run/docker ] && echo 1 || true)
pre_run_containerd=$([ -e /run/containerd ] && echo 1 || true)
pre_docker_cg=$(ls -d /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker 2>/dev/null || true)

sock() { echo "$D/$1.sock"; }
dk() { local n=$1; shift; $CLI -H "unix://$(sock "$n")" "$@"; }
dkt() { local n=$1 t=$2; shift 2; timeout "$t" $CLI -H "unix://$(sock "$n")" "$@"; }
ours() { # pid node: is PID the dockerd of NODE started by this run?
  [ -n "$1" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "-H unix://$(sock "$2") "
}

start_dockerd() { # node: own session + UTS namespace (hostname = node), its netns
  local n=$1 p
  mkdir -p "$D/$n"
  rm -f "$D/$n.pid"
  # its own engine key (not the shared /etc/docker/key.json); no command-line flag for it in 20.10
  printf '{"deprecated-key-path": "%s"}\n' "$D/$n/key.json" >"$D/$n/daemon.json"
  setsid unshare --uts sh -c "hostname $n; exec nsenter --net=/run/netns/$P-$n -- dockerd \
    -H unix://$(sock "$n") --data-root $D/$n/data --exec-root $D/$n/x --pidfile $D/$n.pid \
    --config-file $D/$n/daemon.json --iptables=true --cgroup-parent /$P-$n --log-level warn" \
    >>"$D/$n.log" 2>&1 </dev/null &
  disown  # runs are meant to kill it: no "Killed" notice from bash
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt 120 ]; do
    p=$(cat "$D/$n.pid" 2>/dev/null || true)
    if ours "$p" "$n"; then
      PID[$n]=$p
      dkt "$n" 5 version >/dev/null 2>&1 && return 0
    elif [ $((SECONDS - t0)) -gt 10 ] && ! pgrep -f -- "-H unix://$(sock "$n") " >/dev/null; then
      break  # nothing running for this node: dockerd exited
    fi
    sleep 0.1
  done
  echo "[docker] dockerd of $n did not come up; last log lines:" >&2
  tail -20 "$D/$n.log" >&2
  return 1
}

swarm_teardown() { # node: services (manager), swarm, containers; daemon still running
  local n=$1 s ids
  if [ "$n" = mgr1 ]; then
    s=$(dkt "$n" 30 service ls -q 2>/dev/null) || true
    [ -n "$s" ] && dkt "$n" 60 service rm $s >/dev/null 2>&1
  fi
  dkt "$n" 60 swarm leave --force >/dev/null 2>&1
  ids=$(dkt "$n" 30 ps -aq 2>/dev/null) || true
  [ -n "$ids" ] && dkt "$n" 60 rm -f $ids >/dev/null 2>&1
  return 0
}

cleanup() {
  set +eu
  trap - EXIT
  trap '' INT TERM  # finish the cleanup even on a second Ctrl-C
  log "[docker] cleanup"
  local n p m mps cg d
  for n in "${NODES[@]}"; do
    p=${PID[$n]:-}; ours "$p" "$n" || p=$(cat "$D/$n.pid" 2>/dev/null)
    ours "$p" "$n" && { kill -CONT "$p" 2>/dev/null; PID[$n]=$p; } || PID[$n]=
  done
  for n in wrk2 wrk1 mgr1; do [ -n "${PID[$n]}" ] && swarm_teardown "$n"; done
  for n in "${NODES[@]}"; do kill_wait "${PID[$n]}" 30; done
  # containerd and shims of this run (their command lines name $D), then processes in its cgroups
  for p in $($HELPER pids docker "$D"); do kill -KILL "$p" 2>/dev/null; done
  for n in "${NODES[@]}"; do
    for d in $(cg_dirs "$P-$n"); do
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do kill -KILL "$p" 2>/dev/null; done
    done
  done
  sleep 0.5
  for n in "${NODES[@]}"; do for d in $(cg_dirs "$P-$n"); do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; done; done
  for d in /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker; do
    [ -d "$d" ] && ! grep -qx "$d" <<<"$pre_docker_cg" && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  # mounts under $D (overlay rootfs, shm, netns bind mounts under the exec-roots), deepest first
  for _ in 1 2 3 4 5; do
    mps=$(awk -v w="$D/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
    [ -z "$mps" ] && break
    for m in $mps; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  done
  for n in "${NODES[@]}"; do ip netns del "$P-$n" 2>/dev/null; done
  ip netns del "$P-hub" 2>/dev/null
  # dockerd makes /run/docker/plugins and containerd /run/containerd/s (shim sockets) whatever the
  # roots: remove them only if this run created them and they are empty
  [ -z "$pre_run_docker" ] && [ -d /run/docker ] && find /run/docker -depth -type d -empty -delete 2>/dev/null
  [ -z "$pre_run_containerd" ] && [ -d /run/containerd ] && find /run/containerd -depth -type d -empty -delete 2>/dev/null
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS"; cp "$D"/*.log "$KEEP_LOGS"/ 2>/dev/null; fi
  [ -z "$(awk -v w="$D/" 'index($5, w) == 1' /proc/self/mountinfo)" ] && rm -rf --one-file-system "$D"
  [ -d "$D" ] && echo "WARNING: $D left behind (mounts?)" >&2
  for n in "${NODES[@]}"; do [ -n "$(cg_dirs "$P-$n")" ] && echo "WARNING: cgroup $P-$n left" >&2; done
  for n in "${NODES[@]}"; do ip netns list | grep -q "^$P-$n\b" && echo "WARNING: netns $P-$n left" >&2; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- network: hub bridge + 3 nodes
ip netns add "$P-hub"
ip -n "$P-hub" link set lo up
ip -n "$P-hub" link add br0 type bridge
ip -n "$P-hub" link set br0 up
for n in "${NODES[@]}"; do
  ip netns add "$P-$n"
  ip -n "$P-$n" link set lo up
  ip -n "$P-hub" link add "${VETH[$n]}" type veth peer name eth0 netns "$P-$n"
  ip -n "$P-hub" link set "${VETH[$n]}" master br0 up
  ip -n "$P-$n" addr add "${ADDR[$n]}/24" dev eth0
  ip -n "$P-$n" link set eth0 up
done

# ---------------------------------------------------------------- daemons, swarm, image
for n in "${NODES[@]}"; do
  log "[docker] dockerd $n (${ADDR[$n]})"
  start_dockerd "$n" || fail "dockerd of $n did not start: $(tail -3 "$D/$n.log" | tr '\n' ' ')"
done
dk mgr1 version --format 'dockerd {{.Server.Version}} (API {{.Server.APIVersion}})' >&2 || true

log "[docker] swarm init --advertise-addr ${ADDR[mgr1]}; join wrk1, wrk2"
dkt mgr1 120 swarm init --advertise-addr "${ADDR[mgr1]}" >"$D/init.txt" 2>&1 \
  || fail "swarm init failed: $(tail -3 "$D/init.txt" | tr '\n' ' ')"
token=$(dkt mgr1 30 swarm join-token -q worker) || fail "swarm join-token failed"
for n in wrk1 wrk2; do
  dkt "$n" 120 swarm join --token "$token" --advertise-addr "${ADDR[$n]}" "${ADDR[mgr1]}:2377" >"$D/join-$n.txt" 2>&1 \
    || fail "swarm join of $n failed: $(tail -3 "$D/join-$n.txt" | tr '\n' ' ')"
done
for n in "${NODES[@]}"; do
  dkt "$n" 120 load -i "$IMGDIR/busybox/docker-archive.tar" >/dev/null || fail "docker load busybox on $n failed"
done
$NH wait-nodes "$(sock mgr1)" 3 60 || fail "not 3 Ready nodes 60 s after joining: $(dk mgr1 node ls 2>&1 | tr '\n' ' ')"
dk mgr1 info --format '{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}' >"$W/res/docker-period.txt"
dk mgr1 node ls >&2

log "[docker] idle heartbeat traffic of wrk1 for ${TRAFFIC_S}s"
sleep 2
$NH traffic "$P-wrk1" eth0 "$TRAFFIC_S" "$W/res/docker-traffic.json"

# ---------------------------------------------------------------- runs
for sig in KILL STOP; do
  for r in $(seq 1 "$RUNS"); do
    name=nl-$sig-$r
    log "[docker] run $r: $sig wrk1's dockerd ($name)"
    dkt mgr1 60 service create -d -q --name "$name" --constraint node.role==worker --replicas 2 busybox sleep 1d >/dev/null \
      || fail "service create $name failed"
    $NH wait-service "$(sock mgr1)" "$name" 2 120 wrk1 wrk2 || fail "$name: tasks not running on wrk1 and wrk2 after 120 s"
    pid=${PID[wrk1]}
    ours "$pid" wrk1 || fail "lost track of wrk1's dockerd"
    $NH loss "$(sock mgr1)" "$name" wrk1 "$pid" "$sig" "$W/res/docker-loss-$sig-$r.json" \
      || note "run $r ($sig): node down and/or tasks elsewhere not seen within 120 s"
    if [ "$sig" = STOP ]; then
      kill -CONT "$pid"
    else
      # The shims and the container survive dockerd, as with shoal. Start it again exactly as before.
      c=$(pgrep -f -- "--config $D/wrk1/x/containerd/containerd.toml" | tr '\n' ' ' || true)
      c=${c:+still running (pid ${c% })}
      echo "[docker] after kill -9 of dockerd: wrk1's containerd ${c:-gone}," \
        "shims running: $(pgrep -f -- "containerd-shim-runc-v2 .*-address $D/wrk1/" | wc -l)" >&2
      start_dockerd wrk1 || fail "restarting wrk1's dockerd failed"
    fi
    $NH wait-nodes "$(sock mgr1)" 3 180 || fail "wrk1 not Ready again 180 s after run $r ($sig)"
    dkt mgr1 60 service rm "$name" >/dev/null || fail "service rm $name failed"
  done
done
