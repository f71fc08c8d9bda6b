# A small Docker Swarm "lab" with Debian's dockerd 20.10 (docker.io), the layout of `shoal lab`:
# netns <P>-hub with bridge br0, one netns <P>-<node> per node whose eth0 (veth peer of v<N> on
# br0) carries <NET3>.<N>/24, one dockerd per node started like the lab starts shoal (own session
# and UTS namespace with hostname = node name, `nsenter --net`), with its own --data-root,
# --exec-root, socket, pidfile and config file (engine key) under <dir>, --cgroup-parent
# /<P>-<node>; each dockerd starts its own containerd. The same approach as
# bench/nodeloss_docker.sh (which keeps its own copy), as a library.
#
# Sourced (bash). Needs common.sh (log, kill_wait, cg_dirs) and HELPER (helper.py, for `pids`).
#   dsl_init DIR PREFIX NET3 NODE...   names and state (first node = manager); nothing created yet
#   dsl_check                          prints why Docker cannot run here (and returns 1), or nothing
#   dsl_net_up                         namespaces, bridge, veths, addresses
#   dsl_start_dockerd NODE             starts NODE's dockerd, waits until its API answers
#   dsl_swarm                          swarm init on the first node, join of the others
#   dsl_dk NODE ARGS… / dsl_dkt NODE TIMEOUT ARGS…   the 28.x CLI against NODE
#   dsl_cleanup                        removes everything dsl_* created (idempotent; never fails)
# Globals set by dsl_init: DSL_D (dir), DSL_P (prefix), DSL_NODES (array), DSL_ADDR, DSL_VETH,
# DSL_PID (assoc arrays by node). DSL_LOG_LEVEL (default warn) is dockerd's --log-level.

DSL_CLI=${DSL_CLI:-/usr/local/bin/docker}

dsl_init() { # dir prefix net3 node...
  DSL_D=$1 DSL_P=$2 DSL_NET3=$3
  shift 3
  DSL_NODES=("$@")
  declare -gA DSL_ADDR=() DSL_VETH=() DSL_PID=()
  local i=1 n
  for n in "${DSL_NODES[@]}"; do DSL_ADDR[$n]=$DSL_NET3.$i; DSL_VETH[$n]=v$i; i=$((i + 1)); done
  DSL_STARTED=
  DSL_PRE_RUN_DOCKER=$([ -e /run/docker ] && echo 1 || true)
  DSL_PRE_RUN_CONTAINERD=$([ -e /run/containerd ] && echo 1 || true)
  DSL_PRE_DOCKER_CG=$(ls -d /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker 2>/dev/null || true)
}

dsl_check() {
  local b
  for b in dockerd containerd runc ip nsenter unshare setsid hostname; do
    command -v $b >/dev/null || { echo "missing $b (bench/run.sh installs docker.io, containerd, runc)"; return 1; }
  done
  [ -x "$DSL_CLI" ] || { echo "$DSL_CLI (docker 28.x CLI) missing"; return 1; }
  # dockerd 20.10 uses a running system containerd instead of starting its own when this socket exists
  if [ -S /run/containerd/containerd.sock ]; then
    echo "a system containerd is running (/run/containerd/containerd.sock): dockerd would share it"
    return 1
  fi
  return 0
}

dsl_sock() { echo "$DSL_D/$1.sock"; }
dsl_dk() { local n=$1; shift; $DSL_CLI -H "unix://$(dsl_sock "$n")" "$@"; }
dsl_dkt() { local n=$1 t=$2; shift 2; timeout "$t" $DSL_CLI -H "unix://$(dsl_sock "$n")" "$@"; }
dsl_ours() { # pid node: is PID the dockerd of NODE started by this run?
  [ -n "$1" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "-H unix://$(dsl_sock "$2") "
}

dsl_net_up() {
  local n
  DSL_STARTED=1
  mkdir -p "$DSL_D"
  ip netns add "$DSL_P-hub"
  ip -n "$DSL_P-hub" link set lo up
  ip -n "$DSL_P-hub" link add br0 type bridge
  ip -n "$DSL_P-hub" link set br0 up
  for n in "${DSL_NODES[@]}"; do
    ip netns add "$DSL_P-$n"
    ip -n "$DSL_P-$n" link set lo up
    ip -n "$DSL_P-hub" link add "${DSL_VETH[$n]}" type veth peer name eth0 netns "$DSL_P-$n"
    ip -n "$DSL_P-hub" link set "${DSL_VETH[$n]}" master br0 up
    ip -n "$DSL_P-$n" addr add "${DSL_ADDR[$n]}/24" dev eth0
    ip -n "$DSL_P-$n" link set eth0 up
  done
}

dsl_start_dockerd() { # node
  local n=$1 p D=$DSL_D
  DSL_STARTED=1
  mkdir -p "$D/$n"
  rm -f "$D/$n.pid"
  # its own engine key (not the shared /etc/docker/key.json); no command-line flag for it in 20.10
  printf '{"deprecated-key-path": "%s"}\n' "$D/$n/key.json" >"$D/$n/daemon.json"
  setsid unshare --uts sh -c "hostname $n; exec nsenter --net=/run/netns/$DSL_P-$n -- dockerd \
    -H unix://$(dsl_sock "$n") --data-root $D/$n/data --exec-root $D/$n/x --pidfile $D/$n.pid \
    --config-file $D/$n/daemon.json --iptables=true --cgroup-parent /$DSL_P-$n --log-level ${DSL_LOG_LEVEL:-warn}" \
    >>"$D/$n.log" 2>&1 </dev/null &
  disown
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt 120 ]; do
    p=$(cat "$D/$n.pid" 2>/dev/null || true)
    if dsl_ours "$p" "$n"; then
      DSL_PID[$n]=$p
      dsl_dkt "$n" 5 version >/dev/null 2>&1 && return 0
    elif [ $((SECONDS - t0)) -gt 10 ] && ! pgrep -f -- "-H unix://$(dsl_sock "$n") " >/dev/null; then
      break  # nothing running for this node: dockerd exited
    fi
    sleep 0.1
  done
  echo "dockerd of $n did not come up; last log lines:" >&2
  tail -20 "$D/$n.log" >&2
  return 1
}

dsl_swarm() { # init on the first node, join the others; prints why on failure
  local m=${DSL_NODES[0]} n token
  dsl_dkt "$m" 120 swarm init --advertise-addr "${DSL_ADDR[$m]}" >"$DSL_D/init.txt" 2>&1 \
    || { echo "swarm init failed: $(tail -3 "$DSL_D/init.txt" | tr '\n' ' ')"; return 1; }
  token=$(dsl_dkt "$m" 30 swarm join-token -q worker) || { echo "swarm join-token failed"; return 1; }
  for n in "${DSL_NODES[@]:1}"; do
    dsl_dkt "$n" 120 swarm join --token "$token" --advertise-addr "${DSL_ADDR[$n]}" "${DSL_ADDR[$m]}:2377" >"$DSL_D/join-$n.txt" 2>&1 \
      || { echo "swarm join of $n failed: $(tail -3 "$DSL_D/join-$n.txt" | tr '\n' ' ')"; return 1; }
  done
}

dsl_teardown_node() { # node: services (manager), swarm, containers; daemon still running
  local n=$1 s ids
  if [ "$n" = "${DSL_NODES[0]}" ]; then
    s=$(dsl_dkt "$n" 30 service ls -q 2>/dev/null) || true
    [ -n "$s" ] && dsl_dkt "$n" 60 service rm $s >/dev/null 2>&1
  fi
  dsl_dkt "$n" 60 swarm leave --force >/dev/null 2>&1
  ids=$(dsl_dkt "$n" 30 ps -aq 2>/dev/null) || true
  [ -n "$ids" ] && dsl_dkt "$n" 60 rm -f $ids >/dev/null 2>&1
  return 0
}

dsl_cleanup() {
  [ -n "${DSL_STARTED:-}" ] || return 0
  (
    set +eu
    log "[docker] cleanup"
    D=$DSL_D P=$DSL_P
    declare -A live=()
    for n in "${DSL_NODES[@]}"; do
      p=${DSL_PID[$n]:-}; dsl_ours "$p" "$n" || p=$(cat "$D/$n.pid" 2>/dev/null)
      dsl_ours "$p" "$n" && { kill -CONT "$p" 2>/dev/null; live[$n]=$p; }
    done
    # workers first, the manager last
    for ((i = ${#DSL_NODES[@]} - 1; i >= 0; i--)); do
      n=${DSL_NODES[$i]}; [ -n "${live[$n]:-}" ] && dsl_teardown_node "$n"
    done
    for n in "${DSL_NODES[@]}"; do kill_wait "${live[$n]:-}" 30; done
    # containerd and shims of this run (their command lines name $D), then processes in its cgroups
    for p in $($HELPER pids docker "$D"); do kill -KILL "$p" 2>/dev/null; done
    for n in "${DSL_NODES[@]}"; do
      for d in $(cg_dirs "$P-$n"); do
        find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do kill -KILL "$p" 2>/dev/null; done
      done
    done
    sleep 0.5
    for n in "${DSL_NODES[@]}"; do for d in $(cg_dirs "$P-$n"); do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; done; done
    for d in /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker; do
      [ -d "$d" ] && ! grep -qx "$d" <<<"$DSL_PRE_DOCKER_CG" && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    # mounts under $D (overlay rootfs, shm, netns bind mounts under the exec-roots), deepest first
    for _ in 1 2 3 4 5; do
      mps=$(awk -v w="$D/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
      [ -z "$mps" ] && break
      for m in $mps; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
    done
    for n in "${DSL_NODES[@]}"; do ip netns del "$P-$n" 2>/dev/null; done
    ip netns del "$P-hub" 2>/dev/null
    # dockerd makes /run/docker/plugins and containerd /run/containerd/s (shim sockets) whatever the
    # roots: remove them only if this run created them and they are empty
    [ -z "$DSL_PRE_RUN_DOCKER" ] && [ -d /run/docker ] && find /run/docker -depth -type d -empty -delete 2>/dev/null
    [ -z "$DSL_PRE_RUN_CONTAINERD" ] && [ -d /run/containerd ] && find /run/containerd -depth -type d -empty -delete 2>/dev/null
    if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS"; cp "$D"/*.log "$KEEP_LOGS"/ 2>/dev/null; fi
    [ -z "$(awk -v w="$D/" 'index($5, w) == 1' /proc/self/mountinfo)" ] && rm -rf --one-file-system "$D"
    [ -d "$D" ] && echo "WARNING: $D left behind (mounts?)" >&2
    for n in "${DSL_NODES[@]}"; do [ -n "$(cg_dirs "$P-$n")" ] && echo "WARNING: cgroup $P-$n left" >&2; done
    for n in hub "${DSL_NODES[@]}"; do ip netns list | grep -q "^$P-$n\b" && echo "WARNING: netns $P-$n left" >&2; done
    true
  )
  DSL_STARTED=
  return 0
}
