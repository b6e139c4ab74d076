#!/usr/bin/env python3
"""End-to-end benchmark harness (issue 8): pikod + agent against direct and nginx.

    BUILD=build BENCH_BUILD=build/bench bench/run.py [--quick] [--out DIR]

Paths, all to one nginx origin (1 KiB body at /1k, 204 at /204, access_log off):
    direct   wrk -> origin
    pikod    wrk -> pikod proxy port -> yamux over WebSocket -> agent -> origin
    nginx1   wrk -> nginx proxy_pass -> origin                       (one hop)
    nginx2   wrk -> nginx -> nginx -> origin                         (two hops: the fair
                                                                        comparator for
                                                                        server + agent)
The load generator runs on core 0 (taskset -c 0), everything under test on core 1. Saturation
runs are interleaved A B C D A B C D ... so machine noise hits every path alike. Every load
loop is bounded in count and time and only talks to 127.0.0.0/8.

Figures: saturation throughput (wrk, keep-alive, 64 connections), latency percentiles at a
fixed rate of half the tunnel's saturation (bench/rate_client.c, open loop), CPU per request
at saturation and at that fixed rate (/proc/<pid>/stat of every process under test; access
logs off everywhere, the agent's too), a latency-vs-rate sweep (gnuplot PNG), RSS
per idle tunnel with 10,000 and 100,000 tunnels (bench/idle_tunnels.c, one process per 15,000
tunnels; pikod with as many workers as its per-process open-file limit needs), time for 10,000 agents to re-register after a pikod
restart, handoff cost with Connection: close (1 worker; 2 workers with the tunnel on one of
them; 2 workers with a tunnel on each, the like-for-like local path), TCP throughput
(iperf3: direct, through a TCP endpoint, and through one and three nginx stream relays as
the calibration for what relaying processes cost on one core, and three plain copy relays,
bench/copy_relay.c, as the ceiling for any three). net.unix.max_dgram_qlen is
raised to the packaged 512 for the run when root (and put back).

Prints the summary table; writes DIR/summary.md, DIR/raw.json, DIR/latency.dat and
DIR/latency.png. Environment knobs: BENCH_ROUNDS (5), BENCH_SECONDS (8), BENCH_TUNNELS
(10000), BENCH_TUNNELS_BIG (100000; 0 skips), BENCH_AGENT (auto|piko|go).
"""
import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
BENCH_BUILD = os.path.join(ROOT, os.environ.get("BENCH_BUILD", os.path.join(BUILD, "bench")))
LOADGEN_CPU = "0"
SUT_CPU = "1"
T_START = time.monotonic()
BUDGET_S = 570  # the whole run must stay under 10 minutes
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ENDPOINT = "bench"
PATHS = ("direct", "pikod", "nginx1", "nginx2")
LABELS = {"direct": "direct", "pikod": "pikod + agent", "nginx1": "nginx (1 hop)",
          "nginx2": "nginx -> nginx (2 hops)"}

procs = []  # every Popen we started, stopped at exit by pid / own process group


def log(msg):
    print("[%5.0fs] %s" % (time.monotonic() - T_START, msg), file=sys.stderr, flush=True)


def elapsed():
    return time.monotonic() - T_START


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(argv, cpu=SUT_CPU, out=None, stdin=subprocess.DEVNULL, stdout=None):
    """Starts argv pinned to cpu in its own process group; stderr (and stdout) to file out."""
    f = open(out, "ab") if out else subprocess.DEVNULL
    p = subprocess.Popen(["taskset", "-c", cpu] + list(argv), stdin=stdin,
                         stdout=stdout if stdout is not None else f, stderr=f,
                         start_new_session=True)
    procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=30):
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    else:
        try:  # children of a dead leader (pikod workers) must not outlive it
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_all():
    for p in reversed(procs):
        stop(p, signal.SIGKILL, 10)


def group_pids(p):
    """Pids of the process group we started p in (the taskset'd program and its children)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if int(fields[2]) == p.pid:  # pgrp
            out.append(int(d))
    return out


def cpu_ticks(pids):
    t = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        t += int(fields[11]) + int(fields[12])  # utime + stime
    return t


def mem_kib(pids):
    """Sum over pids of RSS, PSS and anonymous RSS (KiB)."""
    rss = pss = anon = 0
    for pid in pids:
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k == "Rss":
                        rss += int(v.split()[0])
                    elif k == "Pss":
                        pss += int(v.split()[0])
                    elif k == "Anonymous":
                        anon += int(v.split()[0])
        except OSError:
            pass
    return {"rss": rss, "pss": pss, "anon": anon}


def wait_http(url, headers=None, timeout=15, want=200):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                body = r.read()
                if r.status == want:
                    return body
                last = r.status
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(0.05)
    raise RuntimeError("%s not answering %d: %s" % (url, want, last))


# ---------------------------------------------------------------- the processes under test

NGINX_COMMON = """worker_processes 1;
daemon off;
pid {dir}/nginx-{name}.pid;
error_log {dir}/nginx-{name}.err warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {dir}/tmp-{name}-cb;
  proxy_temp_path {dir}/tmp-{name}-pt;
  fastcgi_temp_path {dir}/tmp-{name}-ft;
  uwsgi_temp_path {dir}/tmp-{name}-ut;
  scgi_temp_path {dir}/tmp-{name}-st;
{body}
}}
"""

NGINX_ORIGIN = """  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /1k {{ default_type text/plain; return 200 "{kib}"; }}
    location = /204 {{ return 204; }}
  }}"""

# proxy_pass with upstream keep-alive: nginx's best configuration for this job.
NGINX_PROXY = """  upstream next {{ server 127.0.0.1:{to}; keepalive 128; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://next;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"""


def nginx(d, name, body):
    conf = os.path.join(d, "nginx-%s.conf" % name)
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(dir=d, name=name, body=body))
    return start(["nginx", "-p", d, "-c", conf], out=os.path.join(d, "nginx-%s.out" % name))


def pikod(d, name, workers, extra=()):
    ports = {k: free_port() for k in ("proxy", "upstream", "admin", "cluster")}
    state = os.path.join(d, "state-" + name)
    os.makedirs(state, exist_ok=True)
    argv = [os.path.join(BUILD, "pikod"), "--state-dir", state, "--workers", str(workers),
            "--grace-period", "2s"]
    for k, v in ports.items():
        argv += ["--%s.bind-addr" % k, "127.0.0.1:%d" % v]
    argv += list(extra)
    p = start(argv, out=os.path.join(d, "pikod-%s.log" % name))
    wait_http("http://127.0.0.1:%d/health" % ports["admin"])
    return p, ports, argv


def piko_agent_works():
    piko = os.path.join(BUILD, "piko")
    try:
        r = subprocess.run([piko, "agent", "http", "--help"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def agent(d, name, up_port, origin_port, kind, endpoint=ENDPOINT):
    out = os.path.join(d, "agent-%s.log" % name)
    if kind == "piko":
        # Access log off, as on pikod and every nginx here.
        argv = [os.path.join(BUILD, "piko"), "agent", "http", endpoint, str(origin_port),
                "--connect.url", "http://127.0.0.1:%d" % up_port, "--access-log=false"]
    else:
        argv = [os.path.join(BUILD, "interop", "go-agent"), "--url",
                "http://127.0.0.1:%d" % up_port, "--endpoint", endpoint, "--forward",
                "127.0.0.1:%d" % origin_port]
    return start(argv, out=out)


# ---------------------------------------------------------------- load generators

def wrk(url, seconds, conns=64, headers=()):
    argv = ["taskset", "-c", LOADGEN_CPU, "wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds,
            "--timeout", "5s"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    n = int(m.group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    serr = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in serr.groups()) if serr else 0)
    return {"requests": n, "rps": rps, "errors": errors, "cmd": " ".join(argv)}


def steal_ticks():
    """Per-CPU steal time (ticks the hypervisor ran something else) from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("cpu" + LOADGEN_CPU, "cpu" + SUT_CPU):
                out[parts[0]] = int(parts[8])
    return out


def rate_client(addr, path, rate, seconds, headers=()):
    argv = ["taskset", "-c", LOADGEN_CPU, os.path.join(BENCH_BUILD, "rate_client"), "--addr",
            addr, "--path", path, "--rate", "%d" % rate, "--duration", "%g" % seconds,
            "--conns", "64", "--timeout", "3"]
    for h in headers:
        argv += ["--header", h]
    st0 = steal_ticks()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    st1 = steal_ticks()
    res = dict(kv.split("=", 1) for kv in out.split())
    res = {k: float(v) for k, v in res.items()}
    res["cmd"] = " ".join(argv)
    # A virtual machine's stolen time stalls whatever runs then: the tail moves with it.
    res["steal_ms"] = sum(st1[k] - st0[k] for k in st1) * 1000.0 / HZ
    return res


def med(xs):
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------- the run

def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def ver(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "gcc": ver(["gcc", "--version"]), "nginx": ver(["nginx", "-v"]),
            "wrk": ver(["wrk", "-v"]), "iperf3": ver(["iperf3", "--version"]),
            "pikod": ver([os.path.join(BUILD, "pikod"), "--version"])}


# The packages install this sysctl (packaging/: pikod's handoff queue between workers is a
# unix datagram socket, whose queue the kernel bounds by net.unix.max_dgram_qlen, default
# 10). The harness measures pikod as installed: it raises the value for the run when it
# can (root) and puts the old one back afterwards.
PACKAGED_DGRAM_QLEN = 512
QLEN_PATH = "/proc/sys/net/unix/max_dgram_qlen"


def dgram_qlen(want, lower=False):
    """Sets net.unix.max_dgram_qlen to want when that raises it (or, with lower, when it
    lowers it: putting the old value back). Root only. Returns (before, now)."""
    with open(QLEN_PATH) as f:
        before = int(f.read())
    if before == want or (want < before and not lower):
        return before, before
    try:
        with open(QLEN_PATH, "w") as f:
            f.write(str(want))
        log("net.unix.max_dgram_qlen %d -> %d" % (before, want))
        return before, want
    except OSError as e:
        log("cannot set net.unix.max_dgram_qlen (%s): measuring with %d" % (e, before))
        return before, before


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(BENCH_BUILD, "out"))
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s: a smoke run")
    args = ap.parse_args()
    rounds = 1 if args.quick else int(os.environ.get("BENCH_ROUNDS", "5"))
    secs = 3 if args.quick else int(os.environ.get("BENCH_SECONDS", "8"))
    n_idle = int(os.environ.get("BENCH_TUNNELS", "10000"))
    n_big = int(os.environ.get("BENCH_TUNNELS_BIG", "0" if args.quick else "100000"))
    os.makedirs(args.out, exist_ok=True)

    # Idle tunnels need an fd each on both sides. The limit is per process: the load comes
    # from several idle_tunnels processes, and pikod gets as many workers as it needs.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < IDLE_PER_PROC + 1000 or workers_for(max(n_idle, n_big)) > 16:
        log("open-file limit %d: too low for %d idle tunnels, big idle run skipped" % (
            hard, max(n_idle, n_big)))
        n_big = 0

    d = tempfile.mkdtemp(prefix="pikod-bench-")
    R = {"machine": machine(), "rounds": rounds, "seconds": secs, "shared_machine": True}
    qlen = dgram_qlen(PACKAGED_DGRAM_QLEN)
    R["machine"]["net.unix.max_dgram_qlen"] = qlen[1]
    try:
        run(d, args, R, rounds, secs, n_idle, n_big)
    finally:
        stop_all()
        if qlen[0] != qlen[1]:
            dgram_qlen(qlen[0], lower=True)
        with open(os.path.join(args.out, "raw.json"), "w") as f:
            json.dump(R, f, indent=1)
        shutil.rmtree(d, ignore_errors=True)
    report(R, args.out)


def run(d, args, R, rounds, secs, n_idle, n_big):
    kib = "x" * 1024
    ports = {k: free_port() for k in ("origin", "nginx1", "nginx2a", "nginx2b")}
    origin = nginx(d, "origin", NGINX_ORIGIN.format(port=ports["origin"], kib=kib))
    n1 = nginx(d, "nginx1", NGINX_PROXY.format(port=ports["nginx1"], to=ports["origin"]))
    n2b = nginx(d, "nginx2b", NGINX_PROXY.format(port=ports["nginx2b"], to=ports["origin"]))
    n2a = nginx(d, "nginx2a", NGINX_PROXY.format(port=ports["nginx2a"], to=ports["nginx2b"]))

    kind = os.environ.get("BENCH_AGENT", "auto")
    if kind == "auto":
        kind = "piko" if piko_agent_works() else "go"
    R["agent"] = {"piko": "build/piko agent http --access-log=false", "go": "interop/go-agent (Go stand-in: "
                  "hashicorp/yamux + gorilla/websocket, one TCP connection to the origin "
                  "per stream)"}[kind]
    pk, pk_ports, pk_argv = pikod(d, "w1", 1, ["--proxy.access-log.disable"])
    ag = agent(d, "w1", pk_ports["upstream"], ports["origin"], kind)
    R["pikod_cmd"] = " ".join(pk_argv)

    url = {"direct": "http://127.0.0.1:%d" % ports["origin"],
           "pikod": "http://127.0.0.1:%d" % pk_ports["proxy"],
           "nginx1": "http://127.0.0.1:%d" % ports["nginx1"],
           "nginx2": "http://127.0.0.1:%d" % ports["nginx2a"]}
    hdr = ["x-piko-endpoint: " + ENDPOINT]  # sent on every path, so requests are alike
    for p in PATHS:
        body = wait_http(url[p] + "/1k", {"x-piko-endpoint": ENDPOINT}, timeout=20)
        assert len(body) == 1024, (p, len(body))
    log("all paths answer; agent: %s" % kind)

    # Processes whose CPU each path costs (the origin is counted apart: every path has it).
    under = {"direct": {}, "pikod": {"pikod": [pk], "agent": [ag]},
             "nginx1": {"nginx": [n1]}, "nginx2": {"nginx-a": [n2a], "nginx-b": [n2b]}}

    def pids_of(ps):
        return [pid for p in ps for pid in group_pids(p)]

    # ---- saturation, interleaved rounds
    sat = {p: [] for p in PATHS}
    for r in range(rounds):
        order = PATHS if r % 2 == 0 else tuple(reversed(PATHS))
        for p in order:
            groups = {k: pids_of(v) for k, v in under[p].items()}
            groups["origin"] = pids_of([origin])
            c0 = {k: cpu_ticks(v) for k, v in groups.items()}
            w = wrk(url[p] + "/1k", secs, headers=hdr)
            n = max(w["requests"], 1)
            w["cpu_split"] = {k: (cpu_ticks(v) - c0[k]) / HZ * 1e6 / n for k, v in groups.items()}
            w["cpu_us_per_req"] = sum(v for k, v in w["cpu_split"].items() if k != "origin")
            sat[p].append(w)
            log("round %d %-7s %8.0f req/s  cpu %.1f us/req  errors %d" % (
                r + 1, p, w["rps"], w["cpu_us_per_req"], w["errors"]))
    R["saturation_1k"] = sat

    sat204 = {p: [] for p in PATHS}
    for r in range(max(1, rounds // 2)):
        for p in PATHS:
            sat204[p].append(wrk(url[p] + "/204", max(3, secs // 2), headers=hdr))
    R["saturation_204"] = sat204
    log("204: " + "  ".join("%s %.0f" % (p, med([x["rps"] for x in sat204[p]])) for p in PATHS))

    # ---- latency at a fixed rate: half of the tunnel's saturation
    tun_sat = med([x["rps"] for x in sat["pikod"]])
    rate = max(100, int(tun_sat / 2))
    R["fixed_rate"] = rate
    lat = {p: [] for p in PATHS}
    for r in range(5 if not args.quick else 1):
        for p in PATHS:
            groups = {k: pids_of(v) for k, v in under[p].items()}
            c0 = {k: cpu_ticks(v) for k, v in groups.items()}
            res = rate_client(url[p][7:], "/1k", rate, 5 if not args.quick else 2, hdr)
            n = max(res["ok"], 1)
            res["cpu_split"] = {k: (cpu_ticks(v) - c0[k]) / HZ * 1e6 / n
                                for k, v in groups.items()}
            res["cpu_us_per_req"] = sum(res["cpu_split"].values())
            lat[p].append(res)
            log("fixed %d/s %-7s p50 %.0f p99 %.0f p99.9 %.0f us (errors %d, timeouts %d, "
                "steal %.0f ms)" % (rate, p, res["p50_us"], res["p99_us"], res["p999_us"],
                                     res["errors"], res["timeouts"], res["steal_ms"]))
    R["latency_fixed"] = lat

    # ---- latency vs rate (one pass, for the plot): fractions of each path's saturation
    sweep = {p: [] for p in PATHS}
    fracs = (0.1, 0.3, 0.5, 0.7, 0.9)
    for f in fracs:
        for p in PATHS:
            top = med([x["rps"] for x in sat[p]])
            rr = max(100, int(top * f))
            res = rate_client(url[p][7:], "/1k", rr, 3 if not args.quick else 1, hdr)
            sweep[p].append(res)
    R["sweep"] = sweep
    with open(os.path.join(args.out, "latency.dat"), "w") as f:
        for p in PATHS:
            f.write("# %s\n" % p)
            for res in sweep[p]:
                f.write("%d %.1f %.1f %.1f\n" % (res["target_rate"], res["p50_us"],
                                                  res["p99_us"], res["p999_us"]))
            f.write("\n\n")
    log("sweep done")

    # ---- handoff: 1 worker vs 2 workers, every request on a new connection
    handoff(d, R, ports["origin"], kind, rounds, secs, args.quick)

    # ---- TCP endpoint (iperf3)
    iperf(d, R, args.quick)

    # ---- idle tunnels and re-registration (a pikod of its own)
    stop(ag)
    stop(pk)
    idle(d, R, n_idle, n_big)


def metric(admin_port, name):
    """Sum of a metric's samples on pikod's /metrics (lines starting with name)."""
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port, timeout=5).read()
    return sum(float(line.split()[-1]) for line in body.decode().splitlines()
               if line.startswith(name))


def tunnel_workers(admin_port):
    url = "http://127.0.0.1:%d/status/upstream/upstreams" % admin_port
    rows = json.loads(urllib.request.urlopen(url, timeout=5).read())
    return sorted(r["worker"] for r in rows)


def handoff(d, R, origin_port, kind, rounds, secs, quick):
    """Four pikods, access log off, requests for endpoint "bench":
    1w          one worker holding the tunnel: the local path;
    2w          two workers, one tunnel: the worker without it stops accepting (tunnel
                affinity), so nothing should be handed off;
    2w-handoff  two workers, "bench" on one and "other" on the other: both accept, and what
                the other accepts is handed off (the handoff path);
    2w-local    two workers, a "bench" tunnel on each: every request stays local, so
                2w-handoff vs 2w-local isolates the handoff from the second worker's other
                costs (two processes sharing the core, accept wake-ups)."""
    inst = {}
    for name, w, eps in (("1w", 1, [ENDPOINT]), ("2w", 2, [ENDPOINT]),
                         ("2w-handoff", 2, [ENDPOINT, "other"]),
                         ("2w-local", 2, [ENDPOINT, ENDPOINT])):
        p, pp, argv = pikod(d, "h" + name, w, ["--proxy.access-log.disable"])
        ags = [agent(d, "h%s-%d" % (name, i), pp["upstream"], origin_port, kind, ep)
               for i, ep in enumerate(eps)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tw = tunnel_workers(pp["admin"])
            if len(tw) == len(eps) and len(set(tw)) == len(eps):
                break
            if len(tw) == len(eps):  # both landed on one worker: let the second redial
                stop(ags[-1])
                ags[-1] = agent(d, "h%s-%d" % (name, len(eps) - 1), pp["upstream"],
                                origin_port, kind, eps[-1])
            time.sleep(0.1)
        wait_http("http://127.0.0.1:%d/1k" % pp["proxy"], {"x-piko-endpoint": ENDPOINT}, 20)
        time.sleep(0.3)  # past the affinity check (100 ms) of the workers without a tunnel
        inst[name] = (p, pp, ags, argv, tunnel_workers(pp["admin"]))
    hdr = ["x-piko-endpoint: " + ENDPOINT, "Connection: close"]
    names = list(inst)
    res = {k: [] for k in names}
    res_ka = {k: [] for k in names}
    n = max(1, min(3, rounds))
    s = max(3, secs // 2)
    for _ in range(n):
        for k in names:
            u = "http://127.0.0.1:%d/1k" % inst[k][1]["proxy"]
            # CPU of pikod and its agents per request, and the handoffs of this round: the
            # handoff's cost in CPU (the origin is the same for every instance).
            pids = group_pids(inst[k][0]) + sum((group_pids(a) for a in inst[k][2]), [])
            t0 = cpu_ticks(pids)
            h0 = metric(inst[k][1]["admin"], 'pikod_handoffs_total{direction="sent"}')
            r = wrk(u, s, headers=hdr)
            r["cpu_us"] = (cpu_ticks(pids) - t0) / HZ * 1e6 / max(1, r["requests"])
            r["handed_off"] = (metric(inst[k][1]["admin"],
                                      'pikod_handoffs_total{direction="sent"}') - h0)
            res[k].append(r)
    handed = {k: sum(x["handed_off"] for x in res[k]) for k in names}
    for k in names:
        u = "http://127.0.0.1:%d/1k" % inst[k][1]["proxy"]
        res_ka[k].append(wrk(u, s, headers=hdr[:1]))
    R["handoff"] = {"close": res, "keepalive": res_ka,
                    "handed_off": {k: handed[k] / max(1, sum(x["requests"] for x in res[k]))
                                   for k in names},
                    "tunnel_workers": {k: inst[k][4] for k in names},
                    "cmds": {k: " ".join(inst[k][3]) for k in names}}
    log("handoff (Connection: close): " + "  ".join(
        "%s %.0f req/s (%.0f%% handed off)" % (k, med([x["rps"] for x in res[k]]),
                                               100 * R["handoff"]["handed_off"][k])
        for k in names))
    for k in names:
        for a in inst[k][2]:
            stop(a)
        stop(inst[k][0])


STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"  # libnginx-mod-stream


def stream_relay(d, name, port, to, cpu=SUT_CPU):
    """nginx's stream module relaying TCP from port to `to`: the calibration for a TCP
    endpoint (pure byte relays, no framing, same socket copies per hop)."""
    conf = os.path.join(d, "nginx-%s.conf" % name)
    with open(conf, "w") as f:
        f.write("load_module %s;\nworker_processes 1;\ndaemon off;\npid %s/nginx-%s.pid;\n"
                "error_log %s/nginx-%s.err warn;\nevents { worker_connections 1024; }\n"
                "stream { server { listen 127.0.0.1:%d; proxy_pass 127.0.0.1:%d; "
                "proxy_buffer_size 64k; } }\n" % (STREAM_MODULE, d, name, d, name, port, to))
    return start(["nginx", "-p", d, "-c", conf], cpu=cpu,
                 out=os.path.join(d, "nginx-%s.out" % name))


IPERF_ROUNDS = 3
COPY3 = "plain copy relays (C), 3"


def iperf_run(port, secs, retry_s=0, nbytes=None):
    """bits/s received by iperf3 -c (on the load generator's core) through port in secs
    seconds (or for nbytes); retried for retry_s while the path is still coming up. nan when
    it never ran."""
    argv = ["taskset", "-c", LOADGEN_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port)] + (
        ["-n", str(nbytes)] if nbytes else ["-t", str(secs)]) + ["-J"]
    deadline = time.monotonic() + retry_s
    while True:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
        try:
            return json.loads(out)["end"]["sum_received"]["bits_per_second"], " ".join(argv)
        except (ValueError, KeyError):
            if time.monotonic() >= deadline:
                return float("nan"), " ".join(argv)
            time.sleep(0.2)


def iperf(d, R, quick):
    """Every path is set up at once, then measured in IPERF_ROUNDS interleaved rounds (one
    iperf3 run per path per round, the order reversed every other round); the median per
    path is reported. A single run swings by 20 % on this kind of machine."""
    port = free_port()
    srv = start(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)],
                out=os.path.join(d, "iperf3.log"))
    paths = {"direct": port}
    procs = [srv]
    # Calibration: one and three nginx stream relays (three = as many relaying processes
    # as forwarder + pikod + agent), all on the core under test; and three with the first
    # relay on the load generator's core, where a client-side forwarder runs.
    if os.path.exists(STREAM_MODULE):
        p1, p1c, p2, p3 = free_port(), free_port(), free_port(), free_port()
        procs += [stream_relay(d, "s3", p3, port), stream_relay(d, "s2", p2, p3),
                  stream_relay(d, "s1", p1, p2),
                  stream_relay(d, "s1c", p1c, p2, cpu=LOADGEN_CPU)]
        paths["nginx stream, 1 relay"] = p3
        paths["nginx stream, 3 relays"] = p1
        paths["nginx stream, 3 relays, first on the client core"] = p1c
    # The ceiling: three relays that only copy (bench/copy_relay.c, blocking read/write of
    # 256 KiB, no event loop, no framing). What three relaying processes on one core can
    # carry at best, whatever they are.
    relay = os.path.join(BENCH_BUILD, "copy_relay")
    if os.path.exists(relay):
        c1, c2, c3 = free_port(), free_port(), free_port()
        procs += [start([relay, str(c3), str(port)], out=os.path.join(d, "copy-relay.log")),
                  start([relay, str(c2), str(c3)], out=os.path.join(d, "copy-relay.log")),
                  start([relay, str(c1), str(c2)], out=os.path.join(d, "copy-relay.log"))]
        paths[COPY3] = c1
    # Through a TCP endpoint: iperf3 client -> `piko forward tcp` -> WebSocket
    # /_piko/v1/tcp/iperf on pikod's proxy port -> tunnel -> `piko agent tcp` -> iperf3 server.
    piko = os.path.join(BUILD, "piko")
    pk, ports, _ = pikod(d, "iperf", 1, ["--proxy.access-log.disable"])
    procs += [pk, start([piko, "agent", "tcp", "iperf", "127.0.0.1:%d" % port, "--connect.url",
                         "http://127.0.0.1:%d" % ports["upstream"]],
                        out=os.path.join(d, "agent-iperf.log"))]
    for label, cpu in (("pikod + piko", SUT_CPU),
                       ("pikod + piko, forwarder on the client core", LOADGEN_CPU)):
        fport = free_port()
        procs.append(start([piko, "forward", "tcp", "127.0.0.1:%d" % fport, "iperf",
                            "--connect.url", "http://127.0.0.1:%d" % ports["proxy"]], cpu=cpu,
                           out=os.path.join(d, "forward-iperf.log")))
        paths[label] = fport
    # Warm-up: every path carries once (the agent registers asynchronously).
    for p in paths.values():
        iperf_run(p, 1, retry_s=15, nbytes="64M")
    secs = 1 if quick else 3
    samples = {k: [] for k in paths}
    cmd = ""
    for r in range(IPERF_ROUNDS):
        for k in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            bps, argv = iperf_run(paths[k], secs)
            samples[k].append(bps)
            cmd = cmd or argv
    bps = med(samples["direct"])
    R["iperf_direct"] = {"bps": bps, "cmd": cmd}
    R["iperf_paths"] = {k: med(v) for k, v in samples.items() if k != "direct"}
    R["iperf_rounds"] = samples
    tun = R["iperf_paths"]["pikod + piko"]
    R["iperf_tunnel"] = "%.2f Gbit/s = %.2f x direct" % (
        tun / 1e9, tun / bps if bps == bps and bps else float("nan"))
    log("iperf3 (median of %d) direct %.1f Gbit/s; " % (IPERF_ROUNDS, bps / 1e9) + "; ".join(
        "%s %.1f" % (k, v / 1e9) for k, v in R["iperf_paths"].items()))
    for p in reversed(procs):
        stop(p)


IDLE_PER_PROC = 15000  # tunnels per idle_tunnels process, within a 20,000 open-file limit


def workers_for(n):
    """Workers that hold n idle tunnels within the open-file limit (it is per process): a
    worker stops accepting at limit - limit/32 - 16 (workers/listener.c); plan for 90 % of
    that, so an uneven spread across workers still fits."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    per = int((soft - soft // 32 - 16) * 0.9)
    return max(1, -(-n // per))


class Idle:
    """bench/idle_tunnels children talked to over stdin/stdout: one per IDLE_PER_PROC
    tunnels, each with its own endpoint names and source address."""

    def __init__(self, port, n, out):
        k = -(-n // IDLE_PER_PROC)
        self.ps = []
        first = 0
        for j in range(k):
            m = n // k + (1 if j < n % k else 0)
            argv = [os.path.join(BENCH_BUILD, "idle_tunnels"), "--port", str(port), "-n", str(m),
                    "--first", str(first), "--sources", "8", "--source-first", str(2 + 8 * j),
                    "--max-seconds", "240"]
            first += m
            self.ps.append(start(argv, cpu=LOADGEN_CPU, out="%s.%d" % (out, j),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE))

    def wait(self, what, timeout):
        """The latest time (CLOCK_MONOTONIC ns) any child printed `what`, once all have."""
        deadline = time.monotonic() + timeout
        bufs = [b""] * len(self.ps)
        seen = [None] * len(self.ps)
        for p in self.ps:
            os.set_blocking(p.stdout.fileno(), False)
        while time.monotonic() < deadline:
            for j, p in enumerate(self.ps):
                if seen[j] is not None:
                    continue
                chunk = p.stdout.read()
                if chunk:
                    bufs[j] += chunk
                    for line in bufs[j].decode().splitlines():
                        if line.startswith(what):
                            seen[j] = int(re.search(r"mono_ns=(\d+)", line).group(1))
                elif p.poll() is not None:
                    return None
            if all(x is not None for x in seen):
                return max(seen)
            time.sleep(0.01)
        return None

    def cmd(self, c):
        for p in self.ps:
            p.stdin.write((c + "\n").encode())
            p.stdin.flush()

    def stop(self):
        self.cmd("exit")
        for p in self.ps:
            stop(p)


def close_idle(t, p, admin_port):
    """Closes the idle tunnels of t; returns the seconds until pikod had seen every
    disconnect, and pikod's memory 2.5 s later."""
    t.cmd("close")
    t.wait("closed", 30)
    t_closed = time.monotonic()
    # pikod notices each disconnect from its loop; then a worker trims its heap within 2 s
    # of its last tunnel closing (workers/worker.c).
    while (metric(admin_port, "piko_upstreams_connected_upstreams") > 0 and
           time.monotonic() - t_closed < 60):
        time.sleep(0.1)
    gone = time.monotonic() - t_closed
    time.sleep(2.5)
    return gone, mem_kib(group_pids(p))


def idle(d, R, n_idle, n_big):
    """Memory per idle tunnel (fresh pikod per size), then re-registration after a restart."""
    res = {}
    for n in (n_idle, n_big):
        if n <= 0:
            continue
        # 100,000 took 19-21 s in runs 17-23 (registration, memory, disconnect, trim); the
        # second cycle adds about 15 s
        if n == n_big and elapsed() > BUDGET_S - 60:
            log("skipping %d idle tunnels: time budget" % n)
            res[str(n)] = {"error": "skipped: time budget"}
            continue
        workers = workers_for(n)
        p, pp, argv = pikod(d, "idle%d" % n, workers)
        R.setdefault("idle_cmd", {})[str(n)] = " ".join(argv)
        time.sleep(1)  # let the children settle before the baseline
        entry = {"baseline_kib": mem_kib(group_pids(p)), "workers": workers}
        t = Idle(pp["upstream"], n, os.path.join(d, "idle-%d.err" % n))
        t0 = time.monotonic_ns()
        up = t.wait("all_open", 150)
        if up is None:
            log("idle %d: not all registered in time" % n)
            res[str(n)] = {"error": "not all registered within 150 s"}
            t.stop()
            stop(p)
            continue
        entry["register_s"] = (up - t0) / 1e9
        time.sleep(2)
        entry["open_kib"] = mem_kib(group_pids(p))
        entry["all_gone_s"], entry["closed_kib"] = close_idle(t, p, pp["admin"])
        t.stop()
        if n == n_big and elapsed() < BUDGET_S - 25:
            # The same number again: what the first cycle left behind must be reused, not
            # added to (a leak grows with every cycle; a kept heap does not).
            t = Idle(pp["upstream"], n, os.path.join(d, "idle-%d-again.err" % n))
            if t.wait("all_open", 150) is not None:
                entry["closed_again_kib"] = close_idle(t, p, pp["admin"])[1]
            t.stop()
        if n == n_idle:
            # n agents registered, then pikod restarts: time until all are back.
            t = Idle(pp["upstream"], n, os.path.join(d, "idle-%d-restart.err" % n))
            if t.wait("all_open", 150) is not None:
                stop(p, signal.SIGTERM, 30)
                t_restart = time.monotonic_ns()
                p = start(argv, out=os.path.join(d, "pikod-idle.log"))
                back = t.wait("all_open", 60)
                entry["reregister_s"] = None if back is None else (back - t_restart) / 1e9
                log("idle %d: re-registered in %s s after restart" % (n, entry["reregister_s"]))
            t.stop()
        stop(p)
        res[str(n)] = entry
        log("idle %d: registered in %.2f s, rss %+.0f KiB total" % (
            n, entry["register_s"], entry["open_kib"]["rss"] - entry["baseline_kib"]["rss"]))
    R["idle"] = res


# ---------------------------------------------------------------- reporting

def report(R, out):
    lines = []

    def row(*cells):
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    sat = R.get("saturation_1k")
    if sat:
        m = {p: med([x["rps"] for x in sat[p]]) for p in PATHS}
        cpu = {p: med([x["cpu_us_per_req"] for x in sat[p]]) for p in PATHS}
        lines.append("Saturation, 1 KiB body (wrk -t1 -c64, %d interleaved rounds of %d s, "
                     "median; agent: %s)" % (R["rounds"], R["seconds"], R.get("agent")))
        lines.append("")
        row("path", "req/s", "min..max", "vs direct", "vs nginx->nginx",
            "CPU us/req (proxy processes)", "CPU vs nginx->nginx", "split (us/req)")
        row(*["---"] * 8)
        for p in PATHS:
            xs = [x["rps"] for x in sat[p]]
            split = ", ".join("%s %.1f" % (k, med([x["cpu_split"][k] for x in sat[p]]))
                              for k in sat[p][0]["cpu_split"])
            row(LABELS[p], "%.0f" % m[p], "%.0f..%.0f" % (min(xs), max(xs)),
                "%.2f" % (m[p] / m["direct"]), "%.2f" % (m[p] / m["nginx2"]),
                "%.1f" % cpu[p] if p != "direct" else "-",
                "%.2f" % (cpu[p] / cpu["nginx2"]) if p != "direct" else "-", split)
        lines.append("")
    s204 = R.get("saturation_204")
    if s204:
        m = {p: med([x["rps"] for x in s204[p]]) for p in PATHS}
        lines.append("Saturation, 204: " + ", ".join(
            "%s %.0f (%.2f x nginx2)" % (p, m[p], m[p] / m["nginx2"]) for p in PATHS))
        lines.append("")
    lat = R.get("latency_fixed")
    if lat:
        lines.append("Latency at %d req/s (half the tunnel's saturation), open loop, "
                     "64 connections, median of rounds, microseconds" % R["fixed_rate"])
        lines.append("")
        row("path", "p50", "p99", "p99.9", "p99 vs nginx->nginx", "CPU us/req",
            "CPU vs nginx->nginx", "errors+timeouts", "p99 per round", "steal ms per round")
        row(*["---"] * 10)
        p99n = med([x["p99_us"] for x in lat["nginx2"]])
        cpun = med([x.get("cpu_us_per_req", float("nan")) for x in lat["nginx2"]])
        for p in PATHS:
            q = {k: med([x.get(k, float("nan")) for x in lat[p]])
                 for k in ("p50_us", "p99_us", "p999_us", "cpu_us_per_req")}
            bad = sum(x["errors"] + x["timeouts"] for x in lat[p])
            row(LABELS[p], "%.0f" % q["p50_us"], "%.0f" % q["p99_us"], "%.0f" % q["p999_us"],
                "%.2f" % (q["p99_us"] / p99n),
                "%.1f" % q["cpu_us_per_req"] if p != "direct" else "-",
                "%.2f" % (q["cpu_us_per_req"] / cpun) if p != "direct" else "-", "%d" % bad,
                " ".join("%.0f" % x["p99_us"] for x in lat[p]),
                " ".join("%.0f" % x.get("steal_ms", float("nan")) for x in lat[p]))
        lines.append("")
        lines.append("Steal: time the hypervisor gave the two CPUs to others during the "
                     "measurement (/proc/stat); a tail is only comparable between rounds "
                     "with little of it.")
        lines.append("")
    h = R.get("handoff")
    if h:
        c = {k: med([x["rps"] for x in v]) for k, v in h["close"].items()}
        ka = {k: med([x["rps"] for x in v]) for k, v in h["keepalive"].items()}
        lines.append("Handoff, 1 KiB (wrk -t1 -c64; access log off; tunnels on workers %s)" % (
            ", ".join("%s: %s" % (k, v) for k, v in h["tunnel_workers"].items())))
        lines.append("")
        cpu = {k: med([x.get("cpu_us", float("nan")) for x in v])
               for k, v in h["close"].items()}
        row("pikod", "new connection per request: req/s", "handed off", "vs 1w", "vs 2w-local",
            "CPU us/req (pikod + agents)", "keep-alive: req/s", "vs 1w")
        row(*["---"] * 8)
        for k in c:
            row(k, "%.0f" % c[k], "%.0f %%" % (100 * h["handed_off"][k]),
                "%.2f" % (c[k] / c["1w"]), "%.2f" % (c[k] / c["2w-local"]), "%.1f" % cpu[k],
                "%.0f" % ka[k], "%.2f" % (ka[k] / ka["1w"]))
        lines.append("")
        # Per round, against 2w-local's CPU in the same round: the share handed off
        # varies from round to round with which worker wins the accepts.
        per = []
        for a, b in zip(h["close"].get("2w-handoff", []), h["close"].get("2w-local", [])):
            if a.get("handed_off") and "cpu_us" in a and "cpu_us" in b:
                frac = a["handed_off"] / max(1, a["requests"])
                per.append(((a["cpu_us"] - b["cpu_us"]) / frac, frac))
        if per:
            lines.append("CPU per handed-off connection over serving it where it landed, "
                         "(2w-handoff - 2w-local) / share handed off, per round: %s us; "
                         "median %.1f us" % (", ".join("%.1f (%.0f %%)" % (c, 100 * f)
                                                       for c, f in per),
                                             med([c for c, _ in per])))
            lines.append("")
    ip = R.get("iperf_direct")
    if ip:
        lines.append("TCP throughput, iperf3 -c on the load generator's core, median of %d "
                     "interleaved rounds of 3 s (everything else on the core under test unless "
                     "said)" % IPERF_ROUNDS)
        lines.append("")
        row("path", "Gbit/s", "vs direct", "vs nginx stream, 3 relays (same placement)",
            "vs plain copy relays, 3")
        row(*["---"] * 5)
        row("direct", "%.2f" % (ip["bps"] / 1e9), "1.00", "-", "-")
        ps = R.get("iperf_paths", {})
        for k, v in ps.items():
            ref = ps.get("nginx stream, 3 relays, first on the client core" if "client core" in k
                         else "nginx stream, 3 relays")
            cref = ps.get(COPY3)
            row(k, "%.2f" % (v / 1e9), "%.2f" % (v / ip["bps"]),
                "%.2f" % (v / ref) if ref and "nginx" not in k else "-",
                "%.2f" % (v / cref) if cref and "nginx" not in k and k != COPY3 and
                "client core" not in k else "-")
        lines.append("")
    idl = R.get("idle")
    if idl:
        for k, e in idl.items():
            n = int(k)
            if "error" in e:
                lines.append("Idle %d: %s" % (n, e["error"]))
                continue
            b, o, c = e["baseline_kib"], e["open_kib"], e["closed_kib"]
            lines.append(
                "Idle tunnels %d (%d worker%s): registered in %.2f s; pikod per tunnel: "
                "RSS %.1f KiB, PSS %.1f KiB, anon %.1f KiB; %.1f s until every disconnect was handled, then: "
                "anon %+.0f KiB, PSS %+.0f KiB vs baseline (RSS %+.0f KiB counts the shared "
                "LMDB file once per process)%s" % (
                    n, e.get("workers", 1), "" if e.get("workers", 1) == 1 else "s",
                    e["register_s"], (o["rss"] - b["rss"]) / n, (o["pss"] - b["pss"]) / n,
                    (o["anon"] - b["anon"]) / n, e.get("all_gone_s", 0), c["anon"] - b["anon"],
                    c["pss"] - b["pss"], c["rss"] - b["rss"],
                    "; re-registered %.2f s after a restart" % e["reregister_s"]
                    if e.get("reregister_s") else ""))
            if "closed_again_kib" in e:
                a = e["closed_again_kib"]
                lines.append("")
                lines.append("After a second %d came and went: anon %+.0f KiB, PSS %+.0f KiB vs "
                             "after the first" % (n, a["anon"] - c["anon"], a["pss"] - c["pss"]))
        lines.append("")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text + "\n")
    plot(out)


def plot(out):
    dat = os.path.join(out, "latency.dat")
    if not os.path.exists(dat) or not shutil.which("gnuplot"):
        return
    gp = """set terminal pngcairo size 1000,620 font "sans,11"
set output "{png}"
set title "Latency vs offered rate, 1 KiB responses (open loop, 64 connections; shared 2-core machine)"
set xlabel "offered rate (requests/s)"
set ylabel "latency (microseconds)"
set logscale y
set logscale x
set grid
set key outside right top
plot for [i=0:3] "{dat}" index i using 1:3 with linespoints lw 2 pt 7 lc i+1 title word("{titles}", i+1)." p99", \\
     for [i=0:3] "{dat}" index i using 1:2 with linespoints dt 2 pt 6 lc i+1 title word("{titles}", i+1)." p50"
""".format(png=os.path.join(out, "latency.png"), dat=dat,
           titles="direct pikod+agent nginx(1-hop) nginx->nginx")
    subprocess.run(["gnuplot"], input=gp, text=True, check=False, timeout=60)


if __name__ == "__main__":
    def on_term(signum, frame):
        stop_all()
        sys.exit(1)
    signal.signal(signal.SIGTERM, on_term)
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(1)
