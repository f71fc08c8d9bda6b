#!/usr/bin/env bash
# The main job: the tutorial on a three-node shoal lab (one network namespace and one `shoal daemon`
# per node), driven by the stock docker CLI: swarm init, the printed join command on two workers,
# node ls, info, the web-alb service with the routing mesh, docker cp of a page into each task, and
# curl on every node's port 8001 answering from both tasks in turn. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "run the demo as root (sudo $0)" >&2; exit 1; fi
scripts/deps.sh
cargo build --release -p shoal
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target/release/shoal"
# No registry is reachable here: the nginx image is built from Debian's nginx package (and cached).
if [ ! -f "$target/test-images/v1/images/nginx/docker-archive.tar" ]; then
  cargo test -p shoal-testkit --test testkit images_and_archives
fi
lab=demo
work=$(mktemp -d /tmp/shoal-demo.XXXXXX)
cleanup() {
  set +e
  "$bin" lab down --name "$lab"
  rm -rf "$work"
}
trap cleanup EXIT
if "$bin" lab ls 2>/dev/null | grep -q "^lab $lab "; then
  echo "a lab called $lab exists already; remove it with: $bin lab down --name $lab" >&2
  trap - EXIT; rm -rf "$work"; exit 1
fi
"$bin" lab up --name "$lab" --managers 1 --workers 2 --no-swarm
sock() { echo "unix:///run/shoal-lab/$lab/$1/docker.sock"; }
addr() { python3 -c "import json;print([n['addr'] for n in json.load(open('/run/shoal-lab/$lab/lab.json'))['nodes'] if n['name']=='$1'][0])"; }
on() { local n=$1; shift; echo "+ [$n] docker $*" >&2; docker -H "$(sock "$n")" "$@"; }
for n in mgr1 wrk1 wrk2; do docker -H "$(sock "$n")" load -q -i "$target/test-images/v1/images/nginx/docker-archive.tar"; done

on mgr1 system info --format 'Swarm: {{.Swarm.LocalNodeState}}'
on mgr1 swarm init --advertise-addr "$(addr mgr1)" | tee "$work/init.txt"
join=$(grep -o 'docker swarm join --token [^ ]* [0-9.:]*' "$work/init.txt")
for n in wrk1 wrk2; do
  # shellcheck disable=SC2086  # the printed command, pasted as it is
  on "$n" ${join#docker }
done
on mgr1 node ls
on mgr1 info | sed -n '/^ Swarm:/,/^ Runtimes:/p'
on mgr1 service create --name web-alb --constraint node.role==worker --replicas 2 --publish 8001:80 nginx
on mgr1 service ps web-alb
for n in wrk1 wrk2; do
  on "$n" ps
  c=$(docker -H "$(sock "$n")" ps -q --filter label=com.docker.swarm.service.name=web-alb)
  mkdir -p "$work/$n"
  echo "<h1>Hello from $n</h1>" >"$work/$n/index.html"
  on "$n" cp "$work/$n/index.html" "$c:/usr/share/nginx/html/index.html"
done
# Any node's port 8001, the manager included: answers alternate between the two tasks.
for n in mgr1 wrk1 wrk2; do
  a=$(addr "$n")
  for _ in 1 2 3 4; do
    printf '+ curl http://%s:8001/  ->  ' "$a" >&2
    curl -sS --max-time 5 "http://$a:8001/"
  done
done
