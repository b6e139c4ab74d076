"""Admin API and pikoctl end to end: /metrics against known traffic (4 workers, a worker
killed with SIGKILL, a reload), a strict check of the exposition format, the status API,
admin auth, and every pikoctl command against real pikod processes on loopback.

Waits are for events (a log record, a printed line, a metric reaching a value) with
deadlines; nothing sleeps to synchronise."""
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from datetime import datetime, timezone

from harness import (Pikod, Service, Agent, PIKOCTL, ENV, TimeoutError_, read_response,
                     read_head_timeout_answer)

try:
    import jwt  # Debian's python3-jwt
except ImportError:  # pragma: no cover - reported by the tests that need it
    jwt = None

REGISTER_TIMEOUT = 15.0


# ---------------------------------------------------------------------------------------
# A strict reader of the Prometheus text format 0.0.4
# ---------------------------------------------------------------------------------------
class ExpositionError(AssertionError):
    pass


NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def _parse_labels(text, lineno):
    """'{a="x",b="y"}' (text after the name) -> (dict, rest of the line)."""
    labels = {}
    i = 1
    while True:
        if text[i] == "}":
            return labels, text[i + 1:]
        m = LABEL_NAME_RE.match(text, i)
        if not m:
            raise ExpositionError("line %d: bad label name in %r" % (lineno, text))
        name = m.group(0)
        i = m.end()
        if text[i:i + 2] != '="':
            raise ExpositionError("line %d: expected =\" after label %s" % (lineno, name))
        i += 2
        value = []
        while text[i] != '"':
            if text[i] == "\\":
                esc = text[i + 1]
                if esc not in ('\\', '"', 'n'):
                    raise ExpositionError("line %d: bad escape \\%s" % (lineno, esc))
                value.append("\n" if esc == "n" else esc)
                i += 2
            elif text[i] == "\n":
                raise ExpositionError("line %d: raw newline in a label value" % lineno)
            else:
                value.append(text[i])
                i += 1
        i += 1
        if name in labels:
            raise ExpositionError("line %d: label %s twice" % (lineno, name))
        labels[name] = "".join(value)
        if text[i] == ",":
            i += 1
        elif text[i] != "}":
            raise ExpositionError("line %d: expected , or } in %r" % (lineno, text))


def _value(s, lineno):
    if s in ("+Inf", "-Inf", "NaN"):
        return float(s.replace("Inf", "inf"))
    if not re.match(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$", s):
        raise ExpositionError("line %d: bad sample value %r" % (lineno, s))
    return float(s)


def parse_exposition(text):
    """Checks text strictly and returns {family: {"type", "samples": {(name, labels): v}}}.

    Every sample belongs to the family declared last (HELP then TYPE, once each, before its
    samples); a family's samples are contiguous; names and labels have the right syntax;
    no series repeats; counters end in _total; histograms have cumulative buckets in
    increasing le order, a +Inf bucket equal to _count, and a _sum."""
    if not text.endswith("\n"):
        raise ExpositionError("the exposition must end with a newline")
    families = {}
    current = None
    closed = set()
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            if len(parts) < 4 or not NAME_RE.match(parts[2]):
                raise ExpositionError("line %d: malformed %r" % (lineno, line))
            name = parts[2]
            if line.startswith("# HELP "):
                if name in families:
                    raise ExpositionError("line %d: family %s declared twice" % (lineno, name))
                if current is not None:
                    closed.add(current)
                families[name] = {"type": None, "samples": {}, "help": parts[3]}
                current = name
            else:
                if name != current or families[name]["type"] is not None:
                    raise ExpositionError("line %d: TYPE %s without its HELP just before" %
                                          (lineno, name))
                if parts[3] not in TYPES:
                    raise ExpositionError("line %d: unknown type %r" % (lineno, parts[3]))
                if families[name]["samples"]:
                    raise ExpositionError("line %d: TYPE after samples" % lineno)
                families[name]["type"] = parts[3]
            continue
        if line.startswith("#") or line == "":
            raise ExpositionError("line %d: unexpected line %r" % (lineno, line))
        m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if not m:
            raise ExpositionError("line %d: bad metric name in %r" % (lineno, line))
        name = m.group(0)
        rest = line[m.end():]
        labels = {}
        if rest.startswith("{"):
            labels, rest = _parse_labels(rest, lineno)
        if not rest.startswith(" ") or " " in rest[1:]:
            raise ExpositionError("line %d: expected exactly ' value' after %s" % (lineno, name))
        value = _value(rest[1:], lineno)
        fam = current
        if fam is None or families[fam]["type"] is None:
            raise ExpositionError("line %d: sample %s before any TYPE" % (lineno, name))
        ftype = families[fam]["type"]
        allowed = {fam}
        if ftype == "histogram":
            allowed = {fam + "_bucket", fam + "_sum", fam + "_count"}
        if name not in allowed:
            owner = [f for f in families if name == f or name.startswith(f + "_")]
            if owner and owner[0] in closed:
                raise ExpositionError("line %d: %s continues family %s after another began" %
                                      (lineno, name, owner[0]))
            raise ExpositionError("line %d: sample %s does not belong to family %s" %
                                  (lineno, name, fam))
        key = (name, tuple(sorted(labels.items())))
        if key in families[fam]["samples"]:
            raise ExpositionError("line %d: series %s%s twice" % (lineno, name, labels))
        if ftype == "counter" and not name.endswith("_total"):
            raise ExpositionError("line %d: counter %s does not end in _total" % (lineno, name))
        if ftype == "counter" and (value < 0 or math.isnan(value)):
            raise ExpositionError("line %d: counter %s is %s" % (lineno, name, value))
        families[fam]["samples"][key] = value
    for fam, f in families.items():
        if f["type"] is None:
            raise ExpositionError("family %s has no TYPE" % fam)
        if f["type"] == "histogram":
            _check_histogram(fam, f["samples"])
    return families


def _check_histogram(fam, samples):
    groups = {}
    for (name, labels), v in samples.items():
        rest = tuple(kv for kv in labels if kv[0] != "le")
        g = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name == fam + "_bucket":
            le = dict(labels).get("le")
            if le is None:
                raise ExpositionError("%s: bucket without le" % fam)
            g["buckets"].append((float(le.replace("Inf", "inf")), v))
        elif name == fam + "_sum":
            g["sum"] = v
        else:
            g["count"] = v
    for rest, g in groups.items():
        b = sorted(g["buckets"])
        if not b or b[-1][0] != math.inf:
            raise ExpositionError("%s%s: no +Inf bucket" % (fam, rest))
        for (le1, v1), (le2, v2) in zip(b, b[1:]):
            if v2 < v1:
                raise ExpositionError("%s: bucket le=%s (%s) below le=%s (%s)" % (
                    fam, le2, v2, le1, v1))
        if g["count"] is None or g["sum"] is None:
            raise ExpositionError("%s%s: missing _count or _sum" % (fam, rest))
        if b[-1][1] != g["count"]:
            raise ExpositionError("%s: +Inf bucket %s != _count %s" % (fam, b[-1][1], g["count"]))


def sample(families, name, **labels):
    """The value of one series, or None."""
    for f in families.values():
        v = f["samples"].get((name, tuple(sorted(labels.items()))))
        if v is not None:
            return v
    return None


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def run_pikoctl(args, timeout=120):
    p = subprocess.run([PIKOCTL] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                       env=ENV, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def admin_url(d):
    return "http://%s:%d" % d.addrs["admin"]


def get_json(d, path, headers=None):
    status, hdrs, body = d.http("admin", "GET", path, headers=headers)
    return status, json.loads(body) if body else None


def scrape(d, headers=None):
    status, hdrs, body = d.http("admin", "GET", "/metrics", headers=headers)
    if status != 200:
        raise AssertionError("/metrics answered %s: %r" % (status, body))
    return parse_exposition(body.decode()), hdrs


def wait_metric(d, name, want, timeout=15.0, **labels):
    """Scrapes until the series equals want; fails if it passes want or never gets there."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        fams, _ = scrape(d)
        last = sample(fams, name, **labels)
        if last == want:
            return fams
        if last is not None and last > want:
            raise AssertionError("%s%s is %s, more than the %s expected" % (
                name, labels, last, want))
        time.sleep(0.05)  # polling a condition with a deadline: counters have no event
    raise TimeoutError_("%s%s stayed at %s, expected %s" % (name, labels, last, want))


def proxy_get(d, endpoint, path="/echo"):
    host, port = d.addrs["proxy"]
    c = http.client.HTTPConnection(host, port, timeout=30)
    try:
        c.request("GET", path, headers={"Host": "%s.example.com" % endpoint})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


class AdminTest(unittest.TestCase):
    def start(self, *args, **kw):
        d = Pikod(*args, **kw)
        self.addCleanup(d.stop)
        return d.wait_ready()

    def service(self):
        s = Service.http("svc")
        self.addCleanup(s.stop)
        return s

    def agent(self, d, endpoint, svc, token=None):
        """Starts an agent and waits until pikod has its route (the agent's own
        "registered" comes after the upgrade, possibly before the route is written)."""
        mark = d.mark()
        a = Agent(d.addrs["upstream"], endpoint, svc.forward, token=token)
        self.addCleanup(a.stop)
        a.wait_registered(1, REGISTER_TIMEOUT)
        d.wait_msg("upstream registered", REGISTER_TIMEOUT, start=mark, endpoint=endpoint)
        return a

    def pikoctl(self, d, *args, **kw):
        return run_pikoctl(list(args) + ["--server.url", admin_url(d)], **kw)


# ---------------------------------------------------------------------------------------
# the checker itself
# ---------------------------------------------------------------------------------------
class ExpositionCheckerTest(unittest.TestCase):
    GOOD = ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n"
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
            "h_sum 3.5\nh_count 2\n")

    def test_accepts_a_well_formed_exposition(self):
        fams = parse_exposition(self.GOOD)
        self.assertEqual(sample(fams, "a_total", x="1"), 2)
        self.assertEqual(sample(fams, "h_count"), 2)

    def test_rejects_each_kind_of_mistake(self):
        bad = {
            "undeclared family": self.GOOD + "b 1\n",
            "not cumulative": self.GOOD.replace('le="+Inf"} 2', 'le="+Inf"} 0').replace(
                "h_count 2", "h_count 0"),
            "inf != count": self.GOOD.replace("h_count 2", "h_count 3"),
            "bad label": self.GOOD.replace('x="1"', 'x=1'),
            "family twice": self.GOOD + "# HELP a_total A.\n# TYPE a_total counter\n",
            "no newline at end": self.GOOD[:-1],
            "counter name": self.GOOD.replace("a_total", "a"),
        }
        bad["duplicate series"] = self.GOOD.replace("a_total{x=\"1\"} 2\n",
                                                    "a_total{x=\"1\"} 2\na_total{x=\"1\"} 3\n")
        for what, text in bad.items():
            with self.subTest(what):
                with self.assertRaises(ExpositionError):
                    parse_exposition(text)


# ---------------------------------------------------------------------------------------
# /metrics
# ---------------------------------------------------------------------------------------
FAMILIES = [
    "piko_proxy_requests_total", "piko_proxy_request_latency_seconds",
    "piko_proxy_requests_in_flight", "piko_upstreams_connected_upstreams",
    "piko_upstreams_registered_endpoints", "piko_upstreams_upstream_requests_total",
    "pikod_worker_up", "pikod_handoffs_total", "pikod_reloads_total",
    "pikod_child_restarts_total", "pikod_streams_opened_total", "pikod_bytes_total",
    "pikod_process_resident_memory_bytes", "pikod_process_open_fds", "pikod_generation",
    "pikod_start_time_seconds", "piko_cluster_nodes",
]


class MetricsTest(AdminTest):
    def test_exposition_is_well_formed_with_every_family(self):
        d = self.start(["--workers", "2"])
        fams, hdrs = scrape(d)
        self.assertEqual(hdrs["content-type"], "text/plain; version=0.0.4; charset=utf-8")
        for f in FAMILIES:
            self.assertIn(f, fams)
        self.assertEqual(sample(fams, "pikod_worker_up", worker="0"), 1)
        self.assertEqual(sample(fams, "pikod_worker_up", worker="1"), 1)
        self.assertIsNone(sample(fams, "pikod_worker_up", worker="2"))
        self.assertEqual(sample(fams, "pikod_generation"), 1)
        start = sample(fams, "pikod_start_time_seconds")
        self.assertLess(abs(start - time.time()), 120)
        # Every process of the node: the supervisor and its four children.
        rss = fams["pikod_process_resident_memory_bytes"]["samples"]
        fds = fams["pikod_process_open_fds"]["samples"]
        roles = sorted(dict(k[1])["role"] for k in rss)
        self.assertEqual(roles, ["admin", "cluster", "supervisor", "worker", "worker"])
        self.assertTrue(all(v > 0 for v in rss.values()))
        self.assertTrue(all(v >= 3 for v in fds.values()))

    def test_counters_match_traffic_across_worker_kill_and_reload(self):
        d = self.start(["--workers", "4"])
        svc = self.service()
        self.agent(d, "metrics-ep", svc)

        def traffic(n):
            for _ in range(n):
                status, _ = proxy_get(d, "metrics-ep")
                self.assertEqual(status, 200)

        traffic(20)
        fams = wait_metric(d, "piko_proxy_requests_total", 20, status="2xx")
        self.assertEqual(sample(fams, "pikod_proxy_requests_by_method_total", method="GET"), 20)
        self.assertEqual(sample(fams, "piko_proxy_request_latency_seconds_count"), 20)
        self.assertEqual(sample(fams, "piko_upstreams_upstream_requests_total"), 20)
        self.assertEqual(sample(fams, "pikod_handoffs_total", direction="sent"),
                         sample(fams, "pikod_handoffs_total", direction="received"))
        self.assertGreater(sample(fams, "pikod_bytes_total", direction="out"), 0)

        # SIGKILL a worker that does not hold the tunnel: its counters must survive.
        _, up = get_json(d, "/status/upstream/upstreams")
        tunnel_slot = up[0]["worker"]
        victim_slot, victim = next((s, p) for s, p in sorted(d.worker_pids().items())
                                   if s != tunnel_slot)
        mark = d.mark()
        os.kill(victim, signal.SIGKILL)
        d.wait_msg("child ready", start=mark, slot=victim_slot)
        fams = wait_metric(d, "pikod_child_restarts_total", 1, role="worker")
        self.assertEqual(sample(fams, "piko_proxy_requests_total", status="2xx"), 20)
        traffic(10)
        wait_metric(d, "piko_proxy_requests_total", 30, status="2xx")

        # Reload: a new generation adds to the same totals.
        mark = d.mark()
        d.signal(signal.SIGHUP)
        d.wait_msg("reload complete", start=mark, timeout=30)
        # The draining worker closes the tunnel; the agent registers with generation 2.
        d.wait_msg("upstream registered", REGISTER_TIMEOUT, start=mark, endpoint="metrics-ep",
                   generation=2)
        fams = wait_metric(d, "pikod_reloads_total", 1, result="success")
        self.assertEqual(sample(fams, "pikod_generation"), 2)
        self.assertEqual(sample(fams, "piko_proxy_requests_total", status="2xx"), 30)
        traffic(5)
        fams = wait_metric(d, "piko_proxy_requests_total", 35, status="2xx")
        self.assertEqual(sample(fams, "piko_proxy_request_latency_seconds_count"), 35)
        self.assertEqual(sample(fams, "pikod_proxy_requests_by_method_total", method="GET"), 35)
        for w in range(4):
            self.assertIn(sample(fams, "pikod_worker_up", worker=str(w)), (0, 1))

    def test_no_upstream_answers_are_counted_as_5xx(self):
        d = self.start(["--workers", "2"])
        for _ in range(3):
            status, _ = proxy_get(d, "nobody-here")
            self.assertEqual(status, 502)
        fams = wait_metric(d, "pikod_no_upstream_requests_total", 3)
        self.assertEqual(sample(fams, "piko_proxy_requests_total", status="5xx"), 3)


# ---------------------------------------------------------------------------------------
# status API and pikoctl listings
# ---------------------------------------------------------------------------------------
class StatusTest(AdminTest):
    def test_endpoints_list_shows_a_registered_endpoint(self):
        d = self.start(["--workers", "2"])
        svc = self.service()
        self.agent(d, "ep-list", svc)
        self.assertEqual(get_json(d, "/status/upstream/endpoints"), (200, {"ep-list": 1}))

        code, out, err = self.pikoctl(d, "endpoints", "list")
        self.assertEqual(code, 0, err)
        rows = [line.split() for line in out.splitlines()]
        self.assertEqual(rows, [["ENDPOINT", "UPSTREAMS"], ["ep-list", "1"]])
        # Aligned: the second column starts at the same offset in every row.
        lines = out.splitlines()
        self.assertEqual(lines[0].index("UPSTREAMS"), lines[1].index("1"))

        code, out, err = self.pikoctl(d, "endpoints", "list", "-o", "json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), {"ep-list": 1})

        fams, _ = scrape(d)
        self.assertEqual(sample(fams, "piko_upstreams_registered_endpoints"), 1)
        self.assertEqual(sample(fams, "piko_upstreams_connected_upstreams"), 1)

    def test_upstreams_list_describes_each_tunnel(self):
        d = self.start(["--workers", "2"])
        svc = self.service()
        before = time.time()
        self.agent(d, "ep-up", svc)
        status, ups = get_json(d, "/status/upstream/upstreams")
        self.assertEqual(status, 200)
        self.assertEqual(len(ups), 1)
        u = ups[0]
        self.assertEqual(u["endpoint"], "ep-up")
        self.assertIn(u["worker"], d.worker_pids())
        self.assertEqual(u["generation"], 1)
        self.assertEqual(u["in_flight_streams"], 0)
        self.assertRegex(u["remote"], r"^127\.0\.0\.1:\d+$")
        self.assertIsNone(u["token_expiry"])
        since = datetime.strptime(u["connected_since"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp()
        self.assertGreaterEqual(since, before - 2)
        self.assertLessEqual(since, time.time() + 2)
        code, out, err = self.pikoctl(d, "upstreams", "list")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.splitlines()[1].split()[:5],
                         ["ep-up", str(u["worker"]), "1", u["tunnel_id"], u["remote"]])

    def test_cluster_nodes_lists_the_local_node(self):
        d = self.start(["--workers", "1", "--cluster.node-id", "node-a"])
        status, nodes = get_json(d, "/status/cluster/nodes")
        self.assertEqual(status, 200)
        self.assertEqual([n["id"] for n in nodes], ["node-a"])
        self.assertEqual(nodes[0]["status"], "active")
        self.assertEqual(nodes[0]["admin_addr"], "%s:%d" % d.addrs["admin"])
        self.assertEqual(get_json(d, "/status/cluster/nodes/local"), (200, nodes[0]))
        self.assertEqual(get_json(d, "/status/cluster/nodes/node-a"), (200, nodes[0]))
        status, body = get_json(d, "/status/cluster/nodes/node-b")
        self.assertEqual((status, set(body)), (404, {"error"}))
        code, out, err = self.pikoctl(d, "cluster", "nodes")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.splitlines()[1].split()[:2], ["node-a", "active"])
        code, out, err = self.pikoctl(d, "cluster", "node", "node-b")
        self.assertEqual(code, 1)
        self.assertIn("404", err)

    def test_forward_to_this_node_is_served_and_to_others_is_404(self):
        d = self.start(["--workers", "1", "--cluster.node-id", "node-a"])
        self.assertEqual(get_json(d, "/status/upstream/endpoints?forward=node-a"), (200, {}))
        self.assertEqual(get_json(d, "/status/upstream/endpoints?forward=node-z"),
                         (404, {"error": "unknown node"}))
        code, out, err = self.pikoctl(d, "endpoints", "list", "--forward", "node-z")
        self.assertEqual(code, 1)
        self.assertIn("404", err)
        self.assertIn("unknown node", err)

    def test_node_id_is_prefix_and_random_and_stable_across_an_admin_respawn(self):
        d = self.start(["--workers", "1", "--cluster.node-id-prefix", "edge-"])
        _, first = get_json(d, "/status")
        self.assertRegex(first["node_id"], r"^edge-[a-z0-9]{10}$")
        admin_slot, admin_pid = next((s, p) for s, (p, role, _) in d.children().items()
                                     if role == "admin")
        mark = d.mark()
        os.kill(admin_pid, signal.SIGKILL)
        d.wait_msg("child ready", start=mark, slot=admin_slot)
        _, again = get_json(d, "/status")
        self.assertEqual(again["node_id"], first["node_id"])
        self.assertEqual(again["restarts"]["admin"], 1)

    def test_status_command(self):
        d = self.start(["--workers", "2"])
        code, out, err = self.pikoctl(d, "status", "-o", "json")
        self.assertEqual(code, 0, err)
        s = json.loads(out)
        self.assertEqual(s["generation"], 1)
        self.assertEqual(s["workers"], {"configured": 2, "up": 2})
        self.assertEqual(s["endpoints"], 0)
        self.assertTrue(s["ready"])
        code, out, err = self.pikoctl(d, "status")
        self.assertEqual(code, 0, err)
        self.assertIn("Workers:     2 of 2 up", out)
        self.assertIn("Generation:  1", out)


# ---------------------------------------------------------------------------------------
# reload
# ---------------------------------------------------------------------------------------
class DeferredAcceptTest(AdminTest):
    """The proxy port holds a connection in the kernel until the client speaks
    (TCP_DEFER_ACCEPT): a worker is woken once per connection, with a request to read."""

    def test_a_connection_that_has_sent_nothing_is_not_held_by_a_worker(self):
        d = self.start(["--workers", "1", "--proxy.http.read-header-timeout", "30s"])
        svc = self.service()
        self.agent(d, "defer-ep", svc)
        silent = []
        for _ in range(8):
            s = socket.create_connection(d.addrs["proxy"], timeout=30)
            self.addCleanup(s.close)
            silent.append(s)
        # A connection made after the silent ones, served and kept alive. One worker takes
        # its accept queue in order, so without deferring it would hold all nine now.
        c = http.client.HTTPConnection(*d.addrs["proxy"], timeout=30)
        self.addCleanup(c.close)
        c.request("GET", "/echo", headers={"Host": "defer-ep.example.com"})
        r = c.getresponse()
        r.read()
        self.assertEqual(r.status, 200)
        wait_metric(d, "pikod_proxy_connections", 1)
        # Once they speak they are accepted and served, none lost.
        for s in silent:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: defer-ep.example.com\r\n"
                      b"Connection: close\r\n\r\n")
        for s in silent:
            r = read_response(s.makefile("rb"))
            self.assertIsNotNone(r, "connection closed without an answer")
            self.assertEqual(r.status, 200)
        wait_metric(d, "pikod_proxy_connections", 1)

    def test_a_client_that_never_speaks_is_accepted_and_timed_out(self):
        # Held for about read_header_timeout in the kernel, then given it again by pikod.
        d = self.start(["--workers", "1", "--proxy.http.read-header-timeout", "1s"])
        s = socket.create_connection(d.addrs["proxy"], timeout=30)
        self.addCleanup(s.close)
        status, took = read_head_timeout_answer(s)
        self.assertIn(status, (None, 408))
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 15.0)


class ReloadTest(AdminTest):
    def test_pikoctl_reload_succeeds_then_fails_on_a_broken_config(self):
        d = self.start(config="workers = 1;\n")
        code, out, err = self.pikoctl(d, "reload")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), "reload complete: generation 2")

        with open(d.config_path, "w") as f:
            f.write("workers = ;\n")
        code, out, err = self.pikoctl(d, "reload")
        self.assertEqual(code, 1, out)
        self.assertIn("reload failed", err)
        self.assertIn("pikod.conf:1", err)
        fams, _ = scrape(d)
        self.assertEqual(sample(fams, "pikod_reloads_total", result="success"), 1)
        self.assertEqual(sample(fams, "pikod_reloads_total", result="failure"), 1)
        self.assertEqual(sample(fams, "pikod_generation"), 2)

    def test_reload_needs_post(self):
        d = self.start(["--workers", "1"])
        status, hdrs, _ = d.http("admin", "GET", "/reload")
        self.assertEqual((status, hdrs.get("allow")), (405, "POST"))


# ---------------------------------------------------------------------------------------
# admin auth
# ---------------------------------------------------------------------------------------
SECRET = "admin-test-secret"


def hs_token(secret, exp_in=600):
    if jwt is None:
        raise AssertionError("python3-jwt is not importable (run with /usr/bin/python3)")
    t = jwt.encode({"iat": int(time.time()) - 5, "exp": int(time.time()) + exp_in}, secret,
                   algorithm="HS256")
    return t.decode() if isinstance(t, bytes) else t


class AuthTest(AdminTest):
    def test_token_required_except_for_probes(self):
        d = self.start(["--workers", "1", "--admin.auth.hmac-secret-key", SECRET])
        status, hdrs, body = d.http("admin", "GET", "/metrics")
        self.assertEqual((status, json.loads(body)), (401, {"error": "missing authorization"}))
        self.assertEqual(hdrs.get("www-authenticate"), "Bearer")
        status, _, _ = d.http("admin", "GET", "/metrics",
                              headers={"Authorization": "Bearer " + hs_token(SECRET)})
        self.assertEqual(status, 200)
        status, _, body = d.http("admin", "GET", "/status",
                                 headers={"Authorization": "Bearer " + hs_token("other")})
        self.assertEqual((status, json.loads(body)), (401, {"error": "invalid token"}))
        for probe in ("/health", "/ready"):
            status, _, _ = d.http("admin", "GET", probe)
            self.assertEqual(status, 200, probe)

    def test_probes_need_a_token_when_not_exempt(self):
        d = self.start(["--workers", "1", "--admin.auth.hmac-secret-key", SECRET,
                        "--admin.auth.exempt-probes", "false"])
        status, _, _ = d.http("admin", "GET", "/health")
        self.assertEqual(status, 401)

    def test_pikoctl_with_and_without_token(self):
        d = self.start(["--workers", "1", "--admin.auth.hmac-secret-key", SECRET])
        code, out, err = self.pikoctl(d, "status")
        self.assertEqual(code, 1)
        self.assertIn("401", err)
        self.assertIn("--token", err)
        code, out, err = self.pikoctl(d, "status", "--token", hs_token(SECRET))
        self.assertEqual(code, 0, err)
        with tempfile.NamedTemporaryFile("w", suffix=".jwt") as f:
            f.write(hs_token(SECRET) + "\n")
            f.flush()
            code, out, err = self.pikoctl(d, "endpoints", "list", "--token-file", f.name)
            self.assertEqual(code, 0, err)


# ---------------------------------------------------------------------------------------
# token create and CLI errors (no server needed)
# ---------------------------------------------------------------------------------------
class TokenTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pikoctl-token-")

    def tearDown(self):
        subprocess.run(["rm", "-rf", self.dir])

    def path(self, name, content=None):
        p = os.path.join(self.dir, name)
        if content is not None:
            with open(p, "w") as f:
                f.write(content)
        return p

    def test_hmac_token_verifies_with_pyjwt(self):
        if jwt is None:
            self.fail("python3-jwt is not importable (run with /usr/bin/python3)")
        secret = self.path("secret", "s3cret-value\n")
        code, out, err = run_pikoctl(["token", "create", "--endpoints", "a,b", "--expires",
                                      "24h", "--hmac-secret-file", secret, "--audience", "aud",
                                      "--issuer", "iss"])
        self.assertEqual(code, 0, err)
        claims = jwt.decode(out.strip(), "s3cret-value", algorithms=["HS256"], audience="aud",
                            issuer="iss")
        self.assertEqual(claims["piko"], {"endpoints": ["a", "b"]})
        self.assertEqual(claims["exp"] - claims["iat"], 24 * 3600)
        self.assertLess(abs(claims["iat"] - time.time()), 60)

    def test_ecdsa_and_rsa_tokens_verify_with_pyjwt(self):
        if jwt is None:
            self.fail("python3-jwt is not importable (run with /usr/bin/python3)")
        for kind, gen, alg in (
                ("ecdsa", ["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout"],
                 "ES256"),
                ("rsa", ["openssl", "genpkey", "-algorithm", "RSA",
                         "-pkeyopt", "rsa_keygen_bits:2048"], "RS256")):
            with self.subTest(kind):
                key = self.path(kind + ".pem")
                subprocess.run(gen + ["-out", key], check=True, capture_output=True)
                pub = subprocess.run(["openssl", "pkey", "-in", key, "-pubout"], check=True,
                                     capture_output=True).stdout
                code, out, err = run_pikoctl(["token", "create", "--%s-private-key-file" % kind,
                                              key, "--expires", "1h", "-o", "json"])
                self.assertEqual(code, 0, err)
                doc = json.loads(out)
                claims = jwt.decode(doc["token"], pub, algorithms=[alg])
                self.assertEqual(claims["exp"] - claims["iat"], 3600)
                self.assertNotIn("piko", claims)

    def test_token_create_usage_errors(self):
        secret = self.path("secret", "x")
        cases = [
            ["token", "create"],
            ["token", "create", "--hmac-secret-file", secret, "--expires", "soon"],
            ["token", "create", "--hmac-secret-file", secret, "--endpoints", "a,b c"],
        ]
        for args in cases:
            with self.subTest(args=args):
                code, _, err = run_pikoctl(args)
                self.assertEqual(code, 2, err)
        code, _, err = run_pikoctl(["token", "create", "--hmac-secret-file",
                                    self.path("missing")])
        self.assertEqual(code, 1)
        self.assertIn("No such file", err)


class CliErrorTest(unittest.TestCase):
    def test_connection_refused_is_named(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        code, out, err = run_pikoctl(["endpoints", "list", "--server.url",
                                      "http://127.0.0.1:%d" % port])
        self.assertEqual(code, 1)
        self.assertIn("connection refused", err)

    def test_usage_errors_exit_2(self):
        for args in (["bogus"], ["endpoints"], ["status", "--no-such-flag", "x"],
                     ["status", "--server.url", "https://127.0.0.1:8002"],
                     ["status", "--tls.root-cas", "/etc/ssl/certs/ca-certificates.crt"],
                     ["status", "-o", "yaml"], ["status", "--timeout", "soon"], []):
            with self.subTest(args=args):
                code, _, err = run_pikoctl(args)
                self.assertEqual(code, 2, err)
                self.assertTrue(err.startswith("pikoctl: ") or "Usage" in err, err)

    def test_https_is_named_as_unsupported(self):
        code, _, err = run_pikoctl(["status", "--server.url", "https://127.0.0.1:8002"])
        self.assertIn("https is not supported", err)


if __name__ == "__main__":
    unittest.main()
