#!/usr/bin/env bash
# Dashboard page latency: p50/p99 of each page (and of a live-region fragment) served by the
# manager of a 3-node `shoal lab` (1 manager, 2 workers) with a 6-replica service (including the
# page of a task on a worker, whose container record comes from that node), measured from
# the host over the lab's host link with curl (one fresh connection per request, as a browser
# opening a page; curl's own %{time_total}, so process start-up is not counted). The issue's
# target is ≤ 100 ms per page. Run as root from anywhere:
#   sudo bench/dashboard.sh
# Env: REQUESTS (200 per page) SKIP_BUILD=1 OUT_DIR=DIR (default bench/results)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/common.sh" # log
REQUESTS=${REQUESTS:-200}
OUT_DIR=${OUT_DIR:-$HERE/results}
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
for b in curl python3 docker; do command -v $b >/dev/null || { echo "missing $b (scripts/deps.sh installs it)" >&2; exit 1; }; done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SHOAL=$TARGET/release/shoal
if [ -z "${SKIP_BUILD:-}" ]; then
  log "cargo build --release -p shoal"
  (cd "$ROOT" && cargo build --release -p shoal >&2)
fi
IMGDIR=$TARGET/test-images/v1/images
# whoami's image dir is named after a hash of its binary (whoami-<hash>)
WHOAMI=$(ls -d "$IMGDIR"/whoami-*/docker-archive.tar 2>/dev/null | head -1 || true)
if [ -z "$WHOAMI" ]; then
  log "building test images"
  (cd "$ROOT" && cargo test -p shoal-testkit --test testkit images_and_archives >&2)
  WHOAMI=$(ls -d "$IMGDIR"/whoami-*/docker-archive.tar | head -1)
fi

W=$(mktemp -d /tmp/dsh.XXXXXX)
ID=$(basename "$W" | tr -dc 'a-z0-9' | tail -c 5)
LAB=dsh$ID
NET3=10.93.0
LAB_UP=
cleanup() {
  set +eu
  trap - EXIT
  trap '' INT TERM
  if [ -n "$LAB_UP" ]; then
    log "shoal lab down --name $LAB"
    "$SHOAL" lab down --name "$LAB" >&2
  fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sdk() { local n=$1; shift; docker -H "unix:///run/shoal-lab/$LAB/$n/docker.sock" "$@"; }
log "shoal lab up --name $LAB --managers 1 --workers 2 --subnet $NET3.0/24"
LAB_UP=1
"$SHOAL" lab up --name "$LAB" --managers 1 --workers 2 --subnet "$NET3.0/24" >"$W/lab-up.txt"
for n in mgr1 wrk1 wrk2; do sdk "$n" load -i "$WHOAMI" >/dev/null; done
sdk mgr1 service create -q --name web --replicas 6 --publish 8080:80 whoami >/dev/null
CRED=$("$SHOAL" dashboard credentials -H "unix:///run/shoal-lab/$LAB/mgr1/docker.sock")
BASE=http://$NET3.1:9000
for _ in $(seq 1 100); do curl -s -o /dev/null -m 2 "$BASE/login" && break; sleep 0.2; done
JAR=$W/cookies
code=$(curl -s -o /dev/null -w '%{http_code}' -c "$JAR" --data-urlencode "credential=$CRED" "$BASE/login")
[ "$code" = 303 ] || { echo "login failed: HTTP $code" >&2; exit 1; }
SVC=$(sdk mgr1 service inspect web --format '{{.ID}}')
CTR=$(sdk mgr1 ps -q | head -1)
# a task on a worker: its page reads the container's record from that node
RTASK=$(sdk mgr1 service ps web -q --filter desired-state=running --filter node=wrk1 | head -1)

PAGES=(/ /visualizer "/visualizer?fragment=1" /nodes /services "/services/$SVC" /services/new /containers "/containers/$CTR" "/tasks/$RTASK" /images /networks /events /settings /login)
log "$REQUESTS requests per page"
for p in "${PAGES[@]}"; do
  curl -s -o /dev/null -b "$JAR" "$BASE$p" # warm-up
  for _ in $(seq 1 "$REQUESTS"); do
    curl -s -o /dev/null -b "$JAR" -w '%{http_code} %{time_total}\n' "$BASE$p"
  done >"$W/$(echo "$p" | tr '/?=' '___').txt"
done

mkdir -p "$OUT_DIR"
python3 - "$W" "$OUT_DIR/dashboard.md" "$REQUESTS" "${PAGES[@]}" <<'PY'
import sys, datetime
w, out, n, pages = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def pct(v, q):
    v = sorted(v); return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]
rows, worst = [], 0.0
for p in pages:
    f = w + "/" + p.replace("/", "_").replace("?", "_").replace("=", "_") + ".txt"
    codes, times = set(), []
    for line in open(f):
        c, t = line.split(); codes.add(c); times.append(float(t) * 1000)
    p50, p99 = pct(times, 50), pct(times, 99)
    worst = max(worst, p99)
    label = p if len(p) < 40 else p[:37] + "…"
    rows.append(f"| `{label}` | {','.join(sorted(codes))} | {p50:.2f} | {p99:.2f} | {max(times):.2f} |")
text = "\n".join([
    f"# Dashboard page latency ({datetime.datetime.now().isoformat(timespec='seconds')})", "",
    f"3-node `shoal lab` (release build), 6-replica service; {n} requests per page from the host, a new connection each (curl `time_total`).", "",
    "| page | HTTP | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|", *rows, "",
    f"Worst p99: {worst:.2f} ms (target: every page ≤ 100 ms).", ""])
open(out, "w").write(text)
print(text)
PY
