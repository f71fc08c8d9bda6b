#!/usr/bin/env python3
"""Helpers for bench/nodeloss.sh (stdlib only). API calls go through the manager's unix socket.

  nodeloss_helper.py wait-nodes SOCK N TIMEOUT_S       -> waits until N nodes are Ready
  nodeloss_helper.py wait-service SOCK NAME N TIMEOUT_S [NODE...]
      waits until N tasks of service NAME run (desired and observed running); with NODEs, until
      each of those node hostnames runs at least one of them
  nodeloss_helper.py loss SOCK NAME VICTIM_HOSTNAME PID SIGNAL OUT.json
      t0; kill -SIGNAL PID; polls (every 20 ms) until the victim node is down (t_down) and until
      the service again has its desired number of running tasks, none on the victim (t_run)
  nodeloss_helper.py traffic NETNS IFACE SECONDS OUT.json -> bytes/s in and out of IFACE (idle)
  nodeloss_helper.py summary WORKDIR OUTDIR            -> prints the table, writes nodeloss-latest.md/json
      (with the lines of WORKDIR/res/ENGINE-error.txt, if any, e.g. why the Docker side stopped)
"""
import datetime
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from swarm_helper import Api, q  # noqa: E402

POLL = 0.02


def nodes(api):
    return api.call("GET", "/nodes")


def running_tasks(api, name):
    tasks = api.call("GET", "/tasks" + q({"service": [name]}))
    return [t for t in tasks if t.get("DesiredState") == "running" and t.get("Status", {}).get("State") == "running"]


def hostnames(api):
    return {n["ID"]: n.get("Description", {}).get("Hostname", "") for n in nodes(api)}


def cmd_wait_nodes(sock, n, timeout):
    api = Api(sock)
    deadline = time.time() + float(timeout)
    while time.time() < deadline:
        ready = [x for x in nodes(api) if x.get("Status", {}).get("State") == "ready"]
        if len(ready) >= int(n):
            return 0
        time.sleep(0.1)
    print(f"only {len(ready)} of {n} nodes ready after {timeout}s", file=sys.stderr)
    return 1


def cmd_wait_service(sock, name, n, timeout, *want_nodes):
    api = Api(sock)
    deadline = time.time() + float(timeout)
    while time.time() < deadline:
        tasks = running_tasks(api, name)
        names = hostnames(api)
        on = {names.get(t.get("NodeID"), "") for t in tasks}
        if len(tasks) >= int(n) and all(w in on for w in want_nodes):
            return 0
        time.sleep(0.1)
    print(f"service {name}: not {n} running tasks on {want_nodes} after {timeout}s", file=sys.stderr)
    return 1


def cmd_loss(sock, name, victim, pid, sig, out):
    api = Api(sock)
    ids = [i for i, h in hostnames(api).items() if h == victim]
    if len(ids) != 1:
        print(f"no single node named {victim}", file=sys.stderr)
        return 1
    vid = ids[0]
    want = api.call("GET", f"/services/{name}")["Spec"]["Mode"]["Replicated"]["Replicas"]
    t0 = time.monotonic()
    os.kill(int(pid), getattr(signal, "SIG" + sig))
    t_down = t_run = None
    deadline = t0 + 120
    while time.monotonic() < deadline and (t_down is None or t_run is None):
        now = time.monotonic()
        if t_down is None:
            n = api.call("GET", f"/nodes/{vid}")
            if n.get("Status", {}).get("State") == "down":
                t_down = now - t0
        if t_run is None:
            tasks = [t for t in running_tasks(api, name) if t.get("NodeID") != vid]
            if len(tasks) >= want:
                t_run = now - t0
        time.sleep(POLL)
    res = {"signal": sig, "down_s": t_down, "running_elsewhere_s": t_run}
    with open(out, "w") as f:
        json.dump(res, f)
    print(json.dumps(res))
    return 0 if t_down is not None and t_run is not None else 1


def link_bytes(netns, iface):
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", iface], check=True, capture_output=True, text=True).stdout
    st = json.loads(out)[0]["stats64"]
    return st["rx"]["bytes"], st["tx"]["bytes"], st["rx"]["packets"], st["tx"]["packets"]


def cmd_traffic(netns, iface, seconds, out):
    a = link_bytes(netns, iface)
    time.sleep(float(seconds))
    b = link_bytes(netns, iface)
    s = float(seconds)
    res = {
        "rx_Bps": (b[0] - a[0]) / s,
        "tx_Bps": (b[1] - a[1]) / s,
        "rx_pps": (b[2] - a[2]) / s,
        "tx_pps": (b[3] - a[3]) / s,
        "seconds": s,
    }
    with open(out, "w") as f:
        json.dump(res, f)
    print(json.dumps(res))
    return 0


def load_runs(workdir, engine, sig):
    runs = []
    for p in sorted(glob.glob(f"{workdir}/res/{engine}-loss-{sig}-*.json")):
        with open(p) as f:
            runs.append(json.load(f))
    return runs


def cmd_summary(workdir, outdir):
    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    def f(v, unit="s", nd=2):
        return "n/a" if v is None else f"{v:.{nd}f} {unit}".strip()

    engines = [e for e in ("shoal", "docker") if glob.glob(f"{workdir}/res/{e}-loss-*.json")]
    rows = []
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "engines": {}}
    for e in engines:
        er = {}
        for sig, label in (("KILL", "kill -9 of the worker's daemon"), ("STOP", "worker frozen (SIGSTOP: no FIN, heartbeats stop)")):
            runs = load_runs(workdir, e, sig)
            if not runs:
                continue
            d = med([r["down_s"] for r in runs])
            r_ = med([r["running_elsewhere_s"] for r in runs])
            er[sig] = {"runs": runs, "down_median_s": d, "running_median_s": r_}
            all_d = ", ".join(f(r["down_s"], "", 2) for r in runs)
            all_r = ", ".join(f(r["running_elsewhere_s"], "", 2) for r in runs)
            rows.append(f"| {e} | {label} | {f(d)} ({all_d}) | {f(r_)} ({all_r}) |")
        tp = f"{workdir}/res/{e}-traffic.json"
        if os.path.exists(tp):
            with open(tp) as fh:
                er["traffic"] = json.load(fh)
        info = f"{workdir}/res/{e}-period.txt"
        if os.path.exists(info):
            er["heartbeat_period"] = open(info).read().strip()
        result["engines"][e] = er
    lines = [
        "# Node loss: detection and rescheduling (bench/nodeloss.sh)",
        "",
        f"Run {result['date']}. Three nodes (1 manager, 2 workers, one network namespace each);",
        "`service create --constraint node.role==worker --replicas 2` (one task per worker), then the",
        "worker's daemon is killed or frozen. Detection = the manager reports the node `down`;",
        "rescheduled = 2 tasks running again, none on the lost node. Median (all runs). Default settings.",
        "",
        "| engine | how the node is lost | marked down after | tasks running elsewhere after |",
        "|---|---|---|---|",
        *rows,
        "",
        "Control-plane traffic per worker at rest (bytes/s on its link, both directions, idle swarm):",
        "",
        "| engine | heartbeat period | in (B/s) | out (B/s) | packets/s in+out |",
        "|---|---|---|---|---|",
    ]
    for e, er in result["engines"].items():
        t = er.get("traffic")
        if t:
            lines.append(
                f"| {e} | {er.get('heartbeat_period', '?')} | {t['rx_Bps']:.0f} | {t['tx_Bps']:.0f} | {t['rx_pps'] + t['tx_pps']:.1f} |"
            )
    errors = {}
    for e in ("shoal", "docker"):
        ep = f"{workdir}/res/{e}-error.txt"
        if os.path.exists(ep):
            errors[e] = open(ep).read().strip()
    if errors:
        result["errors"] = errors
        lines += ["", "Errors (the runs above may be incomplete):", ""]
        for e, msg in errors.items():
            lines += [f"- {e}: {m}" for m in msg.splitlines() if m.strip()]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(outdir, exist_ok=True)
    with open(f"{outdir}/nodeloss-latest.md", "w") as fh:
        fh.write(text)
    with open(f"{outdir}/nodeloss-latest.json", "w") as fh:
        json.dump(result, fh, indent=2)
    return 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "wait-nodes": cmd_wait_nodes,
        "wait-service": cmd_wait_service,
        "loss": cmd_loss,
        "traffic": cmd_traffic,
        "summary": cmd_summary,
    }[cmd]
    sys.exit(fn(*args))


if __name__ == "__main__":
    main()
