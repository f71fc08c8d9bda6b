# Shared by bench/run.sh and bench/swarm.sh (sourced; uses their globals: CLI, HELPER, W, E,
# SHOAL_CG, DOCKER_CG, pre_docker_cg, NS_*).

log() { printf '\n== %s\n' "$*" >&2; }
cg_dirs() { for m in $(awk '$9=="cgroup"||$9=="cgroup2"{print $5}' /proc/self/mountinfo); do [ -d "$m/$1" ] && echo "$m/$1"; done; true; }
kill_wait() { # pid timeout_s: SIGTERM, then SIGKILL
  local p=$1 t=${2:-20} i
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < t * 10; i++)); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true; sleep 0.2
}
dk() { local e=$1; shift; $CLI -H "unix://$W/$e.sock" "$@"; }
wait_sock() { # engine pid
  local i
  for ((i = 0; i < 300; i++)); do
    dk "$1" version >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
engine_fail() { echo "$*" >>"$W/res/$E-error.txt"; echo "[$E] $*" >&2; }

# The run's work dir and the names of everything it creates. Keep $W short: shoal puts unix
# sockets at <exec-root>/shim/<24 hex>/console.sock (108-byte limit; the daemon refuses longer).
setup_workspace() { # prefix (sb, sw)
  W=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$W"
  mkdir -p "$W/res"
  ID=$(basename "$W" | tr -dc 'A-Za-z0-9' | tail -c 6)
  NS_S=$1-$ID-s; NS_SC=$1-$ID-sc; NS_D=$1-$ID-d; NS_DC=$1-$ID-dc
  DOCKER_CG=shoal-bench-docker-$ID
  SHOAL_CG=shoal-$(printf '%s' "$W/shoal-data" | sha256sum | cut -c1-8)
  SHOAL_PID=; DOCKERD_PID=
  pre_docker_cg=$(ls -d /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker 2>/dev/null || true)
}

# Everything a run may leave: processes naming $W, processes in our cgroups, the cgroups, dockerd's
# "docker" cgroups made by this run, mounts under $W (deepest first), the namespaces.
cleanup_leftovers() {
  # leftover shims/containerd of this run (cmdline mentions $W), then container processes in our cgroups
  for p in $($HELPER pids shoal "$W") $($HELPER pids docker "$W"); do kill -KILL "$p" 2>/dev/null; done
  for cg in "$SHOAL_CG" "$DOCKER_CG"; do
    for d in $(cg_dirs "$cg"); do
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do kill -KILL "$p" 2>/dev/null; done
    done
  done
  sleep 0.5
  for cg in "$SHOAL_CG" "$DOCKER_CG"; do
    for d in $(cg_dirs "$cg"); do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; done
  done
  # "docker" cgroups created by this run (only if they did not exist before and are empty)
  for d in /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker; do
    [ -d "$d" ] && ! grep -qx "$d" <<<"$pre_docker_cg" && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  # mounts under $W, deepest first
  for _ in 1 2 3 4 5; do
    mps=$(awk -v w="$W" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
    [ -z "$mps" ] && break
    for m in $mps; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  done
  for ns in $NS_SC $NS_DC $NS_S $NS_D; do ip netns del "$ns" 2>/dev/null; done
}
