"""Helpers for integration tests: start real pikod processes on loopback and watch them.

Everything waits for events (a log line, a socket answer, a process exit) with a deadline;
nothing sleeps to synchronise. Every wait is bounded.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIKOD = os.environ.get("PIKOD", os.path.join(ROOT, "build", "san", "pikod"))
PIKOCTL = os.environ.get("PIKOCTL", os.path.join(ROOT, "build", "san", "pikoctl"))
PIKO = os.environ.get("PIKO", os.path.join(ROOT, "build", "san", "piko"))

# Sanitizer builds: leaks in a child killed on purpose are not findings.
ENV = dict(os.environ)
ENV.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1")
ENV.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")


class TimeoutError_(AssertionError):
    pass


class JsonLogProcess:
    """A process whose stderr carries one JSON log record per line. A thread collects them;
    tests wait for records with wait_log()/wait_msg() (bounded, never sleeping)."""

    name = "process"

    def _start(self, argv, env, **popen_kw):
        self.records = []
        self.raw_lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env, **popen_kw)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            text = line.decode("utf-8", "replace").rstrip("\n")
            rec = None
            try:
                rec = json.loads(text)
            except ValueError:
                pass
            with self.cond:
                self.raw_lines.append(text)
                if isinstance(rec, dict):
                    self.records.append(rec)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def tail(self, n=30):
        with self.cond:
            return "\n".join(self.raw_lines[-n:])

    def wait_log(self, pred, timeout=15.0, start=0, what="log record"):
        """Returns (index, record) of the first record at index >= start matching pred."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.records):
                    if pred(self.records[i]):
                        return i, self.records[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError_("%s: timed out waiting for %s; last lines:\n%s" % (
                        self.name, what, "\n".join(self.raw_lines[-30:])))
                if self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError("%s exited (%s) while waiting for %s:\n%s" % (
                        self.name, self.proc.returncode, what,
                        "\n".join(self.raw_lines[-30:])))
                self.cond.wait(min(left, 0.5))

    def wait_msg(self, msg, timeout=15.0, start=0, **fields):
        def pred(r):
            return r.get("msg") == msg and all(r.get(k) == v for k, v in fields.items())
        return self.wait_log(pred, timeout, start, what="%r %r" % (msg, fields))

    def mark(self):
        with self.cond:
            return len(self.records)


class Pikod(JsonLogProcess):
    """A pikod supervisor with its children, on ephemeral loopback ports.

    Its stderr (JSON lines) is collected by a thread; tests wait for records with
    wait_log(). Ports are learned from the "listening" records.
    """

    LISTENERS = ("proxy", "upstream", "admin", "cluster")
    name = "pikod"

    def __init__(self, args=(), config=None, env=None, state_dir=None, notify_socket=None,
                 ports=LISTENERS, prefix=()):
        """prefix: a command pikod runs under, e.g. ("prlimit", "--nofile=64:64")."""
        self.tmp = tempfile.mkdtemp(prefix="pikod-it-")
        self.state_dir = state_dir or os.path.join(self.tmp, "state")
        self.config_path = None
        if config is not None:
            self.config_path = os.path.join(self.tmp, "pikod.conf")
            with open(self.config_path, "w") as f:
                f.write(config)
        argv = list(prefix) + [PIKOD, "--state-dir", self.state_dir, "--grace-period", "5s"]
        for name in ports or ():
            argv += ["--%s.bind-addr" % name, "127.0.0.1:0"]
        if self.config_path:
            argv += ["--config", self.config_path]
        argv += list(args)
        e = dict(ENV)
        e.pop("NOTIFY_SOCKET", None)
        if notify_socket:
            e["NOTIFY_SOCKET"] = notify_socket
        if env:
            e.update(env)
        self._start(argv, e, stdout=subprocess.PIPE, start_new_session=True)
        self.addrs = {}

    def wait_ready(self, timeout=30.0):
        for name in ("proxy", "upstream", "admin", "cluster"):
            _, rec = self.wait_msg("listening", timeout, listener=name)
            host, port = rec["bound"].rsplit(":", 1)
            self.addrs[name] = (host.strip("[]"), int(port))
        self.wait_msg("ready", timeout, proc="supervisor")
        return self

    # ---- facts ----
    def children(self, start=0, generation=None):
        """slot -> pid of children started (latest per slot) from records[start:]."""
        out = {}
        with self.cond:
            for r in self.records[start:]:
                if r.get("msg") == "child started" and (generation is None or
                                                        r.get("generation") == generation):
                    out[r["slot"]] = (r["child_pid"], r["role"], r.get("worker"))
        return out

    def worker_pids(self, start=0, generation=None):
        return {slot: pid for slot, (pid, role, _) in self.children(start, generation).items()
                if role == "worker"}

    # ---- talking to it ----
    def http(self, listener, method, path, headers=None, body=None, timeout=10.0):
        host, port = self.addrs[listener]
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
        finally:
            c.close()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=30.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError_("pikod did not exit within %ss" % timeout)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        else:
            # Children of a supervisor killed hard must not outlive the test.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reader.join(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Load:
    """`threads` threads each calling `one()` back to back until stopped, bounded by count and
    time. `one()` sends one request and returns None when the answer was right, else a
    description of what was wrong; OSError and HTTPException count as failures too."""

    def __init__(self, one, threads=8, max_requests=50000, max_seconds=120):
        self.one = one
        self.ok = 0
        self.errors = []
        self.cond = threading.Condition()
        self.stop_flag = threading.Event()
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while (not self.stop_flag.is_set() and self.ok + len(self.errors) < self.max_requests
               and time.monotonic() < self.deadline):
            try:
                err = self.one()
            except (OSError, http.client.HTTPException) as e:
                err = repr(e)
            with self.cond:
                if err is None:
                    self.ok += 1
                else:
                    self.errors.append(err)
                self.cond.notify_all()

    def wait_progress(self, n, timeout=15.0):
        """Waits until n more requests have succeeded than now."""
        deadline = time.monotonic() + timeout
        with self.cond:
            target = self.ok + n
            while self.ok < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError_("load made no progress: ok=%d errors=%r" % (
                        self.ok, self.errors[:5]))
                self.cond.wait(min(left, 0.5))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


def run_pikod(args, env=None, timeout=20):
    """Runs pikod to completion (for --check, --help, bad flags). Returns (code, out, err)."""
    e = dict(ENV)
    if env:
        e.update(env)
    p = subprocess.run([PIKOD] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                       env=e, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class NotifySocket:
    """A fake systemd notify socket (AF_UNIX datagram) collecting every message."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pikod-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []

    def wait_for(self, pred, timeout=15.0, what="notify message"):
        deadline = time.monotonic() + timeout
        for m in self.messages:
            if pred(m):
                return m
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_("timed out waiting for %s; got %r" % (what, self.messages))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
            self.messages.append(fields)
            if pred(fields):
                return fields

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Tunnels: agents, services behind them, raw HTTP on sockets. (Used by test_tunnels.py.)
# ---------------------------------------------------------------------------------------
import hashlib  # noqa: E402
import selectors  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PK_BUILD = os.environ.get("PK_BUILD", os.path.join(ROOT, "build"))
GO_AGENT = os.environ.get("GO_AGENT", os.path.join(PK_BUILD, "interop", "go-agent"))
NODE = os.environ.get("NODE", shutil.which("node") or "node")
WS_CLIENT = os.path.join(HERE, "ws_client.js")
WS_ECHO_SERVER = os.path.join(HERE, "ws_echo_server.js")
UPSTREAM_SERVICE = os.path.join(HERE, "upstream_service.py")


def _first_line(proc, timeout, what):
    """Reads the first stdout line of proc (a port number) within timeout."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError_("%s printed no port within %ss" % (what, timeout))
            data = os.read(proc.stdout.fileno(), 1)  # byte-wise: leave the rest to readers
            if not data:
                raise AssertionError("%s exited (%s) before printing its port" % (
                    what, proc.poll()))
            buf += data
    finally:
        sel.close()
    return buf.decode().strip()


def _kill(proc):
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


class Service:
    """A helper server printing its port on the first stdout line: upstream_service.py
    (HTTP, answers with X-Upstream-Id) or ws_echo_server.js (WebSocket echo)."""

    def __init__(self, argv, what, timeout=15.0):
        self.what = what
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=ENV)
        try:
            self.port = int(_first_line(self.proc, timeout, what))
        except BaseException:
            _kill(self.proc)
            raise
        self.addr = ("127.0.0.1", self.port)
        self.forward = "127.0.0.1:%d" % self.port
        # Later stdout lines (ws_echo_server: one JSON line per connection) are kept so a
        # full pipe never blocks the server.
        self.lines = []
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    @classmethod
    def http(cls, upstream_id="upstream"):
        return cls([sys.executable, UPSTREAM_SERVICE, upstream_id],
                   "upstream_service %s" % upstream_id)

    @classmethod
    def ws_echo(cls):
        return cls([NODE, WS_ECHO_SERVER], "ws_echo_server")

    def stop(self):
        _kill(self.proc)
        self.drain.join(5)


class TcpEcho:
    """A threaded TCP echo server on 127.0.0.1:0: echoes bytes until EOF, then half-closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = self.sock.getsockname()
        self.forward = "127.0.0.1:%d" % self.addr[1]
        self.connections = 0
        self.closing = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        c.settimeout(60)
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    c.shutdown(socket.SHUT_WR)
                    return
                c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Agent:
    """The independent Go agent (hashicorp/yamux + gorilla/websocket) for one endpoint.

    Contract: `go-agent --url URL --endpoint ID --forward HOST:PORT [--token T]` prints
    `registered` on stdout after every successful upgrade, reconnects with backoff, and on
    a 401 prints the server's JSON body and exits 2. Every yamux stream is spliced to a new
    TCP connection to --forward."""

    def __init__(self, upstream_addr, endpoint, forward, token=None):
        if not os.access(GO_AGENT, os.X_OK):
            raise AssertionError("go-agent is not built at %s (tests/interop/interop.mk)"
                                 % GO_AGENT)
        argv = [GO_AGENT, "--url", "http://%s:%d" % tuple(upstream_addr[:2]),
                "--endpoint", endpoint, "--forward", forward]
        if token is not None:
            argv += ["--token", token]
        self.endpoint = endpoint
        self.lines = []
        self.err_lines = []
        self.registered = 0
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=ENV)
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, False),
                                         daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, True),
                                         daemon=True)]
        for t in self.readers:
            t.start()

    def _read(self, stream, is_err):
        for line in stream:
            text = line.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                if is_err:
                    self.err_lines.append(text)
                else:
                    self.lines.append(text)
                    if text.strip() == "registered":
                        self.registered += 1
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _tail(self):
        return "stdout:\n%s\nstderr:\n%s" % ("\n".join(self.lines[-15:]),
                                             "\n".join(self.err_lines[-15:]))

    def wait_registered(self, count=1, timeout=15.0):
        """Waits until `registered` has been printed `count` times in all."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.registered < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError_("agent %s: %d of %d registrations within %ss\n%s" % (
                        self.endpoint, self.registered, count, timeout, self._tail()))
                if self.proc.poll() is not None and not any(t.is_alive()
                                                            for t in self.readers):
                    raise AssertionError("agent %s exited (%s) before registering\n%s" % (
                        self.endpoint, self.proc.returncode, self._tail()))
                self.cond.wait(min(left, 0.5))
        return self

    def wait_exit(self, timeout=15.0):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError_("agent %s still running after %ss\n%s" % (
                self.endpoint, timeout, self._tail()))
        for t in self.readers:
            t.join(5)
        return code

    def json_lines(self):
        """Objects parsed from stdout lines holding JSON (the 401 body on a fatal exit)."""
        out = []
        with self.cond:
            lines = list(self.lines)
        for text in lines:
            i = text.find("{")
            if i < 0:
                continue
            try:
                obj = json.loads(text[i:])
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            except ProcessLookupError:
                pass
        _kill(self.proc)
        for t in self.readers:
            t.join(5)


def run_ws_client(url, args, timeout=60.0):
    """Runs ws_client.js to completion; returns (exit code, [JSON objects printed])."""
    p = subprocess.run([NODE, WS_CLIENT, url, "--timeout", str(int(timeout * 1000) - 2000)] +
                       list(args), stdin=subprocess.DEVNULL, capture_output=True, env=ENV,
                       timeout=timeout)
    objs = []
    for line in p.stdout.decode("utf-8", "replace").splitlines():
        try:
            objs.append(json.loads(line))
        except ValueError:
            objs.append({"event": "raw", "text": line})
    if p.stderr:
        objs.append({"event": "stderr", "text": p.stderr.decode("utf-8", "replace")[-2000:]})
    return p.returncode, objs


class RawResponse:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) in order
        self.body = body

    def header(self, name):
        name = name.lower()
        vals = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(vals) if vals else None


def read_response(f, method="GET", max_body=1 << 28):
    """Reads one HTTP/1.1 response from a buffered binary file (sock.makefile("rb")).
    Handles Content-Length, chunked, and close-delimited bodies. Returns a RawResponse,
    or None when the connection ends before a status line."""
    line = f.readline(65537)
    if not line:
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise AssertionError("bad status line %r" % line)
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for _ in range(1000):
        h = f.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    resp = RawResponse(status, reason, headers, b"")
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return resp
    te = (resp.header("transfer-encoding") or "").lower()
    cl = resp.header("content-length")
    if "chunked" in te:
        body = bytearray()
        while True:
            size = int(f.readline(1024).split(b";")[0].strip(), 16)
            if size == 0:
                while f.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += f.read(size)
            f.readline(3)
            if len(body) > max_body:
                raise AssertionError("response body over %d bytes" % max_body)
        resp.body = bytes(body)
    elif cl is not None:
        resp.body = f.read(int(cl))
    else:
        resp.body = f.read(max_body)
    return resp


def read_head_timeout_answer(s):
    """What a proxy-port client whose request head never completes gets: a 408 or the
    connection closed (either is allowed). Returns (status or None, seconds waited)."""
    started = time.monotonic()
    try:
        r = read_response(s.makefile("rb"))
    except ConnectionResetError:
        r = None
    return (None if r is None else r.status), time.monotonic() - started


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def wait_records(pikod, pred, timeout=15.0, what="log records"):
    """Waits until pred(list of all records so far) is true; returns its value."""
    deadline = time.monotonic() + timeout
    with pikod.cond:
        while True:
            v = pred(pikod.records)
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_("timed out waiting for %s; last lines:\n%s" % (
                    what, "\n".join(pikod.raw_lines[-30:])))
            if pikod.proc.poll() is not None and not pikod.reader.is_alive():
                raise AssertionError("pikod exited while waiting for %s" % what)
            pikod.cond.wait(min(left, 0.5))
