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


class Pikod:
    """A pikod supervisor with its children, on ephemeral loopback ports.

    Its stderr (JSON lines) is collected by a thread; tests wait for records with
    wait_log(). Ports are learned from the "listening" records.
    """

    LISTENERS = ("proxy", "upstream", "admin", "cluster")

    def __init__(self, args=(), config=None, env=None, state_dir=None, notify_socket=None,
                 ports=LISTENERS):
        self.tmp = tempfile.mkdtemp(prefix="pikod-it-")
        self.state_dir = state_dir or os.path.join(self.tmp, "state")
        self.config_path = None
        if config is not None:
            self.config_path = os.path.join(self.tmp, "pikod.conf")
            with open(self.config_path, "w") as f:
                f.write(config)
        argv = [PIKOD, "--state-dir", self.state_dir, "--grace-period", "5s"]
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
        self.records = []
        self.raw_lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=e, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.addrs = {}

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

    # ---- waiting ----
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
                    raise TimeoutError_("timed out waiting for %s; last lines:\n%s" % (
                        what, "\n".join(self.raw_lines[-30:])))
                if self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError("pikod exited (%s) while waiting for %s:\n%s" % (
                        self.proc.returncode, what, "\n".join(self.raw_lines[-30:])))
                self.cond.wait(min(left, 0.5))

    def wait_msg(self, msg, timeout=15.0, start=0, **fields):
        def pred(r):
            return r.get("msg") == msg and all(r.get(k) == v for k, v in fields.items())
        return self.wait_log(pred, timeout, start, what="%r %r" % (msg, fields))

    def mark(self):
        with self.cond:
            return len(self.records)

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
