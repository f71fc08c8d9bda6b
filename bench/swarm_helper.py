#!/usr/bin/env python3
"""Helpers for bench/swarm.sh (stdlib only). All API calls go through the engine's unix socket.

  swarm_helper.py wait-ready SOCK                      -> waits until this node is Ready (swarm)
  swarm_helper.py scale SOCK CLI REPLICAS NAME OUT.json [POLL_S]
      t0; `CLI -H unix://SOCK service create -d --replicas N --name NAME busybox sleep 3600`;
      polls GET /tasks (every POLL_S, default 0.1) until N tasks of the service are running; t1.
      Then records the service's and tasks' timestamps (CreatedAt = NEW, Status.Timestamp of the
      running state), removes the service, waits until its tasks and containers are gone (timed).
  swarm_helper.py create-latency SOCK N OUT.json [WARMUP]
      N sequential POST /services/create (distinct names, replicas 0) on one keep-alive
      connection, then N DELETE /services/{id}; per-request latencies.
  swarm_helper.py pipeline LOG SCALE.json...           -> per-task agent state times from shoal's
      debug log (`task state` lines), relative to the service's CreatedAt; prints JSON.
  swarm_helper.py summary WORKDIR OUTDIR               -> prints the table, writes swarm-latest.md/json
"""
import datetime
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helper import fmt, load, pct, ratio  # noqa: E402


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Api:
    def __init__(self, sock):
        self.sock = sock
        self.conn = UnixHTTPConnection(sock)
        v = self.call("GET", "/version", versioned=False)
        # shoal speaks 1.50; dockerd 20.10 at most 1.41.
        self.version = "v" + min(v.get("ApiVersion", "1.41"), "1.50", key=lambda s: tuple(int(x) for x in s.split(".")))

    def call(self, method, path, body=None, versioned=True, expect=(200, 201, 204)):
        url = f"/{self.version}{path}" if versioned else path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            try:
                self.conn.request(method, url, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (http.client.HTTPException, OSError):
                if attempt:
                    raise
                self.conn.close()
                self.conn = UnixHTTPConnection(self.sock)
        if r.status not in expect:
            raise RuntimeError(f"{method} {url}: {r.status} {raw[:300]!r}")
        return json.loads(raw) if raw.strip() else None


def q(filters):
    return "?filters=" + urllib.parse.quote(json.dumps(filters))


def parse_ts(s):
    """RFC 3339 with up to nanoseconds -> epoch seconds (float)."""
    if not s or s.startswith("0001-"):
        return None
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        return None
    base = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    tz = m.group(3)
    off = 0 if tz == "Z" else (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60) * (1 if tz[0] == "+" else -1)
    frac = float("0" + m.group(2)) if m.group(2) else 0.0
    return base.replace(tzinfo=datetime.timezone.utc).timestamp() - off + frac


def cmd_wait_ready(sock):
    api = Api(sock)
    for _ in range(600):
        info = api.call("GET", "/info")
        sw = info.get("Swarm") or {}
        if sw.get("LocalNodeState") == "active" and sw.get("ControlAvailable"):
            nodes = api.call("GET", "/nodes")
            if nodes and all((n.get("Status") or {}).get("State") == "ready" for n in nodes):
                return
        time.sleep(0.1)
    sys.exit("node did not become ready")


def running_count(api, name):
    tasks = api.call("GET", "/tasks" + q({"service": [name], "desired-state": ["running"]}))
    return sum(1 for t in tasks if (t.get("Status") or {}).get("State") == "running"), tasks


def cmd_scale(sock, cli, replicas, name, out, poll=0.1):
    replicas, poll = int(replicas), float(poll)
    api = Api(sock)
    argv = [cli, "-H", f"unix://{sock}", "service", "create", "-d", "--replicas", str(replicas),
            "--name", name, "busybox", "sleep", "3600"]
    res = {"replicas": replicas, "argv": argv[3:]}
    t0 = time.time()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    t_cli = time.time()
    res["cli_s"] = t_cli - t0
    res["cli_stderr"] = p.stderr.strip()[-500:]
    if p.returncode != 0:
        res["error"] = f"service create failed: {p.stderr.strip()}"
        json.dump(res, open(out, "w"), indent=1)
        sys.exit(res["error"])
    n, polls, deadline = 0, 0, t0 + 600
    while True:
        n, tasks = running_count(api, name)
        polls += 1
        if n >= replicas or time.time() > deadline:
            break
        time.sleep(poll)
    t1 = time.time()
    res["polls"] = polls
    res["wall_s"] = t1 - t0
    res["all_running"] = n >= replicas
    svc = api.call("GET", f"/services/{name}")
    res["t0"] = t0
    res["service_created"] = parse_ts(svc.get("CreatedAt"))
    res["tasks"] = [{"id": t["ID"], "created": parse_ts(t.get("CreatedAt")),
                     "state": (t.get("Status") or {}).get("State"),
                     "state_ts": parse_ts((t.get("Status") or {}).get("Timestamp"))} for t in tasks]
    # CLI cross-check (same thing `docker service ls` shows)
    ls = subprocess.run([cli, "-H", f"unix://{sock}", "service", "ls", "--filter", f"name={name}",
                         "--format", "{{.Replicas}}"], capture_output=True, text=True, timeout=60)
    res["service_ls_replicas"] = ls.stdout.strip()
    # remove + wait for tasks and containers to be gone
    t2 = time.time()
    api.call("DELETE", f"/services/{name}")
    gone = False
    while time.time() < t2 + 300:
        # (a service filter answers 404 once the service is gone: filter client-side by ID)
        tasks = [t for t in api.call("GET", "/tasks") if t.get("ServiceID") == svc["ID"]]
        conts = api.call("GET", "/containers/json?all=1&filters=" + urllib.parse.quote(
            json.dumps({"label": [f"com.docker.swarm.service.name={name}"]})))
        if not conts and not tasks:
            gone = True
            break
        time.sleep(0.1)
    res["remove_s"] = time.time() - t2
    res["removed_cleanly"] = gone
    json.dump(res, open(out, "w"), indent=1)
    print(f"  {name}: {n}/{replicas} running after {res['wall_s']*1e3:.0f} ms (CLI create {res['cli_s']*1e3:.0f} ms, "
          f"service ls {res['service_ls_replicas']!r}); removal {res['remove_s']*1e3:.0f} ms", file=sys.stderr)
    if not res["all_running"]:
        sys.exit("not all tasks running within 600 s")
    if not gone:
        sys.exit("service tasks/containers not gone within 300 s")


def cmd_create_latency(sock, n, out, warmup=5):
    n, warmup = int(n), int(warmup)
    api = Api(sock)
    tag = f"{os.getpid()}"
    spec = lambda i: {"Name": f"lat{tag}-{i}", "Labels": {"bench": "swarm-lat"},
                      "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Command": ["sleep", "3600"]}},
                      "Mode": {"Replicated": {"Replicas": 0}}}
    ids, lat_create, lat_rm = [], [], []
    for i in range(-warmup, n):
        t = time.perf_counter()
        r = api.call("POST", "/services/create", spec(i))
        d = time.perf_counter() - t
        if i >= 0:
            lat_create.append(d)
        ids.append((i, r["ID"]))
    for i, sid in ids:
        t = time.perf_counter()
        api.call("DELETE", f"/services/{sid}")
        d = time.perf_counter() - t
        if i >= 0:
            lat_rm.append(d)
    left = api.call("GET", "/services" + q({"label": ["bench=swarm-lat"]}))
    res = {"n": n, "warmup": warmup, "api": api.version, "create_s": lat_create, "remove_s": lat_rm,
           "left_over": len(left or [])}
    json.dump(res, open(out, "w"), indent=1)
    print(f"  create p50 {pct(lat_create, .5)*1e3:.2f} ms p99 {pct(lat_create, .99)*1e3:.2f} ms; "
          f"remove p50 {pct(lat_rm, .5)*1e3:.2f} ms p99 {pct(lat_rm, .99)*1e3:.2f} ms", file=sys.stderr)


LOG_RE = re.compile(r"^(\S+Z)\s+\w+\s+shoal_agent::controller: task state task=(\w+) state=(\w+)")


def cmd_pipeline(log, scale_files):
    """Per run: ms from service CreatedAt to each agent-reported state, median/max over tasks."""
    states = {}
    with open(log, errors="replace") as f:
        for line in f:
            m = LOG_RE.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
            if m:
                ts = parse_ts(m.group(1))
                states.setdefault(m.group(2), {}).setdefault(m.group(3), ts)
    out = []
    for sf in scale_files:
        r = load(sf)
        if not r or not r.get("service_created"):
            continue
        base = r["service_created"]
        per = {}
        for t in r["tasks"]:
            for st, ts in states.get(t["id"], {}).items():
                per.setdefault(st, []).append((ts - base) * 1e3)
        out.append({st: {"median_ms": pct(v, .5), "max_ms": max(v), "n": len(v)} for st, v in per.items()})
    print(json.dumps(out))


def api_stages(r):
    """From the API timestamps: ms from t0 (just before the CLI) to service CreatedAt, to each
    task's CreatedAt (NEW) and to its running-state timestamp."""
    t0, sc = r.get("t0"), r.get("service_created")
    if t0 is None or sc is None:
        return None
    created = [t["created"] for t in r["tasks"] if t.get("created")]
    running = [t["state_ts"] for t in r["tasks"] if t.get("state") == "running" and t.get("state_ts")]
    rel = lambda xs: [(x - t0) * 1e3 for x in xs]
    return {"service_created_ms": (sc - t0) * 1e3,
            "task_new_ms": {"first": min(rel(created), default=None), "median": pct(rel(created), .5), "last": max(rel(created), default=None)},
            "task_running_ms": {"first": min(rel(running), default=None), "median": pct(rel(running), .5), "last": max(rel(running), default=None)},
            "cli_ms": r["cli_s"] * 1e3, "wall_ms": r["wall_s"] * 1e3}


def cmd_summary(workdir, outdir):
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": os.uname().nodename,
           "kernel": os.uname().release, "cpus": os.cpu_count(), "engines": {}}
    la = load(f"{workdir}/res/loadavg.json")
    if la:
        res["loadavg"] = la
    res["scheduler_bench"] = load(f"{workdir}/res/cargo-bench.json")
    for e in ("shoal", "docker"):
        r = {"version": load(f"{workdir}/res/{e}-info.json")}
        runs = []
        k = 1
        while os.path.exists(f"{workdir}/res/{e}-scale-{k}.json"):
            s = load(f"{workdir}/res/{e}-scale-{k}.json")
            if s:
                runs.append({"wall_s": s.get("wall_s"), "cli_s": s.get("cli_s"), "remove_s": s.get("remove_s"),
                             "all_running": s.get("all_running"), "service_ls": s.get("service_ls_replicas"),
                             "stages": api_stages(s) if s.get("all_running") else None,
                             "error": s.get("error")})
            k += 1
        ok = [x["wall_s"] for x in runs if x.get("all_running")]
        r["scale"] = {"runs": runs, "median_s": pct(ok, .5) if ok else None}
        lat = load(f"{workdir}/res/{e}-latency.json")
        if lat:
            c, d = lat["create_s"], lat["remove_s"]
            r["create_latency"] = {"n": lat["n"], "api": lat["api"], "p50_ms": pct(c, .5) * 1e3, "p90_ms": pct(c, .9) * 1e3,
                                   "p99_ms": pct(c, .99) * 1e3, "max_ms": max(c) * 1e3, "mean_ms": statistics.mean(c) * 1e3,
                                   "remove_p50_ms": pct(d, .5) * 1e3, "remove_p99_ms": pct(d, .99) * 1e3,
                                   "left_over": lat.get("left_over")}
        pl = load(f"{workdir}/res/{e}-pipeline.json")
        if pl:
            r["agent_pipeline"] = pl
        err = f"{workdir}/res/{e}-error.txt"
        if os.path.exists(err):
            r["error"] = open(err).read().strip()
        res["engines"][e] = r

    s, d = res["engines"]["shoal"], res["engines"]["docker"]

    def g(r, *path):
        for p in path:
            if not isinstance(r, dict) or p not in r or r[p] is None:
                return None
            r = r[p]
        return r

    def row(label, a, b, unit, nd=1, want=None):
        tgt = f" (target {want})" if want else ""
        return f"| {label} | {fmt(a, unit, nd)} | {fmt(b, unit, nd)} | {fmt(ratio(a, b), '', 3)}{tgt} |"

    def runs_txt(r):
        return " / ".join(fmt(x["wall_s"], "", 2) if x.get("all_running") else "fail" for x in g(r, "scale", "runs") or []) or "n/a"

    sb = res.get("scheduler_bench") or {}
    lines = [
        f"# shoal vs Docker swarm mode — {res['date']}",
        "",
        f"Host: {res['kernel']}, {res['cpus']} CPUs, load average at start {g(res, 'loadavg', 'start') or '?'}, "
        f"at end {g(res, 'loadavg', 'end') or '?'}. shoal: {g(s, 'version') or '?'}; docker: {g(d, 'version') or '?'}.",
        "Single-node swarm per engine, each daemon in its own netns (advertise 10.77.0.1 on a veth).",
        "",
        "| benchmark | shoal | docker | shoal/docker |",
        "|---|---|---|---|",
        row("`service create -d --replicas 30` → 30/30 running, median", g(s, "scale", "median_s"), g(d, "scale", "median_s"), " s", 2, "≤ 0.1"),
        f"| … individual runs (s) | {runs_txt(s)} | {runs_txt(d)} | |",
        row("`POST /services/create` (replicas 0) p50", g(s, "create_latency", "p50_ms"), g(d, "create_latency", "p50_ms"), " ms", 2),
        row("`POST /services/create` (replicas 0) p99", g(s, "create_latency", "p99_ms"), g(d, "create_latency", "p99_ms"), " ms", 2, "shoal ≤ 10 ms"),
        row("`POST /services/create` max", g(s, "create_latency", "max_ms"), g(d, "create_latency", "max_ms"), " ms", 2),
        row("`DELETE /services/{id}` p50", g(s, "create_latency", "remove_p50_ms"), g(d, "create_latency", "remove_p50_ms"), " ms", 2),
        row("`DELETE /services/{id}` p99", g(s, "create_latency", "remove_p99_ms"), g(d, "create_latency", "remove_p99_ms"), " ms", 2),
        "",
        f"Scheduler micro-benchmark (`cargo bench -p shoal-manager`, 10,000 tasks on 1,000 nodes): "
        f"best {fmt(sb.get('best_ms'), ' ms')}, mean {fmt(sb.get('mean_ms'), ' ms')} (target ≤ 1000 ms)"
        + (f" — {sb['error']}" if sb.get("error") else ""),
        "",
        "Where the time goes (ms since just before `docker service create`, per run; API timestamps):",
        "",
        "| engine run | CLI returns | service CreatedAt | task NEW first / median / last | task RUNNING first / median / last | 30/30 seen |",
        "|---|---|---|---|---|---|",
    ]
    for e, r in (("shoal", s), ("docker", d)):
        for i, x in enumerate(g(r, "scale", "runs") or [], 1):
            st = x.get("stages")
            if not st:
                continue
            tn, tr = st["task_new_ms"], st["task_running_ms"]
            lines.append(f"| {e} #{i} | {fmt(st['cli_ms'], '', 0)} | {fmt(st['service_created_ms'], '', 0)} | "
                         f"{fmt(tn['first'], '', 0)} / {fmt(tn['median'], '', 0)} / {fmt(tn['last'], '', 0)} | "
                         f"{fmt(tr['first'], '', 0)} / {fmt(tr['median'], '', 0)} / {fmt(tr['last'], '', 0)} | {fmt(st['wall_ms'], '', 0)} |")
    pl = g(s, "agent_pipeline")
    if pl:
        order = ["accepted", "preparing", "ready", "starting", "running"]
        lines += ["", "shoal agent (daemon debug log `task state`, ms since the service's CreatedAt, median / max over the 30 tasks):", "",
                  "| run | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
        for i, run in enumerate(pl, 1):
            cells = [f"{fmt(g(run, st, 'median_ms'), '', 0)} / {fmt(g(run, st, 'max_ms'), '', 0)}" for st in order]
            lines.append(f"| #{i} | " + " | ".join(cells) + " |")
    for e in ("shoal", "docker"):
        if g(res["engines"][e], "error"):
            lines += ["", f"**{e} errors:** " + res["engines"][e]["error"].replace("\n", "; ")]
    md = "\n".join(lines) + "\n"
    os.makedirs(outdir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("swarm-latest", f"swarm-{stamp}"):
        with open(f"{outdir}/{name}.md", "w") as f:
            f.write(md)
        with open(f"{outdir}/{name}.json", "w") as f:
            json.dump(res, f, indent=2)
    print(md)


def cmd_cargo_bench(text_file, out):
    txt = open(text_file, errors="replace").read()
    m = re.search(r"best ([\d.]+) ms, mean ([\d.]+) ms", txt)
    r = {"line": next((l for l in txt.splitlines() if l.startswith("scheduler:")), None)}
    if m:
        r.update(best_ms=float(m.group(1)), mean_ms=float(m.group(2)))
    else:
        r["error"] = "no result line (see cargo-bench.txt)"
    json.dump(r, open(out, "w"))


def main():
    a = sys.argv[1:]
    cmds = {"wait-ready": cmd_wait_ready, "scale": cmd_scale, "create-latency": cmd_create_latency,
            "summary": cmd_summary, "cargo-bench": cmd_cargo_bench}
    if a and a[0] == "pipeline":
        cmd_pipeline(a[1], a[2:])
    elif a and a[0] in cmds:
        cmds[a[0]](*a[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
