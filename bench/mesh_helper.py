#!/usr/bin/env python3
"""Helpers for bench/mesh.sh (stdlib only). API calls go through a manager's unix socket.

  mesh_helper.py task SOCK SERVICE TIMEOUT_S OUT.json
      waits until SERVICE has one running task; writes {"node": hostname, "ingress_ip": …, "task": id}
      (the address comes from the task's NetworksAttachments on the `ingress` network)
  mesh_helper.py bench OUT.json RUNS WRK_ARGS LUA TARGET...
      TARGET = label=NETNS@URL (NETNS: a path such as /run/netns/x, or "-" for this namespace).
      One 2 s warm-up per target, then RUNS rounds; each round runs every target once, in turn
      (the order is reversed every other round, so drift in the machine's load hits all targets
      alike). WRK_ARGS e.g. "-t2 -c32 -d10s". Writes per target the runs' wrk results (req/s,
      latency percentiles from wrk's histogram via the LUA `done` hook) and the load average.
  mesh_helper.py summary WORKDIR OUTDIR
      prints the table, writes OUTDIR/mesh-latest.{md,json} and mesh-YYYYMMDD-HHMMSS.{md,json}
"""
import datetime
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from swarm_helper import Api, q  # noqa: E402

RPS_TARGET = 0.90
ADDED_P99_TARGET_MS = 0.2
NOISY_P99_MS = 1.0  # direct p99 above this at -c1: the tail is CPU contention, the difference means little


# ------------------------------------------------------------------------------------------ task
def cmd_task(sock, service, timeout, out):
    api = Api(sock)
    deadline = time.time() + float(timeout)
    last = None
    while time.time() < deadline:
        tasks = api.call("GET", "/tasks" + q({"service": [service]}))
        run = [t for t in tasks if t.get("DesiredState") == "running" and t.get("Status", {}).get("State") == "running"]
        last = [(t.get("Status", {}).get("State"), t.get("Status", {}).get("Err")) for t in tasks]
        if run:
            t = run[0]
            ip = None
            for att in t.get("NetworksAttachments") or []:
                if att.get("Network", {}).get("Spec", {}).get("Name") == "ingress" and att.get("Addresses"):
                    ip = att["Addresses"][0].split("/")[0]
            node = api.call("GET", f"/nodes/{t['NodeID']}").get("Description", {}).get("Hostname", "")
            res = {"task": t["ID"], "node": node, "ingress_ip": ip}
            with open(out, "w") as f:
                json.dump(res, f)
            print(json.dumps(res))
            return 0 if ip else 1
        time.sleep(0.2)
    print(f"service {service}: no running task after {timeout}s (tasks: {last})", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------------- bench
def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_ns(pids):
    """CPU time so far (ns, precise: schedstat) of all threads of PIDS."""
    tot = 0
    for pid in pids:
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    tot += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return tot


def ksoftirqd_pids():
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        out.append(int(d))
            except OSError:
                pass
    return out


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_wrk(netns, url, wrk_args, lua):
    cmd = ["wrk", *wrk_args.split(), "--latency", "-s", lua, url]
    if netns != "-":
        cmd = ["nsenter", f"--net={netns}", "--", *cmd]
    nice = os.environ.get("MESH_NICE", "0")
    if nice != "0":
        cmd = ["nice", "-n", nice, *cmd]
    # CPU of everything that serves a request: wrk (this process' child), the task's processes and
    # its shim (MESH_PIDS, plus the engine's log consumer for Docker), ksoftirqd. This kernel has no
    # IRQ_TIME_ACCOUNTING, so softirq work done in a task's context is part of that task's time.
    # Unlike req/s it barely depends on how much CPU other users' jobs take meanwhile.
    pids = [int(x) for x in os.environ.get("MESH_PIDS", "").split()] + ksoftirqd_pids()
    c0, w0 = cpu_ns(pids), children_cpu_s()
    p = subprocess.run(cmd, capture_output=True, text=True)
    c1, w1 = cpu_ns(pids), children_cpu_s()
    res = None
    for line in p.stdout.splitlines():
        if line.startswith("WRKJSON "):
            res = json.loads(line[len("WRKJSON "):])
    if res is None:
        return {"error": (p.stderr or p.stdout).strip()[-300:] or f"wrk exited {p.returncode}", "cmd": " ".join(cmd)}
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6) if res["duration_us"] else None
    res["errors"] = sum(res[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    res["cpu_server_s"] = (c1 - c0) / 1e9
    res["cpu_wrk_s"] = w1 - w0
    res["cpu_us_per_req"] = (res["cpu_server_s"] + res["cpu_wrk_s"]) * 1e6 / res["requests"] if res["requests"] else None
    return res


def cmd_bench(out, runs, wrk_args, lua, *targets):
    tg = []
    for t in targets:
        label, rest = t.split("=", 1)
        netns, url = rest.split("@", 1)
        tg.append({"label": label, "netns": netns, "url": url, "runs": []})
    warm = " ".join(a for a in wrk_args.split() if not a.startswith("-d")) + " -d2s"
    for t in tg:
        w = run_wrk(t["netns"], t["url"], warm, lua)
        if "error" in w:
            print(f"  warm-up {t['label']} {t['url']}: {w['error']}", file=sys.stderr)
    res = {"wrk_args": wrk_args, "runs": int(runs), "load_before": loadavg(), "targets": tg}
    for r in range(int(runs)):
        order = tg if r % 2 == 0 else list(reversed(tg))
        for t in order:
            w = run_wrk(t["netns"], t["url"], wrk_args, lua)
            w["loadavg"] = loadavg()
            t["runs"].append(w)
            if "error" in w:
                print(f"  run {r + 1} {t['label']}: {w['error']}", file=sys.stderr)
            else:
                print(f"  run {r + 1} {t['label']:<10} {w['rps']:>9.0f} req/s  p50 {w['p50_us'] / 1e3:.3f} ms  "
                      f"p99 {w['p99_us'] / 1e3:.3f} ms  CPU {w['cpu_us_per_req']:.1f} µs/req  errors {w['errors']}", file=sys.stderr)
    res["load_after"] = loadavg()
    for t in tg:
        ok = [w for w in t["runs"] if "error" not in w]
        t["ok_runs"] = len(ok)
        if ok:
            t["rps_median"] = statistics.median(w["rps"] for w in ok)
            t["cpu_us_per_req_median"] = statistics.median(w["cpu_us_per_req"] for w in ok)
            for k in ("p50_us", "p90_us", "p99_us", "p999_us"):
                t[k.replace("_us", "_ms") + "_median"] = statistics.median(w[k] for w in ok) / 1e3
            t["errors"] = sum(w["errors"] for w in ok)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    return 0 if all(t.get("ok_runs") for t in tg) else 1


# --------------------------------------------------------------------------------------- summary
CASES = [
    ("local", "task on the receiving node", "client in wrk1's netns"),
    ("remote", "task on another node", "client in mgr1's netns"),
    ("outside", "from outside the cluster", "client on the lab's host link"),
]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fnum(v, nd=0, unit=""):
    return "n/a" if v is None else f"{v:,.{nd}f}{unit}"


def cmd_summary(workdir, outdir):
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "engines": {},
    }
    meta = load(f"{workdir}/res/meta.json") or {}
    res.update(meta)
    for e in ("shoal", "docker"):
        er = {"cases": {}}
        for c, _, _ in CASES:
            cr = {}
            for mode in ("tput", "lat"):
                b = load(f"{workdir}/res/{e}-{c}-{mode}.json")
                if b:
                    cr[mode] = b
            fail = f"{workdir}/res/{e}-{c}-published-fail.txt"
            if os.path.exists(fail):
                cr["published_fails"] = open(fail).read().strip()
            if cr:
                er["cases"][c] = cr
        for k in ("task", "info"):
            v = load(f"{workdir}/res/{e}-{k}.json")
            if v:
                er[k] = v
        for k in ("error", "log-excerpt", "notes"):
            p = f"{workdir}/res/{e}-{k}.txt"
            if os.path.exists(p):
                er[k] = open(p).read().strip()
        if er["cases"] or "error" in er:
            res["engines"][e] = er

    def tgt(b, label):
        for t in (b or {}).get("targets", []):
            if t["label"] == label:
                return t
        return None

    def ratio(a, b):
        return a / b if a is not None and b else None

    # compute the verdicts
    for e, er in res["engines"].items():
        for c, cr in er["cases"].items():
            v = {}
            # outside: no direct route to the overlay; mgr1's port (task remote) against wrk1's (task local)
            pl, dl = ("via-mgr1", "via-wrk1") if c == "outside" else ("published", "direct")
            tp, td = tgt(cr.get("tput"), pl), tgt(cr.get("tput"), dl)
            if tp and td:
                # per-round ratios (published and direct of one round ran back to back, so they saw
                # about the same background load); the verdict uses their median
                pr = [ratio(a.get("rps"), b.get("rps")) for a, b in zip(tp["runs"], td["runs"]) if "error" not in a and "error" not in b]
                v["rps_ratio_rounds"] = pr
                v["rps_ratio"] = statistics.median(pr) if pr else None
                v["rps_ratio_of_medians"] = ratio(tp.get("rps_median"), td.get("rps_median"))
                # CPU cost: direct µs/req ÷ published µs/req per round = the req/s ratio the CPU allows
                cr_ = [ratio(b.get("cpu_us_per_req"), a.get("cpu_us_per_req")) for a, b in zip(tp["runs"], td["runs"])
                       if "error" not in a and "error" not in b]
                v["cpu_ratio_rounds"] = cr_
                v["cpu_ratio"] = statistics.median(cr_) if cr_ else None
            lp, ld = tgt(cr.get("lat"), pl), tgt(cr.get("lat"), dl)
            if lp and ld and lp.get("p99_ms_median") is not None and ld.get("p99_ms_median") is not None:
                pairs = [(a, b) for a, b in zip(lp["runs"], ld["runs"]) if "error" not in a and "error" not in b]
                for k in ("p50", "p90", "p99"):
                    d = [(a[f"{k}_us"] - b[f"{k}_us"]) / 1e3 for a, b in pairs]
                    v[f"added_{k}_ms_c1_rounds"] = d
                    v[f"added_{k}_ms_c1"] = statistics.median(d) if d else None
            if tp and td:
                d = [(a["p99_us"] - b["p99_us"]) / 1e3 for a, b in zip(tp["runs"], td["runs"]) if "error" not in a and "error" not in b]
                v["added_p99_ms_tput"] = statistics.median(d) if d else None
            cr["verdict"] = v

    L = []
    L += [
        "# Ingress routing mesh: published port vs direct to the task (bench/mesh.sh)",
        "",
        f"Run {res['date']}, kernel {res['kernel']}, {res['cpus']} CPUs (wrk, nginx and the kernel's",
        "softirq work share them). nginx (Debian's, default index page, 615 bytes), one replica,",
        "`--constraint node.role==worker --publish 8001:80`, 1 manager + 1 worker.",
        f"Load average before / after: shoal {meta.get('load_shoal', '?')}; docker {meta.get('load_docker', '?')}.",
        f"Throughput: `wrk {meta.get('tput_args', '?')}`; latency: `wrk {meta.get('lat_args', '?')}`; "
        f"{meta.get('runs', '?')} rounds each; a round runs published and direct back to back (order reversed every",
        "other round). Ratio and added latency: median over the rounds of the round's ratio / difference (range in",
        "brackets); req/s and percentiles: medians over the rounds. CPU µs/req: CPU time of wrk, the task's processes,",
        "its shim (Docker: also the node's dockerd and containerd, which take the task's log) and ksoftirqd per request;",
        "direct/pub of it is the req/s ratio the CPU cost allows, and unlike req/s it hardly moves with other users' load."
        + (f" wrk, the task's processes and its shim ran at nice {meta['nice']}." if meta.get("nice") else ""),
        "",
    ]
    L += [
        "| engine | case (client) | published req/s | direct req/s | ratio pub/direct (target ≥ 0.90) | CPU µs/req pub / direct → direct/pub | p50 pub / direct (ms) | p99 pub / direct (ms) | added p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def case_label(c):
        for k, a, b in CASES:
            if k == c:
                return f"{a} ({b})"
        return c

    def cpu_cell(tp, td, v):
        a, b = tp and tp.get("cpu_us_per_req_median"), td and td.get("cpu_us_per_req_median")
        c = v.get("cpu_ratio")
        if a is None and b is None:
            return "n/a"
        cr_ = v.get("cpu_ratio_rounds") or []
        rng = f" ({min(cr_):.2f}–{max(cr_):.2f})" if cr_ else ""
        return f"{fnum(a, 1)} / {fnum(b, 1)}" + (f" → {c:.2f}{rng}" if c is not None else "")

    def ok(v, good):
        return "" if v is None else (" ✓" if good else " ✗")

    rows_lat = []
    for e, er in res["engines"].items():
        for c, _, _ in CASES:
            cr = er["cases"].get(c)
            if not cr:
                continue
            v = cr["verdict"]
            tp, td = tgt(cr.get("tput"), "published"), tgt(cr.get("tput"), "direct")
            lp, ld = tgt(cr.get("lat"), "published"), tgt(cr.get("lat"), "direct")
            label = case_label(c)
            if c == "outside":
                # no direct route from outside the cluster to the overlay: both node ports instead
                tl, tr = tgt(cr.get("tput"), "via-wrk1"), tgt(cr.get("tput"), "via-mgr1")
                ll, lr = tgt(cr.get("lat"), "via-wrk1"), tgt(cr.get("lat"), "via-mgr1")
                if tl and tr:
                    rr = v.get("rps_ratio")
                    rounds = v.get("rps_ratio_rounds") or []
                    rng = f" ({min(rounds):.2f}–{max(rounds):.2f})" if rounds else ""
                    L.append(
                        f"| {e} | {label}: wrk1:8001 (task local) vs mgr1:8001 (DNAT + VXLAN) | {fnum(tr.get('rps_median'))} (mgr1) "
                        f"| {fnum(tl.get('rps_median'))} (wrk1) | {fnum(rr, 2)}{rng} mgr1/wrk1 (no direct route to the overlay from outside) "
                        f"| {cpu_cell(tr, tl, v)} "
                        f"| {fnum(tr.get('p50_ms_median'), 3)} / {fnum(tl.get('p50_ms_median'), 3)} "
                        f"| {fnum(tr.get('p99_ms_median'), 3)} / {fnum(tl.get('p99_ms_median'), 3)} "
                        f"| {fnum(v.get('added_p99_ms_tput'), 3)} (mgr1 − wrk1) |"
                    )
                if ll and lr:
                    rows_lat.append(
                        f"| {e} | {label}: mgr1:8001 vs wrk1:8001 | {fnum(lr.get('p50_ms_median'), 3)} / {fnum(ll.get('p50_ms_median'), 3)} "
                        f"| {fnum(lr.get('p90_ms_median'), 3)} / {fnum(ll.get('p90_ms_median'), 3)} "
                        f"| {fnum(lr.get('p99_ms_median'), 3)} / {fnum(ll.get('p99_ms_median'), 3)} "
                        f"| {fnum(v.get('added_p99_ms_c1'), 3)} (mgr1 − wrk1) | {fnum(lr.get('rps_median'))} / {fnum(ll.get('rps_median'))} |"
                    )
                continue
            fails = cr.get("published_fails")
            pub_rps = f"fails: {fails}" if fails and not tp else fnum(tp and tp.get("rps_median"))
            r = v.get("rps_ratio")
            rounds = v.get("rps_ratio_rounds") or []
            rr = f"{fnum(r, 2)}{ok(r, r is not None and r >= RPS_TARGET)}"
            if rounds:
                rr += f" ({min(rounds):.2f}–{max(rounds):.2f})"
            if fails and not tp:
                rr = "—"
            a99 = v.get("added_p99_ms_tput")
            L.append(
                f"| {e} | {label} | {pub_rps} | {fnum(td and td.get('rps_median'))} | {rr} | {cpu_cell(tp, td, v)} "
                f"| {fnum(tp and tp.get('p50_ms_median'), 3)} / {fnum(td and td.get('p50_ms_median'), 3)} "
                f"| {fnum(tp and tp.get('p99_ms_median'), 3)} / {fnum(td and td.get('p99_ms_median'), 3)} "
                f"| {fnum(a99, 3)} |"
            )
            if ld:
                a = v.get("added_p99_ms_c1")
                ar = v.get("added_p99_ms_c1_rounds") or []
                if fails and not lp:
                    added = "—"
                elif ld.get("p99_ms_median", 0) > NOISY_P99_MS:
                    # the direct path's own p99 is already far above the target: scheduling, not network
                    added = fnum(a, 3) + " ? (inconclusive: direct p99 > 1 ms)"
                    v["added_p99_inconclusive"] = True
                else:
                    added = fnum(a, 3) + ok(a, a is not None and a <= ADDED_P99_TARGET_MS)
                if ar and not (fails and not lp):
                    added += f" ({min(ar):.3f} … {max(ar):.3f})"
                rows_lat.append(
                    f"| {e} | {label} | {fnum(lp and lp.get('p50_ms_median'), 3)} / {fnum(ld.get('p50_ms_median'), 3)} "
                    f"| {fnum(lp and lp.get('p90_ms_median'), 3)} / {fnum(ld.get('p90_ms_median'), 3)} "
                    f"| {fnum(lp and lp.get('p99_ms_median'), 3)} / {fnum(ld.get('p99_ms_median'), 3)} "
                    f"| {added} "
                    f"| {'fails' if fails and not lp else fnum(lp and lp.get('rps_median'))} / {fnum(ld.get('rps_median'))} |"
                )
    L += [
        "",
        f"Latency at low load (`wrk {meta.get('lat_args', '?')}`: one connection, no queueing in wrk; the fair measure of the",
        "latency the published path adds, target ≤ 0.2 ms). A p99 of several ms here is CPU contention (another",
        "process holding the CPU for a scheduler slice), not the network path: compare with the load average above.",
        "",
        "| engine | case (client) | p50 pub / direct (ms) | p90 pub / direct (ms) | p99 pub / direct (ms) | added p99 (ms) (per round) | req/s pub / direct |",
        "|---|---|---|---|---|---|---|",
        *rows_lat,
    ]
    notes = []
    for e, er in res["engines"].items():
        t = er.get("task")
        if t:
            notes.append(f"- {e}: task on {t.get('node')}, ingress address {t.get('ingress_ip')}.")
        if er.get("notes"):
            notes += [f"- {e}: {x}" for x in er["notes"].splitlines() if x.strip()]
        if er.get("error"):
            notes += [f"- {e} error: {x}" for x in er["error"].splitlines() if x.strip()]
        if er.get("log-excerpt"):
            notes += [f"- {e} daemon log (distinct lines about IPVS / ingress):"]
            notes += [f"  - `{x.strip()}`" for x in er["log-excerpt"].splitlines() if x.strip()]
        for c, cr in er["cases"].items():
            for mode in ("tput", "lat"):
                for t in (cr.get(mode) or {}).get("targets", []):
                    bad = [w.get("error") for w in t["runs"] if "error" in w]
                    if bad:
                        notes.append(f"- {e} {c} {mode} {t['label']}: {len(bad)} failed run(s): {bad[0]}")
                    if t.get("errors"):
                        notes.append(f"- {e} {c} {mode} {t['label']}: {t['errors']} wrk socket/status errors")
    if notes:
        L += ["", "Notes:", "", *notes]
    text = "\n".join(L) + "\n"
    print(text)
    os.makedirs(outdir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("mesh-latest", f"mesh-{stamp}"):
        with open(f"{outdir}/{name}.md", "w") as f:
            f.write(text)
        with open(f"{outdir}/{name}.json", "w") as f:
            json.dump(res, f, indent=1)
    return 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"task": cmd_task, "bench": cmd_bench, "summary": cmd_summary}[cmd]
    try:
        rc = fn(*args)
    except KeyboardInterrupt:
        # no traceback, but still die of SIGINT so that the calling shell sees a Ctrl-C
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        raise
    sys.exit(rc)


if __name__ == "__main__":
    main()
