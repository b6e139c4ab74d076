"""Tunnels end to end: a real agent (go-agent: hashicorp/yamux + gorilla/websocket) registers
on the upstream port, real services sit behind it, real clients talk to the proxy port.

Every test starts its own pikod, services and agents and stops them with addCleanup. Waits
are for events (a log record, a printed line, an answer) with deadlines."""
import collections
import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time
import unittest

from harness import (Load, Pikod, Service, TcpEcho, Agent, run_ws_client, read_response,
                     wait_records, TimeoutError_, read_head_timeout_answer)
from upstream_service import pattern, pattern_chunks

try:
    import jwt  # Debian's python3-jwt
except ImportError:  # pragma: no cover - reported by the tests that need it
    jwt = None

KIB = 1024
MIB = 1024 * 1024
REGISTER_TIMEOUT = 10.0


def token(secret, endpoints=None, exp_in=600):
    """An HS256 JWT; `endpoints` fills the piko.endpoints claim; exp_in < 0 is expired."""
    if jwt is None:
        raise AssertionError("python3-jwt is not importable (run with /usr/bin/python3)")
    claims = {"sub": "integration-test", "iat": int(time.time()) - 5,
              "exp": int(time.time()) + exp_in}
    if endpoints is not None:
        claims["piko"] = {"endpoints": list(endpoints)}
    t = jwt.encode(claims, secret, algorithm="HS256")
    return t.decode() if isinstance(t, bytes) else t


def request(addr, method, path, endpoint=None, host=None, headers=None, body=None,
            timeout=30.0, encode_chunked=False):
    """One request on a fresh connection to addr; returns (status, headers, body).
    Host is `<endpoint>.example.com` unless host is given."""
    h = {}
    if host is not None:
        h["Host"] = host
    elif endpoint is not None:
        h["Host"] = "%s.example.com" % endpoint
    h.update(headers or {})
    c = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h, encode_chunked=encode_chunked)
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


def metric(d, sample):
    """The value of one sample line of pikod's /metrics."""
    status, hdrs, body = d.http("admin", "GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError("no %s in /metrics" % sample)


def echo_headers(doc, name):
    """Values of header `name` (any case) as the upstream saw them, in order."""
    return [v for k, v in doc["headers"] if k.lower() == name.lower()]


def sha_of_pattern(n):
    h = hashlib.sha256()
    for piece in pattern_chunks(n):
        h.update(piece)
    return h.hexdigest()


def raw_agent(addr, endpoint):
    """A registration by hand: the upgrade request sent, nothing read. An agent that says
    nothing after its upgrade is an idle one."""
    s = socket.create_connection(addr, timeout=20)
    s.sendall(("GET /piko/v1/upstream/%s HTTP/1.1\r\nHost: x\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n" % endpoint).encode())
    return s


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise AssertionError("connection closed after %d of %d bytes" % (len(out), n))
        out += chunk
    return out


def read_upgrade(s):
    """The response head of a raw_agent, byte by byte so no frame after it is consumed."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += recv_exact(s, 1)
    return head


def expect_upstream(addr, endpoint, upstream_id):
    """One request on a fresh connection through the tunnel: None if the expected upstream
    answered 200, else what came back."""
    status, headers, body = request(addr, "GET", "/status?code=200", endpoint=endpoint,
                                    timeout=20)
    if status == 200 and headers.get("x-upstream-id") == upstream_id:
        return None
    return "unexpected answer %s %r" % (status, body[:200])


class TunnelTest(unittest.TestCase):
    # ---- fixtures ----
    def pikod(self, *args, workers=2):
        d = Pikod(["--workers", str(workers)] + list(args))
        self.addCleanup(d.stop)
        return d.wait_ready()

    def service(self, upstream_id):
        s = Service.http(upstream_id)
        self.addCleanup(s.stop)
        return s

    def agent(self, d, endpoint, forward, tok=None):
        a = Agent(d.addrs["upstream"], endpoint, forward, tok)
        self.addCleanup(a.stop)
        return a

    def tunnel(self, d, endpoint, forward, tok=None):
        """Starts an agent and waits until it printed `registered` and pikod logged the
        registration (the route exists). Returns (agent, "upstream registered" record)."""
        mark = d.mark()
        a = self.agent(d, endpoint, forward, tok)
        a.wait_registered(1, REGISTER_TIMEOUT)
        _, rec = d.wait_msg("upstream registered", 10, start=mark, subsystem="upstream",
                            endpoint=endpoint)
        return a, rec

    def assertJsonError(self, answer, status, message):
        code, headers, body = answer
        self.assertEqual(code, status, body[:300])
        self.assertEqual(headers.get("content-type"), "application/json")
        self.assertEqual(json.loads(body), {"error": message})

    def get_echo(self, d, endpoint, path="/echo", **kw):
        status, headers, body = request(d.addrs["proxy"], "GET", path, endpoint=endpoint, **kw)
        self.assertEqual(status, 200, body[:300])
        return json.loads(body)

    # ---- 1. bodies ----
    def test_http_request_bodies_get_post_put(self):
        d = self.pikod()
        svc = self.service("bodies")
        self.tunnel(d, "bodies", svc.forward)
        for method in ("GET", "POST", "PUT"):
            for size in (0, 4 * KIB, MIB):
                data = pattern(size)
                status, headers, body = request(d.addrs["proxy"], method, "/echo/up",
                                                endpoint="bodies", body=data)
                self.assertEqual(status, 200, (method, size, body[:300]))
                doc = json.loads(body)
                self.assertEqual((doc["method"], doc["body_length"], doc["body_sha256"]),
                                 (method, size, hashlib.sha256(data).hexdigest()))
        # 64 MiB streamed from a generator (never held in memory whole).
        n = 64 * MIB
        status, headers, body = request(d.addrs["proxy"], "POST", "/echo/big", endpoint="bodies",
                                        body=pattern_chunks(n),
                                        headers={"Content-Length": str(n)}, timeout=120)
        self.assertEqual(status, 200, body[:300])
        doc = json.loads(body)
        self.assertEqual((doc["body_length"], doc["body_sha256"]), (n, sha_of_pattern(n)))

    def test_http_response_bodies(self):
        d = self.pikod()
        svc = self.service("bodies")
        self.tunnel(d, "bodies", svc.forward)
        for size in (0, 4 * KIB, MIB, 64 * MIB):
            c = http.client.HTTPConnection(*d.addrs["proxy"], timeout=120)
            self.addCleanup(c.close)
            c.request("GET", "/bytes?n=%d" % size, headers={"Host": "bodies.example.com"})
            r = c.getresponse()
            self.assertEqual(r.status, 200, size)
            self.assertEqual(r.getheader("X-Upstream-Id"), "bodies")
            got = 0
            while True:
                piece = r.read(256 * KIB)
                if not piece:
                    break
                self.assertEqual(piece, pattern(len(piece), got), "bytes at %d of %d differ" % (
                    got, size))
                got += len(piece)
            self.assertEqual(got, size)
            c.close()

    def test_stalled_reader_does_not_make_pikod_buffer(self):
        # A client that stops reading a 64 MiB response: flow control must stop the agent
        # after a window, so pikod's memory stays flat while the client stalls.
        d = self.pikod(workers=1)
        svc = self.service("stall")
        self.tunnel(d, "stall", svc.forward)

        def pikod_rss_kib():
            total = 0
            for pid in [d.proc.pid] + [p for p, _, _ in d.children().values()]:
                try:
                    with open("/proc/%d/status" % pid) as f:
                        total += int(next(l for l in f if l.startswith("VmRSS")).split()[1])
                except (OSError, StopIteration):
                    pass
            return total

        before = pikod_rss_kib()
        s = socket.create_connection(d.addrs["proxy"])
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
        s.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: stall.example.com\r\n\r\n" % (64 * MIB))
        buf = s.recv(64 * KIB)
        # The stall is the behaviour under test: give the upstream time to push if it could.
        time.sleep(2)
        grown = pikod_rss_kib() - before
        self.assertLess(grown, 16 * 1024, "pikod grew by %d KiB while the client stalled" % grown)
        # And the response is still intact once the client reads on.
        s.settimeout(60)
        while b"\r\n\r\n" not in buf:
            buf += s.recv(64 * KIB)
        body = buf.split(b"\r\n\r\n", 1)[1]
        got = len(body)
        while got < 64 * MIB:
            piece = s.recv(1024 * KIB)
            if not piece:
                break
            got += len(piece)
        self.assertGreaterEqual(got, 64 * MIB - 64 * KIB)

    def test_token_expiry_disconnects_the_upstream(self):
        d = self.pikod("--upstream.auth.hmac-secret-key", self.UPSTREAM_SECRET)
        svc = self.service("exp")
        mark = d.mark()
        self.tunnel(d, "exp", svc.forward, token(self.UPSTREAM_SECRET, ["exp"], exp_in=2))
        _, rec = d.wait_msg("upstream disconnected", 15, start=mark, endpoint="exp")
        self.assertEqual(rec["reason"], "token expired")

    def test_access_log_is_json_and_keeps_secrets_out(self):
        d = self.pikod("--proxy.access-log.request-headers", "X-Trace",
                       "--proxy.access-log.response-headers", "X-Upstream-Id")
        svc = self.service("logged")
        self.tunnel(d, "logged", svc.forward)
        mark = d.mark()
        code, _, _ = request(d.addrs["proxy"], "GET", "/echo?q=1", endpoint="logged",
                             headers={"Authorization": "Bearer s3cr3t-token",
                                      "X-Trace": "trace-42"})
        self.assertEqual(code, 200)
        _, rec = d.wait_msg("request", 10, start=mark, subsystem="proxy.access")
        self.assertEqual(rec["endpoint"], "logged")
        self.assertEqual(rec["method"], "GET")
        self.assertEqual(rec["path"], "/echo?q=1")
        self.assertEqual(rec["status"], 200)
        self.assertEqual(rec["level"], "info")
        self.assertEqual(rec["request_headers"], {"X-Trace": "trace-42"})
        self.assertEqual(rec["response_headers"], {"X-Upstream-Id": "logged"})
        self.assertGreater(rec["response_bytes"], 0)
        for line in d.raw_lines:
            json.loads(line)  # every line on stderr is one JSON object
            self.assertNotIn("s3cr3t-token", line)
        # 5xx answers are logged at warn level.
        mark = d.mark()
        request(d.addrs["proxy"], "GET", "/", endpoint="nobody")
        _, rec = d.wait_msg("request", 10, start=mark, subsystem="proxy.access")
        self.assertEqual((rec["status"], rec["level"]), (502, "warn"))

    # ---- 2. chunked ----
    def test_chunked_request_and_response_bodies(self):
        d = self.pikod()
        svc = self.service("chunks")
        self.tunnel(d, "chunks", svc.forward)
        sizes = [1, 100, 4093, 65536, 300000, 7]

        def pieces():
            off = 0
            for s in sizes:
                yield pattern(s, off)
                off += s

        total = sum(sizes)
        status, headers, body = request(d.addrs["proxy"], "POST", "/echo/chunked",
                                        endpoint="chunks", body=pieces(),
                                        headers={"Transfer-Encoding": "chunked"},
                                        encode_chunked=True)
        self.assertEqual(status, 200, body[:300])
        doc = json.loads(body)
        self.assertEqual((doc["body_length"], doc["body_sha256"]),
                         (total, hashlib.sha256(pattern(total)).hexdigest()))
        n = 1000003
        status, headers, body = request(d.addrs["proxy"], "GET", "/chunked?n=%d&chunk=4093" % n,
                                        endpoint="chunks")
        self.assertEqual(status, 200)
        self.assertEqual(len(body), n)
        self.assertEqual(body, pattern(n))

    # ---- 3. what the upstream sees ----
    def test_path_query_host_and_forwarding_headers(self):
        d = self.pikod()
        svc = self.service("hdrs")
        self.tunnel(d, "hdrs", svc.forward)
        target = "/echo/a%2Fb%20c/%7Euser/%E2%9C%93?q=a%20b&x=%2F&y=1+2&empty=&flag&z=%3D%26"
        status, headers, body = request(d.addrs["proxy"], "GET", target,
                                        host="hdrs.example.com:8443",
                                        headers={"X-Forwarded-For": "10.1.2.3",
                                                 "Connection": "keep-alive, X-Hop",
                                                 "X-Hop": "secret",
                                                 "Keep-Alive": "timeout=5",
                                                 "Proxy-Authorization": "Basic dXNlcjpwYXNz",
                                                 "X-Custom": "kept as is"})
        self.assertEqual(status, 200, body[:300])
        doc = json.loads(body)
        self.assertEqual(doc["raw_target"], target)
        self.assertEqual(echo_headers(doc, "Host"), ["hdrs.example.com:8443"])
        xff = [v.strip() for line in echo_headers(doc, "X-Forwarded-For")
               for v in line.split(",")]
        self.assertEqual(xff, ["10.1.2.3", "127.0.0.1"])
        self.assertEqual([v.lower() for v in echo_headers(doc, "X-Piko-Forward")], ["true"])
        self.assertEqual(echo_headers(doc, "X-Custom"), ["kept as is"])
        for hop in ("X-Hop", "Keep-Alive", "Proxy-Authorization"):
            self.assertEqual(echo_headers(doc, hop), [], hop)
        for conn in echo_headers(doc, "Connection"):
            self.assertNotIn("x-hop", conn.lower())
            self.assertNotIn("keep-alive", conn.lower())

    # ---- 4. routing ----
    def test_routing_by_header_and_host_keeps_endpoints_apart(self):
        d = self.pikod()
        alpha, beta = self.service("svc-alpha"), self.service("svc-beta")
        self.tunnel(d, "alpha", alpha.forward)
        self.tunnel(d, "beta", beta.forward)
        cases = [
            ({"Host": "localhost", "x-piko-endpoint": "alpha"}, "svc-alpha"),
            ({"Host": "localhost", "x-piko-endpoint": "beta"}, "svc-beta"),
            ({"Host": "alpha.example.com"}, "svc-alpha"),
            ({"Host": "beta.example.com"}, "svc-beta"),
            ({"Host": "alpha.example.com:8000"}, "svc-alpha"),
            ({"Host": "alpha.example.com", "x-piko-endpoint": "beta"}, "svc-beta"),
            ({"Host": "beta.example.com", "x-piko-endpoint": "alpha"}, "svc-alpha"),
        ]
        for _ in range(5):
            for hdrs, want in cases:
                status, headers, body = request(d.addrs["proxy"], "GET", "/echo/route",
                                                headers=hdrs)
                self.assertEqual(status, 200, (hdrs, body[:300]))
                self.assertEqual(headers.get("x-upstream-id"), want, hdrs)
                self.assertEqual(json.loads(body)["id"], want, hdrs)

    # ---- 5. load balancing ----
    def test_two_agents_on_one_endpoint_share_requests(self):
        d = self.pikod()
        s1, s2 = self.service("one"), self.service("two")
        self.tunnel(d, "shared", s1.forward)
        self.tunnel(d, "shared", s2.forward)
        counts = collections.Counter()
        for _ in range(200):
            status, headers, body = request(d.addrs["proxy"], "GET", "/status?code=200",
                                            endpoint="shared")
            self.assertEqual(status, 200, body[:300])
            counts[headers.get("x-upstream-id")] += 1
        self.assertEqual(set(counts), {"one", "two"}, counts)
        self.assertGreaterEqual(counts["one"], 20, counts)
        self.assertGreaterEqual(counts["two"], 20, counts)

    # ---- 6. / 7. no upstream ----
    def test_agent_disconnect_logs_and_then_502(self):
        d = self.pikod()
        svc = self.service("gone")
        agent, rec = self.tunnel(d, "gone", svc.forward)
        self.assertEqual(self.get_echo(d, "gone")["id"], "gone")
        mark = d.mark()
        agent.proc.kill()
        agent.wait_exit(10)
        _, disc = d.wait_msg("upstream disconnected", 10, start=mark, subsystem="upstream",
                             endpoint="gone")
        self.assertEqual(disc["tunnel_id"], rec["tunnel_id"])
        for _ in range(3):
            self.assertJsonError(request(d.addrs["proxy"], "GET", "/echo", endpoint="gone"),
                                 502, "no available upstreams")

    def test_no_agent_is_502_and_no_endpoint_is_400(self):
        d = self.pikod()
        self.assertJsonError(request(d.addrs["proxy"], "GET", "/echo", endpoint="nobody"),
                             502, "no available upstreams")
        self.assertJsonError(request(d.addrs["proxy"], "GET", "/echo", host="localhost"),
                             400, "missing endpoint id")

    # ---- 8. timeout ----
    def test_slow_upstream_is_504_after_proxy_timeout(self):
        d = self.pikod("--proxy.timeout", "1s")
        svc = self.service("slow")
        self.tunnel(d, "slow", svc.forward)
        started = time.monotonic()
        answer = request(d.addrs["proxy"], "GET", "/slow?ms=3000", endpoint="slow")
        took = time.monotonic() - started
        self.assertJsonError(answer, 504, "upstream timeout")
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 2.9)

    # ---- 9. WebSocket through an HTTP endpoint ----
    def test_websocket_echo_through_http_endpoint(self):
        d = self.pikod()
        echo = Service.ws_echo()
        self.addCleanup(echo.stop)
        self.tunnel(d, "wsecho", echo.forward)
        url = "ws://%s:%d/chat/room?x=1" % d.addrs["proxy"]
        code, out = run_ws_client(url, ["--header", "Host:wsecho.example.com",
                                        "--msg", "lit:hello", "--msg", "lit:h\u00e9llo \u2713",
                                        "--msg", "bin:10", "--msg", "text:70000",
                                        "--msg", "bin:0", "--msg", "bin:%d" % MIB,
                                        "--msg", "text:1"], timeout=60)
        self.assertEqual(code, 0, out)
        oks = [o for o in out if o.get("event") == "ok"]
        self.assertEqual([o["length"] for o in oks], [5, 10, 10, 70000, 0, MIB, 1], out)
        self.assertEqual(out[-1].get("event"), "done", out)

    # ---- 10. TCP endpoints ----
    def test_tcp_endpoint_bytes_echoed_over_websocket(self):
        d = self.pikod()
        echo = TcpEcho()
        self.addCleanup(echo.stop)
        self.tunnel(d, "tcpecho", echo.forward)
        url = "ws://%s:%d/_piko/v1/tcp/tcpecho" % d.addrs["proxy"]
        code, out = run_ws_client(url, ["--stream", "1:1", "--stream", "5000:1000",
                                        "--stream", "%d:65536" % (400 * KIB),
                                        "--stream", "%d:%d" % (300 * KIB, 300 * KIB)],
                                  timeout=60)
        self.assertEqual(code, 0, out)
        oks = [o for o in out if o.get("event") == "ok"]
        self.assertEqual([o["length"] for o in oks], [1, 5000, 400 * KIB, 300 * KIB], out)
        self.assertEqual(echo.connections, 1)

    def test_tcp_endpoint_without_upstream_is_502_before_upgrade(self):
        d = self.pikod()
        s = socket.create_connection(d.addrs["proxy"], timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"GET /_piko/v1/tcp/nobody HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        r = read_response(s.makefile("rb"))
        self.assertIsNotNone(r, "connection closed without an answer")
        self.assertEqual(r.status, 502, r.body)
        self.assertEqual(r.header("content-type"), "application/json")
        self.assertEqual(json.loads(r.body), {"error": "no available upstreams"})

    # ---- 11. keep-alive and pipelining ----
    def test_keepalive_100_requests_on_one_connection(self):
        d = self.pikod()
        svc = self.service("ka")
        self.tunnel(d, "ka", svc.forward)
        c = http.client.HTTPConnection(*d.addrs["proxy"], timeout=30)
        self.addCleanup(c.close)
        c.connect()
        sock = c.sock
        local = sock.getsockname()
        for i in range(100):
            c.request("GET", "/echo/ka/%d" % i, headers={"Host": "ka.example.com"})
            r = c.getresponse()
            body = r.read()
            self.assertEqual(r.status, 200, (i, body[:300]))
            self.assertEqual(json.loads(body)["path"], "/echo/ka/%d" % i)
            # http.client drops the socket after a "Connection: close" answer.
            self.assertIs(c.sock, sock, "connection closed after request %d" % i)
        self.assertEqual(c.sock.getsockname(), local)

    def test_finished_exchanges_end_their_streams_with_and_without_more_traffic(self):
        # pikod's FIN after a complete answer waits for other frames to the agent (at most
        # 10 ms). The Go agent splices each stream to its own service connection and
        # half-closes that connection on the FIN: every exchange's connection must see EOF,
        # the last one with no request after it.
        svc = socket.socket()
        svc.bind(("127.0.0.1", 0))
        svc.listen(64)
        svc.settimeout(20)
        self.addCleanup(svc.close)
        d = self.pikod(workers=1)
        self.tunnel(d, "fin", "127.0.0.1:%d" % svc.getsockname()[1])
        c = http.client.HTTPConnection(*d.addrs["proxy"], timeout=30)
        self.addCleanup(c.close)
        conns = []
        for i in range(20):
            c.request("GET", "/fin/%d" % i, headers={"Host": "fin.example.com"})
            conn, _ = svc.accept()
            self.addCleanup(conn.close)
            conn.settimeout(20)
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                chunk = conn.recv(4096)
                self.assertTrue(chunk, "request %d cut short: %r" % (i, head))
                head += chunk
            self.assertTrue(head.startswith(b"GET /fin/%d " % i), head[:100])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n%03d" % i)
            r = c.getresponse()
            self.assertEqual((r.status, r.read()), (200, b"%03d" % i))
            conns.append(conn)
        for i, conn in enumerate(conns):
            self.assertEqual(conn.recv(1), b"", "no FIN for exchange %d" % i)
            conn.close()  # the agent's FIN follows: the stream ends on both sides
        deadline = time.monotonic() + 15
        while True:
            _, _, body = d.http("admin", "GET", "/status/upstream/upstreams")
            ups = json.loads(body)
            if [u["in_flight_streams"] for u in ups] == [0]:
                break
            self.assertLess(time.monotonic(), deadline, ups)
            time.sleep(0.05)

    def test_pipelined_requests_answered_in_order(self):
        d = self.pikod()
        svc = self.service("pipe")
        self.tunnel(d, "pipe", svc.forward)
        s = socket.create_connection(d.addrs["proxy"], timeout=30)
        self.addCleanup(s.close)
        s.sendall(b"".join(b"GET /echo/p%d HTTP/1.1\r\nHost: pipe.example.com\r\n\r\n" % i
                           for i in (1, 2, 3)))
        f = s.makefile("rb")
        for i in (1, 2, 3):
            r = read_response(f)
            self.assertIsNotNone(r, "connection closed before response %d" % i)
            self.assertEqual(r.status, 200, r.body[:300])
            self.assertEqual(json.loads(r.body)["path"], "/echo/p%d" % i)

    # ---- 12. handoff between workers ----
    def tunnel_on_another_worker(self, d, endpoint, forward, other_slot):
        """A tunnel for endpoint on a worker other than other_slot (the kernel picks the
        accepting worker: bounded retries)."""
        for _ in range(12):
            mark = d.mark()
            agent, rec = self.tunnel(d, endpoint, forward)
            if rec["slot"] != other_slot:
                return agent, rec
            agent.stop()
            d.wait_msg("upstream disconnected", 10, start=mark, endpoint=endpoint,
                       tunnel_id=rec["tunnel_id"])
        self.fail("no tunnel for %s on another worker than slot %s in 12 attempts" % (
            endpoint, other_slot))

    def test_handoff_to_the_worker_holding_the_tunnel(self):
        # A tunnel on each worker, so both accept (tunnel affinity would otherwise leave
        # every connection to the one holding "handoff"); requests for "handoff" that the
        # other worker accepts are handed over with their socket.
        d = self.pikod("--log.subsystems", "handoff", workers=2)
        svc, other = self.service("handoff"), self.service("other")
        _, rec = self.tunnel(d, "handoff", svc.forward)
        self.tunnel_on_another_worker(d, "other", other.forward, rec["slot"])
        mark = d.mark()
        for i in range(200):
            status, headers, body = request(d.addrs["proxy"], "GET", "/status?code=200",
                                            endpoint="handoff")
            self.assertEqual(status, 200, (i, body[:300]))
            self.assertEqual(headers.get("x-upstream-id"), "handoff")

        def matched(records):
            """Every "handed off" (to_slot, tunnel_id) has an "adopted" on that slot (for
            that tunnel, when the adopted records name it)."""
            recs = records[mark:]
            handed = [r for r in recs
                      if r.get("msg") == "handed off" and r.get("subsystem") == "handoff"]
            adopted = [r for r in recs
                       if r.get("msg") == "adopted" and r.get("subsystem") == "handoff"]
            if not handed:
                return None
            if all("tunnel_id" in r for r in adopted):
                want = collections.Counter((r.get("to_slot"), r.get("tunnel_id")) for r in handed)
                have = collections.Counter((r.get("slot"), r.get("tunnel_id")) for r in adopted)
            else:
                want = collections.Counter(r.get("to_slot") for r in handed)
                have = collections.Counter(r.get("slot") for r in adopted)
            return all(have[k] >= n for k, n in want.items()) and (want, have)

        handed, adopted = wait_records(d, matched, 10, "a 'handed off' matched by 'adopted'")
        self.assertGreater(sum(handed.values()), 0)
        self.assertLessEqual(sum(handed.values()), 200)

    def test_handoff_reaches_a_worker_respawned_in_the_slot(self):
        # A worker keeps a socket connected to each worker it hands connections to. Once
        # the tunnel's worker is killed and respawned into its slot, handoffs must reach
        # the new process rather than fail against the dead one's socket.
        d = self.pikod(workers=2)
        svc, other = self.service("respawn"), self.service("other")
        _, rec_o = self.tunnel(d, "other", other.forward)
        agent, rec = self.tunnel_on_another_worker(d, "respawn", svc.forward, rec_o["slot"])

        def handed_off(n):
            sent0 = metric(d, 'pikod_handoffs_total{direction="sent"}')
            for i in range(n):
                status, headers, body = request(d.addrs["proxy"], "GET", "/status?code=200",
                                                endpoint="respawn")
                self.assertEqual((status, headers.get("x-upstream-id")), (200, "respawn"),
                                 (i, body[:300]))
            return metric(d, 'pikod_handoffs_total{direction="sent"}') - sent0

        self.assertGreater(handed_off(100), 0, "no connection was handed off")
        mark = d.mark()
        agent.stop()
        d.wait_msg("upstream disconnected", 10, start=mark, endpoint="respawn")
        mark = d.mark()
        os.kill(rec["pid"], signal.SIGKILL)
        d.wait_msg("child ready", 10, start=mark, slot=rec["slot"])
        _, again = self.tunnel_on_another_worker(d, "respawn", svc.forward, rec_o["slot"])
        self.assertEqual(again["slot"], rec["slot"])
        self.assertNotEqual(again["pid"], rec["pid"])
        self.assertGreater(handed_off(100), 0, "no connection was handed to the new worker")

    def test_workers_without_tunnels_leave_accepting_to_the_holder(self):
        d = self.pikod("--log.subsystems", "proxy", workers=4)
        svc = self.service("affinity")
        mark = d.mark()
        agent, rec = self.tunnel(d, "affinity", svc.forward)
        others = {r["slot"] for r in list(d.records)
                  if r.get("proc") == "worker" and "slot" in r} - {rec["slot"]}
        self.assertEqual(len(others), 3, others)

        def paused(slots, msg):
            def pred(records):
                got = {r.get("slot") for r in records[mark:] if r.get("msg") == msg}
                return slots <= got and got
            return pred

        wait_records(d, paused(others, "not accepting: a sibling holds the tunnels"), 10,
                     "the three workers without a tunnel to stop accepting")
        sent0 = metric(d, 'pikod_handoffs_total{direction="sent"}')
        for i in range(100):  # a new connection each
            status, headers, body = request(d.addrs["proxy"], "GET", "/status?code=200",
                                            endpoint="affinity")
            self.assertEqual((status, headers.get("x-upstream-id")), (200, "affinity"),
                             (i, body[:300]))
        self.assertEqual(metric(d, 'pikod_handoffs_total{direction="sent"}'), sent0,
                         "connections were accepted by workers without the tunnel")
        # The tunnel goes: every worker accepts again.
        mark = d.mark()
        agent.stop()
        wait_records(d, paused(others, "accepting again"), 10,
                     "the three workers to accept again once no worker holds a tunnel")
        for i in range(20):
            self.assertJsonError(request(d.addrs["proxy"], "GET", "/", endpoint="affinity"),
                                 502, "no available upstreams")

    # ---- 13. worker crash ----
    def test_worker_kill_purges_routes_and_agent_comes_back(self):
        d = self.pikod(workers=2)
        sa, sb = self.service("svc-a"), self.service("svc-b")
        agent_a, rec_a = self.tunnel(d, "crash-a", sa.forward)
        rec_b = None
        for _ in range(12):  # bounded: the kernel picks the accepting worker
            mark = d.mark()
            agent_b, rec = self.tunnel(d, "crash-b", sb.forward)
            if rec["slot"] != rec_a["slot"]:
                rec_b = rec
                break
            agent_b.stop()
            d.wait_msg("upstream disconnected", 10, start=mark, endpoint="crash-b",
                       tunnel_id=rec["tunnel_id"])
        self.assertIsNotNone(rec_b, "no agent for crash-b registered on another worker than "
                             "crash-a's (slot %s) in 12 attempts" % rec_a["slot"])
        proxy = d.addrs["proxy"]

        def b_works():
            status, headers, body = request(proxy, "GET", "/status?code=200",
                                            endpoint="crash-b")
            self.assertEqual((status, headers.get("x-upstream-id")), (200, "svc-b"), body)

        self.assertEqual(self.get_echo(d, "crash-a")["id"], "svc-a")
        b_works()
        # Hold A's agent still so the window without an upstream is observable.
        agent_a.signal(signal.SIGSTOP)
        mark = d.mark()
        os.kill(rec_a["pid"], signal.SIGKILL)
        _, purged = d.wait_msg("routes purged", 10, start=mark, slot=rec_a["slot"])
        self.assertGreaterEqual(purged["count"], 1)
        for _ in range(3):
            self.assertJsonError(request(proxy, "GET", "/echo", endpoint="crash-a"),
                                 502, "no available upstreams")
            b_works()
        agent_a.signal(signal.SIGCONT)
        agent_a.wait_registered(2, REGISTER_TIMEOUT)
        d.wait_msg("upstream registered", 10, start=mark, endpoint="crash-a")
        for _ in range(3):
            self.assertEqual(self.get_echo(d, "crash-a")["id"], "svc-a")
            b_works()

    # ---- 14. reload under load ----
    def test_sighup_under_tunnel_load_loses_nothing(self):
        d = self.pikod("--proxy.upstream-wait", "10s", workers=2)
        svc = self.service("reload")
        _, first = self.tunnel(d, "reload", svc.forward)
        self.assertEqual(first["generation"], 1)
        with Load(lambda: expect_upstream(d.addrs["proxy"], "reload", "reload")) as load:
            load.wait_progress(50)
            for gen in (2, 3):
                mark = d.mark()
                d.signal(signal.SIGHUP)
                d.wait_msg("reload complete", 30, start=mark, generation=gen)
                load.wait_progress(50)
            d.wait_msg("upstream registered", 30, start=mark, endpoint="reload", generation=3)
            load.wait_progress(50)
        self.assertEqual(load.errors, [])
        self.assertGreaterEqual(load.ok, 200)

    def test_sighup_with_handoffs_under_load_loses_nothing(self):
        # A tunnel on each worker, so both accept and hand connections to each other over
        # the sockets they keep connected. Each reload starts workers in other slots and
        # retires the old ones, whose sockets the senders may still be connected to.
        d = self.pikod("--proxy.upstream-wait", "10s", workers=2)
        sa, sb = self.service("reload-a"), self.service("reload-b")
        _, rec = self.tunnel(d, "reload-a", sa.forward)
        self.tunnel_on_another_worker(d, "reload-b", sb.forward, rec["slot"])

        def one():
            return (expect_upstream(d.addrs["proxy"], "reload-a", "reload-a")
                    or expect_upstream(d.addrs["proxy"], "reload-b", "reload-b"))

        sent0 = metric(d, 'pikod_handoffs_total{direction="sent"}')
        with Load(one) as load:
            load.wait_progress(50)
            self.assertGreater(metric(d, 'pikod_handoffs_total{direction="sent"}'), sent0,
                               "no connection was handed off before the reloads")
            for gen in (2, 3, 4):
                mark = d.mark()
                d.signal(signal.SIGHUP)
                d.wait_msg("reload complete", 30, start=mark, generation=gen)
                load.wait_progress(50)
            for ep in ("reload-a", "reload-b"):
                d.wait_msg("upstream registered", 30, start=mark, endpoint=ep, generation=4)
            load.wait_progress(50)
        self.assertEqual(load.errors, [])
        self.assertGreaterEqual(load.ok, 250)

    # ---- 15. upstream auth ----
    UPSTREAM_SECRET = "upstream-secret-0123456789"

    def upstream_auth_pikod(self):
        return self.pikod("--upstream.auth.hmac-secret-key", self.UPSTREAM_SECRET)

    def assertAgentRejected(self, agent, message):
        self.assertEqual(agent.wait_exit(15), 2, agent._tail())
        errors = [o.get("error") for o in agent.json_lines() if "error" in o]
        self.assertEqual(errors, [message], agent._tail())
        self.assertEqual(agent.registered, 0)

    def test_upstream_auth_agent_without_token_exits_2(self):
        d = self.upstream_auth_pikod()
        svc = self.service("auth")
        self.assertAgentRejected(self.agent(d, "auth", svc.forward), "missing authorization")

    def test_upstream_auth_valid_token_registers(self):
        d = self.upstream_auth_pikod()
        svc = self.service("auth")
        self.tunnel(d, "auth", svc.forward, token(self.UPSTREAM_SECRET, ["auth"]))
        self.assertEqual(self.get_echo(d, "auth")["id"], "auth")

    def test_upstream_auth_token_for_other_endpoint_is_401(self):
        d = self.upstream_auth_pikod()
        svc = self.service("auth")
        tok = token(self.UPSTREAM_SECRET, ["other"])
        self.assertAgentRejected(self.agent(d, "auth", svc.forward, tok),
                                 "endpoint not permitted")

    def test_upstream_auth_expired_token_is_401(self):
        d = self.upstream_auth_pikod()
        svc = self.service("auth")
        tok = token(self.UPSTREAM_SECRET, ["auth"], exp_in=-60)
        self.assertAgentRejected(self.agent(d, "auth", svc.forward, tok), "expired token")

    # ---- 16. proxy auth ----
    PROXY_SECRET = "proxy-secret-0123456789"

    def test_proxy_auth_missing_authorization_is_401(self):
        d = self.pikod("--proxy.auth.hmac-secret-key", self.PROXY_SECRET)
        svc = self.service("a")
        self.tunnel(d, "a", svc.forward)
        self.assertJsonError(request(d.addrs["proxy"], "GET", "/echo", endpoint="a"),
                             401, "missing authorization")

    def test_proxy_auth_token_limited_to_endpoint(self):
        d = self.pikod("--proxy.auth.hmac-secret-key", self.PROXY_SECRET)
        sa, sb = self.service("a"), self.service("b")
        self.tunnel(d, "a", sa.forward)
        self.tunnel(d, "b", sb.forward)
        auth = {"Authorization": "Bearer " + token(self.PROXY_SECRET, ["a"])}
        status, headers, body = request(d.addrs["proxy"], "GET", "/echo", endpoint="a",
                                        headers=auth)
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(headers.get("x-upstream-id"), "a")
        self.assertJsonError(request(d.addrs["proxy"], "GET", "/echo", endpoint="b",
                                     headers=auth), 401, "endpoint not permitted")

    def test_upstream_port_rejects_bad_ids_and_plain_http(self):
        d = self.pikod(workers=1)
        up = d.addrs["upstream"]
        self.assertJsonError(request(up, "GET", "/piko/v1/upstream/bad!id", host="x"), 400,
                             "invalid endpoint id")
        self.assertJsonError(request(up, "GET", "/piko/v1/upstream/" + "a" * 129, host="x"),
                             400, "invalid endpoint id")
        code, headers, body = request(up, "GET", "/piko/v1/upstream/fine", host="x")
        self.assertEqual(code, 400, body)
        self.assertEqual(headers.get("content-type"), "application/json")
        self.assertIn("error", json.loads(body))
        self.assertJsonError(request(up, "GET", "/elsewhere", host="x"), 404, "not found")

    def test_out_of_descriptors_is_no_busy_loop(self):
        # With a tiny descriptor limit, connections beyond it cannot be accepted. The worker
        # must neither spin on the ready listener nor stop serving once descriptors free up.
        d = Pikod(["--workers", "1"], prefix=("prlimit", "--nofile=48:48"))
        self.addCleanup(d.stop)
        d.wait_ready()
        wpid = list(d.worker_pids().values())[0]
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(80):
            socks.append(socket.create_connection(d.addrs["proxy"], timeout=5))

        def cpu_ticks():
            with open("/proc/%d/stat" % wpid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])

        before = cpu_ticks()
        time.sleep(1.0)  # the behaviour under test is what the worker does meanwhile
        spent = (cpu_ticks() - before) / os.sysconf("SC_CLK_TCK")
        self.assertLess(spent, 0.5, "worker used %.2fs of CPU in 1s while out of fds" % spent)
        for s in socks:
            s.close()
        socks.clear()
        # Descriptors are free again: a new client is served.
        deadline = time.monotonic() + 10
        while True:
            try:
                code, _, body = request(d.addrs["proxy"], "GET", "/", endpoint="nobody",
                                        timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
        self.assertEqual(code, 502, body)

    def test_agents_beyond_a_workers_descriptors_wait_for_a_sibling_or_for_room(self):
        # Under a limit of 256 descriptors a worker stops accepting short of it (fd 232).
        # Agents beyond what it holds must wait in the queue, not be accepted and dropped,
        # and be taken by a sibling, or by the same worker once descriptors free up.
        d = Pikod(["--workers", "2"], prefix=("prlimit", "--nofile=256:256"))
        self.addCleanup(d.stop)
        d.wait_ready()
        _, rec = d.wait_msg("open-file limit", proc="supervisor")
        self.assertEqual(rec["limit"], 256)
        slots = sorted(d.worker_pids())
        a_slot, b_slot = slots
        b_pid = d.worker_pids()[b_slot]
        socks = {}
        self.addCleanup(lambda: [s.close() for s in socks.values()])

        def dial(name):
            socks[name] = raw_agent(d.addrs["upstream"], name)

        def registered(names):
            def pred(records):
                got = {r["endpoint"]: r["slot"] for r in records
                       if r.get("msg") == "upstream registered" and r.get("endpoint") in names}
                return len(got) == len(names) and got
            return pred

        def upgraded(names):
            for n in names:
                head = read_upgrade(socks[n])
                self.assertTrue(head.startswith(b"HTTP/1.1 101 "), (n, head[:100]))

        # Worker B is stopped: A takes agents until it is short of descriptors, and the rest
        # stay queued.
        os.kill(b_pid, signal.SIGSTOP)
        try:
            mark = d.mark()
            first = ["fd%d" % i for i in range(300)]
            for n in first:
                dial(n)
            d.wait_msg("not accepting: near the open-file limit", 20, start=mark,
                       listener="upstream", fd_limit=256, slot=a_slot)
        finally:
            os.kill(b_pid, signal.SIGCONT)
        # B goes on: it takes the queued ones. Every agent registers, none was dropped.
        got = wait_records(d, registered(set(first)), 30, "all 300 agents registered")
        on_a = sorted(n for n, s in got.items() if s == a_slot)
        self.assertGreater(len(on_a), 150, "A held only %d" % len(on_a))
        self.assertLess(len(on_a), 232, "A held %d, beyond its descriptors" % len(on_a))
        self.assertEqual(len(on_a) + sum(1 for s in got.values() if s == b_slot), 300, got)
        upgraded(first)

        # Room again on A: 100 of its agents leave while B is stopped; A accepts again and
        # takes 100 new ones.
        mark = d.mark()
        for n in on_a[:100]:
            socks.pop(n).close()
        wait_records(d, lambda recs: sum(1 for r in recs[mark:]
                                         if r.get("msg") == "upstream disconnected") >= 100,
                     20, "100 agents disconnected")
        os.kill(b_pid, signal.SIGSTOP)
        try:
            second = ["again%d" % i for i in range(100)]
            for n in second:
                dial(n)
            got = wait_records(d, registered(set(second)), 30, "100 new agents registered on A")
        finally:
            os.kill(b_pid, signal.SIGCONT)
        self.assertEqual(set(got.values()), {a_slot})
        upgraded(second)

    def test_closing_a_tunnel_sends_going_away_then_fin(self):
        # Stopping pikod closes each tunnel: a WebSocket close frame with 1001 (going away),
        # then the end of the stream. The frame goes straight to an idle socket.
        d = self.pikod(workers=1)
        s = raw_agent(d.addrs["upstream"], "bye")
        self.addCleanup(s.close)
        self.assertTrue(read_upgrade(s).startswith(b"HTTP/1.1 101 "))
        d.wait_msg("upstream registered", endpoint="bye")
        d.signal(signal.SIGTERM)
        while True:  # yamux frames (pings) may come first
            b0, b1 = recv_exact(s, 2)
            self.assertEqual(b1 & 0x80, 0, "a server frame must not be masked")
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(recv_exact(s, 2), "big")
            elif n == 127:
                n = int.from_bytes(recv_exact(s, 8), "big")
            payload = recv_exact(s, n)
            if b0 & 0x0F == 0x8:
                break
        self.assertEqual(b0, 0x88, "a final close frame")
        self.assertEqual(int.from_bytes(payload[:2], "big"), 1001, payload)
        s.settimeout(20)
        self.assertEqual(s.recv(1), b"", "FIN after the close frame")

    # ---- 17. limits ----
    def test_streams_per_upstream_cap_is_503(self):
        # The service behind the agent holds the first request (the agent opens one TCP
        # connection per stream), so exactly one stream is in flight when the second
        # request arrives.
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen(8)
        self.addCleanup(held.close)
        d = self.pikod("--upstream.max-streams", "1", workers=1)
        self.tunnel(d, "cap", "127.0.0.1:%d" % held.getsockname()[1])
        results = []
        first = threading.Thread(target=lambda: results.append(
            request(d.addrs["proxy"], "GET", "/first", endpoint="cap", timeout=30)))
        first.start()
        held.settimeout(20)
        conn, _ = held.accept()  # the first request reached the service: in flight
        self.addCleanup(conn.close)
        self.assertJsonError(request(d.addrs["proxy"], "GET", "/second", endpoint="cap"), 503,
                             "too many requests in flight for this upstream")
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        conn.close()
        first.join(30)
        self.assertEqual(results[0][0], 200)
        self.assertEqual(results[0][2], b"ok")

    def test_header_over_max_header_bytes_is_431(self):
        d = self.pikod("--proxy.http.max-header-bytes", "2048")
        s = socket.create_connection(d.addrs["proxy"], timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"GET / HTTP/1.1\r\nHost: big.example.com\r\nX-Big: " + b"a" * 4096 +
                  b"\r\n\r\n")
        r = read_response(s.makefile("rb"))
        self.assertIsNotNone(r, "connection closed without an answer")
        self.assertEqual(r.status, 431)

    def test_half_sent_head_times_out_with_408_or_close(self):
        d = self.pikod("--proxy.http.read-header-timeout", "1s")
        s = socket.create_connection(d.addrs["proxy"], timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"GET / HTTP/1.1\r\nHost: slow.example.com\r\n")
        status, took = read_head_timeout_answer(s)
        self.assertIn(status, (None, 408))
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 5.0)


if __name__ == "__main__":
    unittest.main()
