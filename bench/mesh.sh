#!/usr/bin/env bash
# Ingress routing mesh: requests/s and latency through a published port vs straight to the task
# over the overlay, with the task on the receiving node and on another node. shoal on a
# `shoal lab` (1 manager + 1 worker); Docker Swarm (dockerd 20.10) on the same layout unless
# SKIP_DOCKER is set. Run as root from anywhere:
#   sudo bench/mesh.sh
# Env: RUNS (8) WRK_DURATION (5s) LAT_DURATION (3s) WRK_THREADS (2) WRK_CONNS (32)
#      NICE (-10: nice of wrk, the task's processes and its shim; 0 = leave them alone)
#      SKIP_DOCKER=1 SKIP_BUILD=1 OUT_DIR=DIR (default bench/results) KEEP_LOGS=DIR (daemon logs)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/common.sh"            # log, kill_wait, cg_dirs
. "$HERE/docker_swarm_lab.sh"  # dsl_* (the Docker side)
RUNS=${RUNS:-8}
WRK_DURATION=${WRK_DURATION:-5s}
LAT_DURATION=${LAT_DURATION:-3s}
# Other users' compile jobs (nice 0) on this 2-CPU machine make req/s swing by ±30 % from one run to
# the next; at nice -10 wrk and the shim win against them, nginx only partly (it competes through its
# container's cpu cgroup, whose weight stays the default).
export MESH_NICE=${NICE:--10}
TPUT_ARGS="-t${WRK_THREADS:-2} -c${WRK_CONNS:-32} -d$WRK_DURATION"
LAT_ARGS="-t1 -c1 -d$LAT_DURATION"
CLI=/usr/local/bin/docker
PORT=8001
export PYTHONDONTWRITEBYTECODE=1
MH="python3 $HERE/mesh_helper.py"
HELPER="python3 $HERE/helper.py"   # `pids`, used by dsl_cleanup

[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
[ -x "$CLI" ] || { echo "$CLI (docker 28.x CLI) missing (see bench/run.sh)" >&2; exit 1; }
for b in ip nsenter curl wrk python3; do
  command -v $b >/dev/null || { echo "missing $b${b/#wrk/ (apt-get install wrk; bench/run.sh installs it)}" >&2; exit 1; }
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SHOAL=$TARGET/release/shoal
if [ -z "${SKIP_BUILD:-}" ]; then
  log "cargo build --release -p shoal"
  (cd "$ROOT" && cargo build --release -p shoal >&2)
fi
IMGDIR=$TARGET/test-images/v1/images
if [ ! -f "$IMGDIR/nginx/docker-archive.tar" ]; then
  log "building test images"
  (cd "$ROOT" && cargo test -p shoal-testkit --test testkit images_and_archives >&2)
fi

W=$(mktemp -d /tmp/mh.XXXXXX)
chmod 755 "$W"
mkdir -p "$W/res"
ID=$(basename "$W" | tr -dc 'a-z0-9' | tail -c 5)
LAB=msh$ID                      # shoal lab name (netns shoal-$LAB-*)
NET3=10.95.0                    # shoal lab: mgr1 .1, wrk1 .2, host link .254
DNET3=10.94.0                   # Docker side: mgr1 .1, wrk1 .2
LAB_UP=
cleanup() {
  set +eu
  trap - EXIT
  trap '' INT TERM   # finish the cleanup even on a second Ctrl-C
  dsl_cleanup
  if [ -n "$LAB_UP" ]; then
    log "shoal lab down --name $LAB"
    if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS"; for n in mgr1 wrk1; do cp "/run/shoal-lab/$LAB/$n/daemon.log" "$KEEP_LOGS/shoal-$n.log" 2>/dev/null; done; fi
    "$SHOAL" lab down --name "$LAB" >&2
  fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wrk prints its result as one JSON line (exact µs percentiles from its histogram)
cat >"$W/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_stdev_us":%.1f,"lat_max_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
EOF

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# curl until URL answers 200 (from NETNS, "-" = here); prints curl's last error on failure
wait_http() { # netns url timeout_s
  local ns=$1 url=$2 t=$3 err t0=$SECONDS pre=()
  [ "$ns" != - ] && pre=(nsenter "--net=$ns" --)
  while :; do
    if err=$("${pre[@]}" curl -sS -o /dev/null -m 3 -w '%{http_code}' "$url" 2>&1) && [ "$err" = 200 ]; then return 0; fi
    [ $((SECONDS - t0)) -ge "$t" ] && { echo "$err" | sed 's/^000$//; /^$/d' | tail -1; return 1; }
    sleep 0.5
  done
}
# one case: throughput and low-concurrency latency runs over the given targets (label=netns@url)
bench_case() { # engine case target...
  local e=$1 c=$2; shift 2
  log "$e, $c: wrk $TPUT_ARGS ($RUNS runs per target)"
  $MH bench "$W/res/$e-$c-tput.json" "$RUNS" "$TPUT_ARGS" "$W/report.lua" "$@" || echo "[$e] some $c runs failed" >&2
  log "$e, $c: wrk $LAT_ARGS ($RUNS runs per target)"
  $MH bench "$W/res/$e-$c-lat.json" "$RUNS" "$LAT_ARGS" "$W/report.lua" "$@" || echo "[$e] some $c runs failed" >&2
}
# The task's processes (the container's init = nginx master, its children) and its shim (the
# container's parent), after checking that the shim belongs to this run (its command line names
# MARK: the lab's or the Docker side's directory): reniced to NICE, and exported with the engine
# daemon(s) of the task's node as MESH_PIDS, whose CPU time mesh_helper.py counts per request.
task_pids() { # engine pid-of-container-init mark daemon-pid...
  local e=$1 pid=$2 mark=$3 shim pids
  shift 3
  shim=$(ps -o ppid= -p "$pid" | tr -d ' ')
  if ! tr '\0' ' ' <"/proc/$shim/cmdline" 2>/dev/null | grep -qF -- "$mark"; then
    echo "the task's parent ($shim) is not this run's shim: not reniced, CPU per request not counted" >>"$W/res/$e-notes.txt"
    export MESH_PIDS=
    return 0
  fi
  pids="$pid $(pgrep -P "$pid" | tr '\n' ' ')$shim"
  if [ "$MESH_NICE" != 0 ]; then
    # shellcheck disable=SC2086
    renice -n "$MESH_NICE" -p $pids >/dev/null
    echo "nice $MESH_NICE for wrk and the task's processes: $(ps -o comm= -p "${pids// /,}" | tr '\n' ' ')(pids $pids)" >>"$W/res/$e-notes.txt"
  fi
  export MESH_PIDS="$pids $*"
  echo "CPU per request counts wrk, ksoftirqd and: $(ps -o comm= -p "${MESH_PIDS// /,}" | tr '\n' ' ')" >>"$W/res/$e-notes.txt"
}
path_note() { # engine netns dst: the route (device, MTU) the client takes to dst
  local dev mtu
  dev=$(nsenter "--net=$2" -- ip -o route get "$3" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
  # (not /sys/class/net: nsenter --net does not remount sysfs, it shows the host's devices)
  mtu=$(nsenter "--net=$2" -- ip -o link show dev "$dev" | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
  echo "$(basename "$2") → $3: dev $dev, MTU $mtu"
}

LOAD_S0=$(loadavg)
# ================================================================================== shoal
sdk() { local n=$1; shift; $CLI -H "unix:///run/shoal-lab/$LAB/$n/docker.sock" "$@"; }
NS_M=/run/netns/shoal-$LAB-mgr1
NS_W=/run/netns/shoal-$LAB-wrk1
log "shoal lab up --name $LAB --managers 1 --workers 1 --subnet $NET3.0/24"
LAB_UP=1
"$SHOAL" lab up --name "$LAB" --managers 1 --workers 1 --subnet "$NET3.0/24" >"$W/lab-up.txt"
for n in mgr1 wrk1; do sdk "$n" load -i "$IMGDIR/nginx/docker-archive.tar" >/dev/null; done
sdk mgr1 service create -d -q --name web --constraint node.role==worker --replicas 1 --publish "$PORT:80" nginx >/dev/null
$MH task "/run/shoal-lab/$LAB/mgr1/docker.sock" web 60 "$W/res/shoal-task.json" >&2
TIP=$(python3 -c "import json;print(json.load(open('$W/res/shoal-task.json'))['ingress_ip'])")
task_pids shoal "$(sdk wrk1 inspect -f '{{.State.Pid}}' "$(sdk wrk1 ps -q | head -1)")" "/run/shoal-lab/$LAB/" \
  "$(python3 -c "import json;print([n['pid'] for n in json.load(open('/run/shoal-lab/$LAB/lab.json'))['nodes'] if n['name']=='wrk1'][0])")"
HOSTLINK=$(python3 -c "import json;h=json.load(open('/run/shoal-lab/$LAB/lab.json')).get('host_link');print(h['addr'] if h else '')")
for probe in "$NS_W http://$NET3.2:$PORT/" "$NS_W http://$TIP:80/" "$NS_M http://$NET3.1:$PORT/" "$NS_M http://$TIP:80/"; do
  # shellcheck disable=SC2086
  err=$(wait_http $probe 30) || { echo "shoal: no answer from ${probe#* } in ${probe%% *}: $err" >>"$W/res/shoal-error.txt"; }
done
{
  path_note shoal "$NS_W" "$TIP"
  path_note shoal "$NS_M" "$TIP"
  echo "conntrack entries before the runs: wrk1 $(nsenter --net="$NS_W" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null), mgr1 $(nsenter --net="$NS_M" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null)"
} >>"$W/res/shoal-notes.txt"
# the wrk1 → wrk1:8001 connections are locally generated: DNAT in the nat OUTPUT hook
bench_case shoal local "published=$NS_W@http://$NET3.2:$PORT/" "direct=$NS_W@http://$TIP:80/"
# mgr1 → mgr1:8001: DNAT in OUTPUT, masquerade to mgr1's ingress address, VXLAN to wrk1
bench_case shoal remote "published=$NS_M@http://$NET3.1:$PORT/" "direct=$NS_M@http://$TIP:80/"
if [ -n "$HOSTLINK" ] && wait_http - "http://$NET3.1:$PORT/" 10 >/dev/null && wait_http - "http://$NET3.2:$PORT/" 10 >/dev/null; then
  # the host ($HOSTLINK on the lab bridge) is outside: DNAT in PREROUTING, forwarded
  bench_case shoal outside "via-wrk1=-@http://$NET3.2:$PORT/" "via-mgr1=-@http://$NET3.1:$PORT/"
else
  echo "outside case skipped: no host link into the lab (another route to $NET3.0/24 on this host?) or no answer through it" >>"$W/res/shoal-notes.txt"
fi
echo "conntrack entries after the runs: wrk1 $(nsenter --net="$NS_W" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null), mgr1 $(nsenter --net="$NS_M" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null)" >>"$W/res/shoal-notes.txt"
LOAD_S1=$(loadavg)
log "shoal lab down --name $LAB"
if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS"; for n in mgr1 wrk1; do cp "/run/shoal-lab/$LAB/$n/daemon.log" "$KEEP_LOGS/shoal-$n.log"; done; fi
"$SHOAL" lab down --name "$LAB" >&2
LAB_UP=

# ================================================================================== Docker
# In a subshell: a failure stops only the Docker side (reason in res/docker-error.txt), and the
# subshell removes what it created before it returns (the EXIT trap; dsl_cleanup is idempotent).
docker_side() {
  set -euo pipefail
  local ERR=$W/res/docker-error.txt n c ns sbox addr err TIP
  fail() { echo "$*" >>"$ERR"; echo "[docker] $*" >&2; exit 1; }
  trap dsl_cleanup EXIT
  trap 'exit 130' INT TERM
  dsl_init "$W/d" "mhd$ID" "$DNET3" mgr1 wrk1
  err=$(dsl_check) || fail "$err"
  dsl_net_up
  for n in mgr1 wrk1; do
    log "[docker] dockerd $n (${DSL_ADDR[$n]})"
    dsl_start_dockerd "$n" || fail "dockerd of $n did not start: $(tail -3 "$DSL_D/$n.log" | tr '\n' ' ')"
  done
  dsl_dk mgr1 version --format 'dockerd {{.Server.Version}} (API {{.Server.APIVersion}})' >"$W/res/docker-version.txt" || true
  err=$(dsl_swarm) || fail "$err"
  for n in mgr1 wrk1; do dsl_dkt "$n" 120 load -i "$IMGDIR/nginx/docker-archive.tar" >/dev/null || fail "docker load nginx on $n failed"; done
  dsl_dkt mgr1 60 service create -d -q --name web --constraint node.role==worker --replicas 1 --publish "$PORT:80" nginx >/dev/null 2>"$W/docker-create.txt" \
    || fail "service create failed: $(tr '\n' ' ' <"$W/docker-create.txt")"
  $MH task "$(dsl_sock mgr1)" web 120 "$W/res/docker-task.json" >&2 || fail "no running task with an ingress address after 120 s"
  TIP=$(python3 -c "import json;print(json.load(open('$W/res/docker-task.json'))['ingress_ip'])")
  task_pids docker "$(dsl_dk wrk1 inspect -f '{{.State.Pid}}' "$(dsl_dk wrk1 ps -q | head -1)")" "$DSL_D/" \
    "${DSL_PID[wrk1]}" $(pgrep -f -- "--config $DSL_D/wrk1/x/containerd/containerd.toml" || true)
  for c in local remote; do
    n=wrk1; [ "$c" = remote ] && n=mgr1
    ns=/run/netns/$DSL_P-$n
    addr=${DSL_ADDR[$n]}
    # Docker's nodes have no address on the ingress overlay themselves: it lives in the
    # ingress_sbox namespace (the mesh's load balancer), which is where direct access works from.
    sbox=$DSL_D/$n/x/netns/ingress_sbox
    [ -e "$sbox" ] || fail "no ingress_sbox namespace on $n ($sbox)"
    err=$(wait_http "$sbox" "http://$TIP:80/" 30) || fail "direct $TIP:80 from $n's ingress_sbox: $err"
    if err=$(wait_http "$ns" "http://$addr:$PORT/" 20); then
      echo "$n: the published port answers" >>"$W/res/docker-notes.txt"
      bench_case docker "$c" "published=$ns@http://$addr:$PORT/" "direct=$sbox@http://$TIP:80/"
    else
      echo "${err:-no answer} ($n → $addr:$PORT, retried for 20 s)" >"$W/res/docker-$c-published-fail.txt"
      bench_case docker "$c" "direct=$sbox@http://$TIP:80/"
    fi
    path_note docker "$sbox" "$TIP" >>"$W/res/docker-notes.txt"
    echo "$n: $(nsenter --net="$ns" iptables -t nat -S 2>/dev/null | grep -c -- "--dport $PORT") iptables nat rule(s) for port $PORT in the node's namespace (Docker's DOCKER-INGRESS DNAT), $(nsenter --net="$sbox" iptables -t mangle -S 2>/dev/null | grep -c -- "--dport $PORT") mangle/fwmark rule(s) in ingress_sbox" >>"$W/res/docker-notes.txt"
  done
  # what dockerd says about its load balancer (IPVS)
  sed -n 's/^time="[^"]*" //p' "$DSL_D"/mgr1.log "$DSL_D"/wrk1.log | grep -i -E 'ipvs|ip_vs|net\.ipv4\.vs|loadbalanc' \
    | sed 's/ error="open [^"]*"//' | sort | uniq -c | sed 's/^ *\([0-9]*\) \(.*\)/\2 (×\1)/' >"$W/res/docker-log-excerpt.txt" || true
}

LOAD_D0= LOAD_D1=
if [ -z "${SKIP_DOCKER:-}" ]; then
  log "Docker Swarm (dockerd 20.10)"
  LOAD_D0=$(loadavg)
  # not `(docker_side) || …`: in that context bash ignores set -e inside the subshell
  set +e
  (docker_side)
  rc=$?
  set -e
  [ "$rc" = 0 ] || echo "docker side failed (rc $rc, see the summary)" >&2
  [ "$rc" = 130 ] && exit 130
  LOAD_D1=$(loadavg)
fi

cat >"$W/res/meta.json" <<EOF
{"runs": $RUNS, "tput_args": "$TPUT_ARGS", "lat_args": "$LAT_ARGS", "nice": $MESH_NICE,
 "load_shoal": "$LOAD_S0 → $LOAD_S1", "load_docker": "${LOAD_D0:-n/a}${LOAD_D1:+ → $LOAD_D1}",
 "wrk": "$(wrk -v 2>&1 | head -1 | tr -d '"')", "docker_version": "$(cat "$W/res/docker-version.txt" 2>/dev/null)"}
EOF
$MH summary "$W" "${OUT_DIR:-$HERE/results}"
