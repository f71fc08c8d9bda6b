#!/usr/bin/env bash
# The main job: build shoal, start the daemon in its own network namespace, and run containers
# through the stock docker CLI. Leaves nothing behind when it ends (Ctrl-C or done).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "run the demo as root (sudo $0)" >&2; exit 1; fi
scripts/deps.sh
cargo build --release
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/shoal"
work=$(mktemp -d /tmp/shoal-demo.XXXXXX)
ns=shoal-demo-$$
sock="unix://$work/shoal.sock"
ip netns add "$ns"
ip -n "$ns" link set lo up
cleanup() {
  set +e
  docker -H "$sock" ps -aq 2>/dev/null | xargs -r docker -H "$sock" rm -f >/dev/null 2>&1
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
nsenter --net="/run/netns/$ns" "$bin" daemon -H "$sock" --data-root "$work/data" --exec-root "$work/run" >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 50); do docker -H "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
export DOCKER_HOST="$sock"
set -x
docker version
# An image from Debian's busybox-static, imported as a rootfs tarball.
mkdir -p "$work/rootfs/bin" "$work/rootfs/www" "$work/rootfs/etc" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/rootfs/etc/passwd"
echo 'hello from a shoal container' >"$work/rootfs/www/index.html"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
docker import "$work/rootfs.tar" demo/busybox:latest
docker run --rm demo/busybox echo "hello from shoal"
docker run -d --name web -p 8080:80 demo/busybox httpd -f -p 80 -h /www
docker ps
sleep 0.5
nsenter --net="/run/netns/$ns" curl -s http://127.0.0.1:8080/
docker exec web cat /www/index.html
docker logs web
docker rm -f web
