"""The piko CLI end to end: `piko agent` and `piko forward` as real processes against pikod
and against an independent server peer (go-pikoserver: hashicorp/yamux + gorilla/websocket),
with real services behind the agent and real clients in front of pikod.

Every test starts its own processes and stops them with addCleanup. Waits are for events
(a log record, a printed line, an answer) with deadlines."""
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from harness import (Pikod, Service, TcpEcho, run_ws_client, TimeoutError_)
from piko_helpers import (PikoProc, GoPikoServer, RespServer, run_piko, resp_command,
                          resp_read)
from upstream_service import pattern, pattern_chunks

KIB = 1024
MIB = 1024 * 1024
VERSION = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                            "VERSION")).read().strip()


# An HTTPS/1.1 service with keep-alive: argv cert key; prints its port first.
HTTPS_SERVICE = r"""
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = b"tls ok " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def request(addr, method, path, endpoint, headers=None, body=None, timeout=60.0):
    h = {"Host": "%s.example.com" % endpoint}
    h.update(headers or {})
    c = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


def sha_of_pattern(n):
    h = hashlib.sha256()
    for piece in pattern_chunks(n):
        h.update(piece)
    return h.hexdigest()


def ws_masked(op, payload):
    """One client frame (FIN set, masked) carrying payload."""
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | op])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0xFE]) + struct.pack("!H", n)
    else:
        head += bytes([0xFF]) + struct.pack("!Q", n)
    keys = (key * (n // 4 + 1))[:n]
    return head + key + (int.from_bytes(payload, "big") ^
                         int.from_bytes(keys, "big")).to_bytes(n, "big")


def ws_tcp_open(port, endpoint, rcvbuf=0):
    """A raw socket upgraded to a WebSocket on /_piko/v1/tcp/<endpoint>."""
    c = socket.socket()
    if rcvbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    c.settimeout(60)
    c.connect(("127.0.0.1", port))
    c.sendall(b"GET /_piko/v1/tcp/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n" % endpoint.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(1)
    return c, head.split(b"\r\n")[0]


def ws_parse(raw):
    """Server frames in raw: (payload bytes of the data frames, the close frame's payload or
    None, offset after the close frame or where parsing stopped)."""
    got, close, off = bytearray(), None, 0
    while close is None and off + 2 <= len(raw):
        op, n = raw[off] & 0x0F, raw[off + 1] & 0x7F
        off += 2
        if n == 126:
            n = struct.unpack("!H", raw[off:off + 2])[0]
            off += 2
        elif n == 127:
            n = struct.unpack("!Q", raw[off:off + 8])[0]
            off += 8
        if off + n > len(raw):
            break  # cut mid-frame
        if op == 8:
            close = bytes(raw[off:off + n])
        else:
            got += raw[off:off + n]
        off += n
    return got, close, off


class PikoTest(unittest.TestCase):
    # ---- fixtures ----
    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="piko-it-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def pikod(self, *args, workers=2, ports=Pikod.LISTENERS):
        d = Pikod(["--workers", str(workers)] + list(args), ports=ports)
        self.addCleanup(d.stop)
        return d.wait_ready()

    def service(self, upstream_id="svc"):
        s = Service.http(upstream_id)
        self.addCleanup(s.stop)
        return s

    def piko(self, *args):
        p = PikoProc(args)
        self.addCleanup(self.assertNoSanitizerReport, p)
        self.addCleanup(p.stop)
        return p

    def assertNoSanitizerReport(self, p):
        text = p.tail(100000)
        for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
            self.assertNotIn(marker, text, "sanitizer report from %r" % p.argv)

    def agent(self, d, kind, endpoint, addr, *extra):
        """A piko agent registered on pikod d (waits for both sides to say so)."""
        mark = d.mark()
        a = self.piko("agent", kind, endpoint, addr, "--connect.url",
                      "http://127.0.0.1:%d" % d.addrs["upstream"][1], *extra)
        a.wait_msg("registered", 20, endpoint=endpoint)
        d.wait_msg("upstream registered", 10, start=mark, subsystem="upstream",
                   endpoint=endpoint)
        return a

    def forwarder(self, d, endpoint, *extra):
        """A piko forward tcp on an ephemeral local port; returns (proc, port)."""
        f = self.piko("forward", "tcp", "127.0.0.1:0", endpoint, "--connect.url",
                      "http://127.0.0.1:%d" % d.addrs["proxy"][1], *extra)
        _, rec = f.wait_msg("listening", 15, endpoint=endpoint)
        return f, int(rec["bound"].rsplit(":", 1)[1])

    def go_server(self, *args):
        s = GoPikoServer(args)
        self.addCleanup(s.stop)
        return s

    def assertJsonError(self, answer, status, message):
        code, headers, body = answer
        self.assertEqual(code, status, body[:300])
        self.assertEqual(headers.get("content-type"), "application/json")
        self.assertEqual(json.loads(body), {"error": message})

    # ---- HTTP agent against pikod ----
    def test_http_get_and_post_bodies(self):
        d = self.pikod()
        svc = self.service("bodies")
        self.agent(d, "http", "bodies", svc.forward)
        proxy = d.addrs["proxy"]
        status, headers, body = request(proxy, "GET", "/echo/x?q=1", "bodies",
                                        headers={"X-Custom": "kept"})
        self.assertEqual(status, 200, body[:300])
        doc = json.loads(body)
        self.assertEqual((doc["method"], doc["path"], doc["query"]), ("GET", "/echo/x", "q=1"))
        self.assertIn(["Host", "bodies.example.com"], doc["headers"])
        self.assertIn(["X-Custom", "kept"], doc["headers"])
        for size in (MIB, 16 * MIB):
            data = pattern(size)
            status, headers, body = request(proxy, "POST", "/echo", "bodies", body=data)
            self.assertEqual(status, 200, body[:300])
            doc = json.loads(body)
            self.assertEqual((doc["body_length"], doc["body_sha256"]),
                             (size, hashlib.sha256(data).hexdigest()))
        status, headers, body = request(proxy, "GET", "/bytes?n=%d" % (16 * MIB), "bodies")
        self.assertEqual(status, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), sha_of_pattern(16 * MIB))
        status, headers, body = request(proxy, "GET", "/chunked?n=300000&chunk=7000", "bodies")
        self.assertEqual((status, hashlib.sha256(body).hexdigest()),
                         (200, sha_of_pattern(300000)))

    def test_back_to_back_requests_fit_a_one_stream_cap(self):
        # A finished exchange's FIN may wait for the next frames to the agent; its stream
        # must not count against --upstream.max-streams meanwhile. The agent half-closes
        # with its answer, so each request here finds the previous stream over.
        d = self.pikod("--upstream.max-streams", "1", workers=1)
        svc = self.service("cap1")
        self.agent(d, "http", "cap1", svc.forward)
        c = http.client.HTTPConnection(*d.addrs["proxy"], timeout=30)
        self.addCleanup(c.close)
        for i in range(30):
            c.request("GET", "/echo/%d" % i, headers={"Host": "cap1.example.com"})
            r = c.getresponse()
            body = r.read()
            self.assertEqual(r.status, 200, (i, body[:300]))
            self.assertEqual(json.loads(body)["path"], "/echo/%d" % i)
        for i in range(10):
            status, _, body = request(d.addrs["proxy"], "GET", "/echo/new%d" % i, "cap1")
            self.assertEqual(status, 200, (i, body[:300]))

    def test_stream_window_sizes_carry_bodies_intact(self):
        # The agent grants its receive window above yamux's 256 KiB with each stream's ACK;
        # pikod must honour it exactly: 16 MiB each way, at the smallest and largest.
        d = self.pikod(workers=1)
        svc = self.service("win")
        proxy = d.addrs["proxy"]
        for window in ("256KiB", "16MiB"):
            a = self.agent(d, "http", "win", svc.forward, "--connect.stream-window", window)
            data = pattern(16 * MIB)
            status, headers, body = request(proxy, "POST", "/echo", "win", body=data)
            self.assertEqual(status, 200, (window, body[:300]))
            doc = json.loads(body)
            self.assertEqual((doc["body_length"], doc["body_sha256"]),
                             (16 * MIB, hashlib.sha256(data).hexdigest()), window)
            status, headers, body = request(proxy, "GET", "/bytes?n=%d" % (16 * MIB), "win")
            self.assertEqual((status, hashlib.sha256(body).hexdigest()),
                             (200, sha_of_pattern(16 * MIB)), window)
            a.stop()

    def test_http_many_concurrent_requests_on_one_tunnel(self):
        d = self.pikod()
        svc = self.service("many")
        a = self.agent(d, "http", "many", svc.forward)
        results = []
        lock = threading.Lock()
        start = threading.Barrier(100)

        def one(i):
            start.wait(30)
            try:
                status, headers, body = request(d.addrs["proxy"], "GET",
                                                "/echo/%d?ms=1" % i, "many", timeout=60)
                doc = json.loads(body) if status == 200 else {}
                ok = status == 200 and doc.get("path") == "/echo/%d" % i
                res = None if ok else "%d: %s %r" % (i, status, body[:100])
            except (OSError, http.client.HTTPException, ValueError) as e:
                res = "%d: %r" % (i, e)
            with lock:
                results.append(res)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        self.assertEqual(len(results), 100)
        self.assertEqual([r for r in results if r], [])
        # One session carried them all.
        self.assertEqual(a.count("registered"), 1)

    def test_http_websocket_upgrade_through_agent(self):
        d = self.pikod()
        echo = Service.ws_echo()
        self.addCleanup(echo.stop)
        self.agent(d, "http", "wsep", echo.forward)
        code, objs = run_ws_client("ws://127.0.0.1:%d/chat" % d.addrs["proxy"][1],
                                   ["--header", "Host:wsep.example.com", "--msg", "text:1000",
                                    "--msg", "bin:300000", "--msg", "lit:done"])
        self.assertEqual(code, 0, objs)
        self.assertEqual(sum(1 for o in objs if o.get("event") == "ok"), 3, objs)

    def test_http_unreachable_service_is_502_json(self):
        d = self.pikod()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
        s.close()  # nothing listens there now
        a = self.agent(d, "http", "dead", "127.0.0.1:%d" % dead_port)
        mark = a.mark()
        self.assertJsonError(request(d.addrs["proxy"], "GET", "/", "dead"), 502,
                             "upstream unreachable")
        # The agent made that answer (not the server).
        a.wait_msg("cannot reach the service", 5, start=mark, endpoint="dead")

    def test_http_malformed_chunked_answer_is_502_json(self):
        # The service's head is fine but its first chunk is not: the agent has relayed
        # nothing yet (head and first body bytes go out together), so it can still answer
        # with a clean 502 instead of a cut response.
        d = self.pikod()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        self.addCleanup(srv.close)

        def serve():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                head = b""
                while b"\r\n\r\n" not in head:
                    piece = c.recv(65536)
                    if not piece:
                        return
                    head += piece
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n")
                c.recv(1)  # until the agent lets go
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        a = self.agent(d, "http", "badchunk", "127.0.0.1:%d" % srv.getsockname()[1])
        mark = a.mark()
        self.assertJsonError(request(d.addrs["proxy"], "GET", "/", "badchunk"), 502,
                             "upstream unreachable")
        a.wait_msg("bad answer from the service", 5, start=mark, endpoint="badchunk")
        t.join(10)

    def test_http_timeout_is_504_json(self):
        d = self.pikod()
        svc = self.service("slow")
        a = self.agent(d, "http", "slow", svc.forward, "--timeout", "1s")
        t0 = time.monotonic()
        self.assertJsonError(request(d.addrs["proxy"], "GET", "/slow?ms=4000", "slow"), 504,
                             "upstream timeout")
        self.assertLess(time.monotonic() - t0, 3.5)
        a.wait_msg("upstream timeout", 5, endpoint="slow")
        # The tunnel still serves.
        self.assertEqual(request(d.addrs["proxy"], "GET", "/echo", "slow")[0], 200)

    def test_sigterm_finishes_in_flight_request_then_exits_0(self):
        d = self.pikod()
        svc = self.service("drain")
        a = self.agent(d, "http", "drain", svc.forward, "--log.level", "debug",
                       "--grace-period", "10s")
        out = {}

        def slow():
            out["answer"] = request(d.addrs["proxy"], "GET", "/slow?ms=1500", "drain")

        t = threading.Thread(target=slow)
        t.start()
        a.wait_msg("request started", 10, endpoint="drain", path="/slow?ms=1500")
        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait_exit(15), 0, a.tail())
        t.join(15)
        self.assertEqual(out["answer"][0], 200, out["answer"][2][:200])
        self.assertEqual(out["answer"][2], b"slow done")

    # ---- TCP agent ----
    def test_tcp_round_trip(self):
        d = self.pikod()
        echo = TcpEcho()
        self.addCleanup(echo.stop)
        self.agent(d, "tcp", "tcpep", echo.forward)
        code, objs = run_ws_client("ws://127.0.0.1:%d/_piko/v1/tcp/tcpep" % d.addrs["proxy"][1],
                                   ["--stream", "%d:%d" % (3 * MIB, 65536)])
        self.assertEqual(code, 0, objs)

    # ---- survival ----
    def test_agent_survives_worker_kill_and_pikod_restart(self):
        d = self.pikod()
        svc = self.service("survive")
        a = self.agent(d, "http", "survive", svc.forward)
        proxy = d.addrs["proxy"]
        self.assertEqual(request(proxy, "GET", "/echo", "survive")[0], 200)

        def serve_again(since, what):
            deadline = since + 2.0
            while True:
                try:
                    status = request(proxy, "GET", "/echo", "survive", timeout=2)[0]
                    if status == 200:
                        return time.monotonic() - since
                except (OSError, http.client.HTTPException):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("%s: not served again within 2 s\n%s" % (
                        what, a.tail()))

        # kill -9 of every worker: the supervisor respawns them on the same listeners.
        mark = d.mark()
        for pid in d.worker_pids().values():
            os.kill(pid, signal.SIGKILL)
        for slot in d.worker_pids():
            d.wait_log(lambda r, s=slot: r.get("msg") == "child started" and
                       r.get("slot") == s and r.get("role") == "worker", 20, start=mark,
                       what="respawn of worker slot %s" % slot)
        serve_again(time.monotonic(), "after kill -9 of the workers")

        # Full restart on the same ports.
        ports = [("--%s.bind-addr" % n, "127.0.0.1:%d" % d.addrs[n][1])
                 for n in Pikod.LISTENERS]
        d.stop()
        args = [x for pair in ports for x in pair]
        d2 = Pikod(["--workers", "2"] + args, ports=())
        self.addCleanup(d2.stop)
        d2.wait_ready()
        serve_again(time.monotonic(), "after a pikod restart")
        self.assertGreaterEqual(a.count("registered"), 3)

    # ---- forward ----
    def test_forward_carries_resp_protocol(self):
        d = self.pikod()
        redis = RespServer()
        self.addCleanup(redis.stop)
        self.agent(d, "tcp", "redis", redis.forward)
        # forward start: the listener comes from a config file.
        conf = os.path.join(self.tmpdir(), "forward.conf")
        with open(conf, "w") as fh:
            fh.write('connect = { url = "http://127.0.0.1:%d"; };\n'
                     'forwarders = ( { endpoint_id = "redis"; addr = "127.0.0.1:0"; } );\n'
                     % d.addrs["proxy"][1])
        f = self.piko("forward", "start", "--config", conf)
        _, rec = f.wait_msg("listening", 15, endpoint="redis")
        port = int(rec["bound"].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            rf = c.makefile("rb")
            c.sendall(resp_command("PING"))
            self.assertEqual(resp_read(rf), "PONG")
            c.sendall(resp_command("SET", "k1", "v" * 5000))
            self.assertEqual(resp_read(rf), "OK")
            c.sendall(resp_command("GET", "k1"))
            self.assertEqual(resp_read(rf), b"v" * 5000)
            c.sendall(resp_command("GET", "missing"))
            self.assertIsNone(resp_read(rf))
            # Pipelined: 200 commands in one write, answers in order.
            c.sendall(b"".join(resp_command("INCR", "n") for _ in range(200)))
            self.assertEqual([resp_read(rf) for _ in range(200)], list(range(1, 201)))
            big = os.urandom(2 * MIB)
            c.sendall(resp_command("ECHO", big))
            self.assertEqual(resp_read(rf), big)
        # A second connection sees the same server state.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            rf = c.makefile("rb")
            c.sendall(resp_command("GET", "n"))
            self.assertEqual(resp_read(rf), b"200")

    def test_forward_100mib_intact(self):
        d = self.pikod()
        echo = TcpEcho()
        self.addCleanup(echo.stop)
        self.agent(d, "tcp", "bulk", echo.forward)
        f, port = self.forwarder(d, "bulk")
        n = 100 * MIB
        sent = hashlib.sha256()
        got = hashlib.sha256()
        errors = []
        with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
            def writer():
                try:
                    for piece in pattern_chunks(n, 1 << 20):
                        sent.update(piece)
                        c.sendall(piece)
                except OSError as e:
                    errors.append(repr(e))

            t = threading.Thread(target=writer)
            t.start()
            total = 0
            while total < n:
                data = c.recv(1 << 20)
                if not data:
                    break
                got.update(data)
                total += len(data)
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(total, n)
        self.assertEqual(got.hexdigest(), sent.hexdigest())

    def test_forward_half_close_follows_the_last_bytes(self):
        # A burst and the client's FIN at once: the agent writes a stream's bytes from one
        # tunnel read together, after that read; the half-close towards the service must
        # still come after them, or the echo ends early.
        d = self.pikod()
        echo = TcpEcho()
        self.addCleanup(echo.stop)
        self.agent(d, "tcp", "burst", echo.forward)
        f, port = self.forwarder(d, "burst")
        for i, size in enumerate((1, 1000, 65536, 300 * 1024, 1 * MIB, 3 * MIB + 7)):
            data = pattern(size)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
                c.sendall(data)
                c.shutdown(socket.SHUT_WR)
                got = bytearray()
                while True:
                    piece = c.recv(1 << 20)
                    if not piece:
                        break
                    got += piece
            self.assertEqual((len(got), hashlib.sha256(got).hexdigest()),
                             (size, hashlib.sha256(data).hexdigest()), "burst %d" % i)

    def test_tcp_endpoint_slow_reader_gets_the_tail_and_the_close_frame(self):
        # The client sends 16 MiB and its close frame and reads slowly, so when the agent's
        # FIN comes pikod may still hold the end of the echo behind a full socket: that
        # tail, then pikod's close frame, must reach the client before the connection ends.
        # (Before the fix it failed in 3 runs of 3 with the ASan builds `make test` uses.)
        d = self.pikod()
        echo = TcpEcho()
        self.addCleanup(echo.stop)
        self.agent(d, "tcp", "slowtail", echo.forward)
        size = 16 * MIB
        data = pattern(size)
        c, status = ws_tcp_open(d.addrs["proxy"][1], "slowtail", rcvbuf=4096)
        self.addCleanup(c.close)
        self.assertIn(b" 101 ", status)

        def sender():
            for off in range(0, size, 65536):
                c.sendall(ws_masked(2, data[off:off + 65536]))
            c.sendall(ws_masked(8, struct.pack("!H", 1000)))

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        # A slow reader (a pace, not a wait for anything): 4 KiB at a time, 0.2 ms apart,
        # until the connection ends.
        raw = bytearray()
        while True:
            piece = c.recv(4096)
            if not piece:
                break
            raw += piece
            time.sleep(0.0002)
        t.join(60)
        got, close, off = ws_parse(raw)
        self.assertEqual((len(got), hashlib.sha256(got).hexdigest()),
                         (size, hashlib.sha256(data).hexdigest()))
        self.assertEqual(close[:2] if close is not None else None, struct.pack("!H", 1000))
        self.assertEqual(off, len(raw))  # nothing after the close frame

    def test_tcp_endpoint_service_speaking_and_closing_first(self):
        # The service speaks first (a banner, as SMTP or MySQL servers do; the stream must
        # reach the agent before the client sends anything: it hung before) and half-closes:
        # pikod's close frame follows the banner, and what the client sends before answering
        # with its own close frame still reaches the service, then FIN, then the end.
        got = {}
        done = threading.Event()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        self.addCleanup(srv.close)

        def service():
            s, _ = srv.accept()
            with s:
                s.sendall(b"banner\n")
                s.shutdown(socket.SHUT_WR)
                buf = b""
                while True:
                    piece = s.recv(65536)
                    if not piece:
                        break
                    buf += piece
                got["bytes"] = buf
            done.set()

        threading.Thread(target=service, daemon=True).start()
        d = self.pikod()
        self.agent(d, "tcp", "banner", "127.0.0.1:%d" % srv.getsockname()[1])
        c, status = ws_tcp_open(d.addrs["proxy"][1], "banner")
        self.addCleanup(c.close)
        self.assertIn(b" 101 ", status)
        raw = bytearray()
        while ws_parse(raw)[1] is None:
            piece = c.recv(65536)
            self.assertTrue(piece, "closed before pikod's close frame: %r" % bytes(raw))
            raw += piece
        banner, close, off = ws_parse(raw)
        self.assertEqual((bytes(banner), close[:2]), (b"banner\n", struct.pack("!H", 1000)))
        c.sendall(ws_masked(2, b"late bytes") + ws_masked(8, struct.pack("!H", 1000)))
        self.assertEqual(c.recv(1), b"")  # the connection ends after the client's close
        self.assertTrue(done.wait(30))
        self.assertEqual(got["bytes"], b"late bytes")

    # ---- config file ----
    def test_agent_start_with_config_file(self):
        d = self.pikod()
        svc = self.service("cfg-http")
        echo = TcpEcho()
        self.addCleanup(echo.stop)
        tmp = self.tmpdir()
        conf = os.path.join(tmp, "agent.conf")
        with open(conf, "w") as fh:
            fh.write('connect = { url = "http://127.0.0.1:%d"; timeout = "5s"; };\n'
                     'log = { level = "info"; };\n'
                     'grace_period = "5s";\n'
                     'listeners = (\n'
                     '  { endpoint_id = "cfg-http"; protocol = "http"; addr = "%s";\n'
                     '    timeout = "5s"; access_log = true; },\n'
                     '  { endpoint_id = "cfg-tcp"; protocol = "tcp"; addr = "%s"; }\n'
                     ');\n' % (d.addrs["upstream"][1], svc.forward, echo.forward))
        mark = d.mark()
        a = self.piko("agent", "start", "--config", conf)
        for ep in ("cfg-http", "cfg-tcp"):
            a.wait_msg("registered", 20, endpoint=ep)
            d.wait_msg("upstream registered", 10, start=mark, endpoint=ep)
        status, headers, body = request(d.addrs["proxy"], "GET", "/echo", "cfg-http")
        self.assertEqual((status, headers.get("x-upstream-id")), (200, "cfg-http"))
        a.wait_msg("request", 5, subsystem="access", endpoint="cfg-http", status=200)
        code, objs = run_ws_client("ws://127.0.0.1:%d/_piko/v1/tcp/cfg-tcp" %
                                   d.addrs["proxy"][1], ["--stream", "100000:10000"])
        self.assertEqual(code, 0, objs)

    def test_config_file_errors_name_the_key_and_line(self):
        tmp = self.tmpdir()
        conf = os.path.join(tmp, "bad.conf")
        listener = 'listeners = ( { endpoint_id = "a"; addr = "3000"; } );\n'
        cases = [
            ('listeners = (\n  { endpoint_id = "a"; addr = "3000"; colour = "red"; }\n);\n',
             "%s:2: unknown key listeners[0].colour"),
            ('connect = {\n  url = "gopher://x";\n};\n' + listener, "%s:2: connect.url"),
            # Keys are named as the file spells them (underscores), not as flags.
            ('connect = {\n  ping_interval = "5s";\n  stream_window = "64KiB";\n};\n' + listener,
             '%s:3: connect.stream_window: invalid value "64KiB"'),
        ]
        for text, named in cases:
            with open(conf, "w") as fh:
                fh.write(text)
            code, out, err = run_piko(["agent", "start", "--config", conf])
            self.assertEqual(code, 2, err)
            self.assertIn(named % conf, err)

    # ---- bad input ----
    def test_bad_arguments_exit_2_naming_the_argument(self):
        cases = [
            (["agent", "http", "ep", "3000", "--connect.url", "ftp://x"], "--connect.url"),
            (["agent", "http", "ep", "3000", "--connect.url", "http://h:99999"],
             "--connect.url"),
            (["agent", "http", "ep", "3000", "--connect.url", "not a url"], "--connect.url"),
            (["agent", "http", "ep", "70000"], "ADDR \"70000\""),
            (["agent", "tcp", "ep", "host:port"], "ADDR \"host:port\""),
            (["agent", "http", "bad/ep", "3000"], "ENDPOINT \"bad/ep\""),
            (["forward", "tcp", "99999", "ep"], "ADDR \"99999\""),
            (["agent", "http", "ep", "3000", "--bogus"], "--bogus"),
            (["agent", "http", "ep", "3000", "--timeout", "soon"], "--timeout"),
            (["agent", "tcp", "ep", "3000", "--timeout", "1s"], "--timeout"),
            (["agent", "http", "ep"], "ENDPOINT ADDR"),
            (["agent", "start"], "--config"),
            (["agent", "http", "ep", "3000", "--connect.token-file", "/nonexistent/t"],
             "--connect.token-file"),
            (["agent", "http", "ep", "3000", "--connect.tls.root-cas", "/nonexistent",
              "--connect.url", "https://localhost:8001"], "--connect.tls.root-cas"),
            (["launch"], "\"launch\""),
            (["agent", "http", "ep", "3000", "--connect.stream-window", "255KiB"],
             "--connect.stream-window"),
            (["agent", "http", "ep", "3000", "--connect.stream-window", "17MiB"],
             "--connect.stream-window"),
            (["agent", "http", "ep", "3000", "--connect.stream-window", "big"],
             "--connect.stream-window"),
            (["forward", "tcp", "3000", "ep", "--connect.stream-window", "1MiB"],
             "--connect.stream-window"),
        ]
        for argv, named in cases:
            code, out, err = run_piko(argv)
            self.assertEqual(code, 2, (argv, err))
            self.assertIn(named, err, argv)

    def test_help_and_version(self):
        code, out, err = run_piko(["--version"])
        self.assertEqual((code, out.strip()), (0, "piko %s" % VERSION))
        code, out, err = run_piko(["--help"])
        self.assertEqual(code, 0)
        for cmd in ("agent http", "agent tcp", "agent start", "forward tcp", "forward start"):
            self.assertIn(cmd, out)
        code, out, err = run_piko(["agent", "http", "--help"])
        self.assertEqual(code, 0)
        for flag in ("--connect.url", "--connect.token-file", "--timeout", "--grace-period",
                     "--access-log", "--connect.tls.root-cas"):
            self.assertIn(flag, out)
        # Flags before positionals work too (help is printed without running).
        code, out, err = run_piko(["agent", "--log.level", "debug", "tcp", "--help"])
        self.assertEqual(code, 0, err)

    # ---- against an independent server (hashicorp/yamux + gorilla/websocket) ----
    def test_peer_registration_without_token(self):
        svc = self.service("peer")
        g = self.go_server("--open", "2", "--request-path", "/echo/peer")
        a = self.piko("agent", "http", "peer", svc.forward, "--connect.url", g.url())
        self.assertEqual(g.wait_line("registered"), ["registered peer auth=none"])
        for line in g.wait_line("response", 2):
            self.assertRegex(line, r"^response peer status=200 ")
        a.wait_msg("registered", 5, endpoint="peer")

    def test_peer_registration_with_token_file(self):
        svc = self.service("peer")
        tok = "s3cret.token-value"
        tmp = self.tmpdir()
        tf = os.path.join(tmp, "token")
        with open(tf, "w") as fh:
            fh.write(tok + "\n")
        g = self.go_server("--token", tok, "--open", "1", "--request-path", "/bytes?n=100000")
        self.piko("agent", "http", "peer", svc.forward, "--connect.url", g.url(),
                  "--connect.token-file", tf)
        self.assertEqual(g.wait_line("registered"), ["registered peer auth=bearer"])
        line = g.wait_line("response")[0]
        self.assertEqual(line, "response peer status=200 bytes=100000 body_sha256=%s" %
                         sha_of_pattern(100000))

    def test_peer_401_stops_agent_with_the_server_message(self):
        g = self.go_server("--token", "right")
        a = self.piko("agent", "http", "peer", "3000", "--connect.url", g.url(),
                      "--connect.token", "wrong")
        self.assertEqual(a.wait_exit(15), 1, a.tail())
        _, rec = a.wait_msg("registration refused", 1, endpoint="peer")
        self.assertEqual((rec["status"], rec["error"]), (401, "invalid token"))
        self.assertIn("invalid token", a.tail())
        self.assertEqual(g.count("refused"), 1)  # fatal: never retried
        # Missing token: the server's other message.
        a2 = self.piko("agent", "tcp", "peer", "3000", "--connect.url", g.url())
        self.assertEqual(a2.wait_exit(15), 1)
        _, rec = a2.wait_msg("registration refused", 1)
        self.assertEqual(rec["error"], "missing authorization")

    def test_peer_retryable_status_is_retried_with_backoff(self):
        g = self.go_server("--status", "503")
        a = self.piko("agent", "http", "busy", "3000", "--connect.url", g.url())
        g.wait_line("refused busy status=503", 4, timeout=15)
        self.assertIsNone(a.proc.poll())
        _, rec = a.wait_msg("cannot register", 5, endpoint="busy", status=503)
        self.assertEqual(rec["error"], "forced status 503")
        waits, i = [], -1
        for _ in range(4):
            i, rec = a.wait_msg("reconnecting", 10, start=i + 1, endpoint="busy")
            waits.append(rec["in_ms"])
        # Exponential with jitter in [d/2, d]: 100, 200, 400, 800 ms bases.
        for i, w in enumerate(waits):
            base = 100 << i
            self.assertTrue(base // 2 <= w <= base, (i, waits))

    def test_peer_dead_server_detected_by_ping(self):
        g = self.go_server()
        a = self.piko("agent", "tcp", "ping", "3000", "--connect.url", g.url(),
                      "--connect.ping-interval", "300ms", "--connect.ping-timeout", "900ms",
                      "--connect.timeout", "1s")
        g.wait_line("registered ping")
        a.wait_msg("registered", 5, endpoint="ping")
        mark = a.mark()
        os.kill(g.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            a.wait_msg("server not answering pings", 5, start=mark, endpoint="ping")
            self.assertLess(time.monotonic() - t0, 3.0)
        finally:
            os.kill(g.proc.pid, signal.SIGCONT)
        g.wait_line("registered ping", 2, timeout=15)

    def self_signed(self):
        """A self-signed certificate for IP 127.0.0.1: (cert path, key path)."""
        openssl = shutil.which("openssl")
        if openssl is None:
            self.fail("openssl is not installed")
        tmp = self.tmpdir()
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=piko-test",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=30)
        return cert, key

    def test_http_agent_to_https_service(self):
        cert, key = self.self_signed()
        svc = Service([sys.executable, "-c", HTTPS_SERVICE, cert, key], "https service")
        self.addCleanup(svc.stop)
        d = self.pikod()
        # The service's certificate is trusted through OpenSSL's SSL_CERT_FILE.
        mark = d.mark()
        a = PikoProc(["agent", "http", "secure", "https://127.0.0.1:%d" % svc.port,
                      "--connect.url", "http://127.0.0.1:%d" % d.addrs["upstream"][1]],
                     env={"SSL_CERT_FILE": cert})
        self.addCleanup(self.assertNoSanitizerReport, a)
        self.addCleanup(a.stop)
        a.wait_msg("registered", 20, endpoint="secure")
        d.wait_msg("upstream registered", 10, start=mark, endpoint="secure")
        for _ in range(3):  # the pooled TLS connection is reused
            status, headers, body = request(d.addrs["proxy"], "GET", "/", "secure")
            self.assertEqual((status, body), (200, b"tls ok /"))
        # Without that trust the certificate is rejected: the agent answers 502.
        b = self.agent(d, "http", "untrusted", "https://127.0.0.1:%d" % svc.port)
        self.assertJsonError(request(d.addrs["proxy"], "GET", "/", "untrusted"), 502,
                             "upstream unreachable")
        b.wait_msg("tls handshake failed", 5)

    def test_peer_tls_with_root_cas(self):
        cert, key = self.self_signed()
        svc = self.service("tls")
        g = self.go_server("--tls-cert", cert, "--tls-key", key, "--open", "1",
                           "--request-path", "/echo")
        # Unverifiable without the CA: retried, never registered.
        a1 = self.piko("agent", "http", "tls", svc.forward, "--connect.url", g.url("https"))
        a1.wait_msg("cannot register", 10, endpoint="tls", status=0)
        self.assertEqual(g.count("registered"), 0)
        a1.stop()
        a2 = self.piko("agent", "http", "tls", svc.forward, "--connect.url", g.url("https"),
                       "--connect.tls.root-cas", cert)
        self.assertEqual(g.wait_line("registered"), ["registered tls auth=none"])
        self.assertRegex(g.wait_line("response")[0], r"^response tls status=200 ")
        a2.wait_msg("registered", 5, endpoint="tls")

    def test_peer_ack_comes_before_a_slow_answer(self):
        # A stream's ACK rides on its first answer frame; a service slower than 20 ms gets
        # it sent alone. hashicorp/yamux lets only AcceptBacklog streams await their ACK,
        # and a Piko server drops a session whose stream waits StreamOpenTimeout for it.
        svc = self.service("ackp")
        g = self.go_server("--ack-probe", "--request-path", "/slow?ms=1500")
        self.piko("agent", "http", "ackp", svc.forward, "--connect.url", g.url())
        self.assertEqual(g.wait_line("ack"), ["ack ackp before-answer"])

    def test_peer_tls_tcp_streams_intact(self):
        # Over TLS the agent decrypts record after record into one buffer and hands them on
        # together (its writes to the service are gathered per hand-over): a TCP endpoint's
        # bytes from hashicorp/yamux come back whole from an echo service.
        cert, key = self.self_signed()
        echo = TcpEcho()
        self.addCleanup(echo.stop)
        n = 5 * MIB + 3
        g = self.go_server("--tls-cert", cert, "--tls-key", key, "--open", "2",
                           "--stream-bytes", str(n))
        self.piko("agent", "tcp", "tlstcp", echo.forward, "--connect.url", g.url("https"),
                  "--connect.tls.root-cas", cert)
        self.assertEqual(g.wait_line("registered"), ["registered tlstcp auth=none"])
        want = "echoed tlstcp bytes=%d sha256=%s" % (n, hashlib.sha256(pattern(n)).hexdigest())
        self.assertEqual(g.wait_line("echoed", 2), [want, want])


if __name__ == "__main__":
    unittest.main()
