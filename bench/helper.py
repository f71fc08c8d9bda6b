#!/usr/bin/env python3
"""Helpers for bench/run.sh (stdlib only).

  helper.py mem ENGINE WORKDIR DAEMON_PID [EXTRA_PID...]  -> JSON {rss_kb, pss_kb, procs:[...]}
      Sums VmRSS (/proc/PID/status) and Pss (/proc/PID/smaps_rollup) over the daemon pid(s) plus
      the engine's shims: shoal -> `shoal shim ...` processes, docker -> containerd +
      containerd-shim-runc-v2 processes; a process counts only if its command line mentions
      WORKDIR (so nothing outside this benchmark run is ever measured). Container processes
      themselves (sleep, nginx) are never included.
  helper.py pids ENGINE WORKDIR                            -> the matching pids (for cleanup)
  helper.py summary WORKDIR OUTDIR                         -> prints the table, writes latest.md/json
"""
import glob
import json
import os
import statistics
import sys
import time


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def engine_pids(engine, workdir):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        argv = cmdline(d)
        if not argv or not any(workdir in a for a in argv):
            continue
        exe = os.path.basename(argv[0])
        if engine == "shoal" and exe in ("shoal", "shoal-shim") and len(argv) > 1 and argv[1] == "shim":
            out.append(int(d))
        elif engine == "docker" and exe in ("containerd", "containerd-shim-runc-v2"):
            out.append(int(d))
    return sorted(out)


def proc_mem(pid):
    rss = pss = None
    name = "?"
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line.split()[1]
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return name, rss or 0, pss or 0


def cmd_mem(engine, workdir, daemon_pids):
    pids = [int(p) for p in daemon_pids] + [p for p in engine_pids(engine, workdir) if str(p) not in daemon_pids]
    procs = []
    for p in pids:
        name, rss, pss = proc_mem(p)
        procs.append({"pid": p, "name": name, "rss_kb": rss, "pss_kb": pss})
    print(json.dumps({
        "rss_kb": sum(p["rss_kb"] for p in procs),
        "pss_kb": sum(p["pss_kb"] for p in procs),
        "procs": procs,
    }))


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def wrk_rps(path):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("Requests/sec:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, unit="", nd=1):
    if v is None:
        return "n/a"
    return f"{v:,.{nd}f}{unit}"


def cmd_summary(workdir, outdir):
    engines = ["shoal", "docker"]
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": os.uname().nodename,
           "kernel": os.uname().release, "cpus": os.cpu_count(), "engines": {}}
    for e in engines:
        r = {}
        info = load(f"{workdir}/res/{e}-info.json")
        r["version"] = info
        hf = load(f"{workdir}/res/{e}-run.json")
        if hf:
            t = hf["results"][0]["times"]
            r["run"] = {"n": len(t), "median_ms": pct(t, 0.5) * 1e3, "p90_ms": pct(t, 0.9) * 1e3,
                        "mean_ms": statistics.mean(t) * 1e3, "min_ms": min(t) * 1e3}
        idle = load(f"{workdir}/res/{e}-idle.json")
        if idle:
            r["idle"] = idle
        before = load(f"{workdir}/res/{e}-mem-before.json")
        after = load(f"{workdir}/res/{e}-mem-after.json")
        if before and after:
            n = 10
            r["per_container"] = {
                "rss_kb": (after["rss_kb"] - before["rss_kb"]) / n,
                "pss_kb": (after["pss_kb"] - before["pss_kb"]) / n,
                "before": before, "after": after,
            }
        http = {}
        rounds = {}
        for k in ("client_direct", "client_published", "local_direct", "local_published"):
            vals = [v for v in (wrk_rps(p) for p in sorted(glob.glob(f"{workdir}/res/{e}-wrk-{k}-*.txt"))) if v is not None]
            rounds[k] = vals
            http[k] = statistics.median(vals) if vals else None
        http["rounds"] = rounds
        # Ratios per round (published and direct measured back to back), then their median.
        def ratio_median(pub, direct):
            rs = [p / d for p, d in zip(rounds[pub], rounds[direct]) if d]
            return statistics.median(rs) if rs else None
        http["ratio_client"] = ratio_median("client_published", "client_direct")
        http["ratio_local"] = ratio_median("local_published", "local_direct")
        r["http"] = http
        err = f"{workdir}/res/{e}-error.txt"
        if os.path.exists(err):
            with open(err) as f:
                r["error"] = f.read().strip()
        res["engines"][e] = r

    s, d = res["engines"]["shoal"], res["engines"]["docker"]

    def g(r, *path):
        for p in path:
            if not isinstance(r, dict) or p not in r:
                return None
            r = r[p]
        return r

    def row(label, a, b, unit, nd=1, want=None, higher_better=False):
        rr = ratio(a, b)
        tgt = f" (target {want})" if want else ""
        return f"| {label} | {fmt(a, unit, nd)} | {fmt(b, unit, nd)} | {fmt(rr, '', 2)}{tgt} |"

    mib = lambda kb: None if kb is None else kb / 1024
    lines = [
        f"# shoal vs Docker Engine — {res['date']}",
        "",
        f"Host: {res['kernel']}, {res['cpus']} CPUs. shoal: {g(s, 'version') or '?'}; "
        f"docker: {g(d, 'version') or '?'}.",
        "",
        "| benchmark | shoal | docker | shoal/docker |",
        "|---|---|---|---|",
        row("`docker run --rm busybox true` median", g(s, "run", "median_ms"), g(d, "run", "median_ms"), " ms", 1, "≤ 0.25"),
        row("`docker run --rm busybox true` p90", g(s, "run", "p90_ms"), g(d, "run", "p90_ms"), " ms"),
        row("idle daemon RSS", mib(g(s, "idle", "rss_kb")), mib(g(d, "idle", "rss_kb")), " MiB"),
        row("idle daemon PSS", mib(g(s, "idle", "pss_kb")), mib(g(d, "idle", "pss_kb")), " MiB"),
        row("per-container RSS (daemon+shims)", mib(g(s, "per_container", "rss_kb")), mib(g(d, "per_container", "rss_kb")), " MiB", 2),
        row("per-container PSS (daemon+shims)", mib(g(s, "per_container", "pss_kb")), mib(g(d, "per_container", "pss_kb")), " MiB", 2),
        "",
        "| HTTP (wrk -t2 -c50 -d10s, nginx; median of the rounds, ratios per round then median) | shoal req/s | docker req/s |",
        "|---|---|---|",
    ]
    for k, label in (("client_direct", "client netns → container-IP:80 (direct)"),
                     ("client_published", "client netns → 10.77.0.1:8080 (published)"),
                     ("ratio_client", "ratio published/direct, client netns (shoal target ≥ 0.90)"),
                     ("local_direct", "daemon netns → container-IP:80 (direct)"),
                     ("local_published", "daemon netns → 127.0.0.1:8080 (published)"),
                     ("ratio_local", "ratio published/direct, daemon netns (shoal target ≥ 0.90)")):
        nd = 2 if k.startswith("ratio") else 0
        lines.append(f"| {label} | {fmt(g(s, 'http', k), '', nd)} | {fmt(g(d, 'http', k), '', nd)} |")
    for e in engines:
        if g(res["engines"][e], "error"):
            lines += ["", f"**{e} errors:** " + res["engines"][e]["error"].replace("\n", "; ")]
    for e in engines:
        pc = g(res["engines"][e], "per_container", "after", "procs")
        if pc:
            by = {}
            for p in pc:
                b = by.setdefault(p["name"], [0, 0, 0])
                b[0] += 1
                b[1] += p["rss_kb"]
                b[2] += p["pss_kb"]
            parts = ", ".join(f"{v[0]}×{k}: RSS {v[1]/1024:.1f} MiB / PSS {v[2]/1024:.1f} MiB" for k, v in by.items())
            lines += ["", f"{e} processes with 10 containers: {parts}"]
    md = "\n".join(lines) + "\n"
    os.makedirs(outdir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("latest", stamp):
        with open(f"{outdir}/{name}.md", "w") as f:
            f.write(md)
        with open(f"{outdir}/{name}.json", "w") as f:
            json.dump(res, f, indent=2)
    print(md)


def main():
    a = sys.argv[1:]
    if a and a[0] == "mem":
        cmd_mem(a[1], a[2], a[3:])
    elif a and a[0] == "pids":
        print(" ".join(str(p) for p in engine_pids(a[1], a[2])))
    elif a and a[0] == "summary":
        cmd_summary(a[1], a[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
