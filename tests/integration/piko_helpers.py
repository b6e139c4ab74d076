"""Helpers for test_piko.py: the piko CLI as a process, the Go stand-in for a Piko server,
and a tiny RESP-like (Redis protocol) server. Every wait has a deadline; nothing sleeps to
synchronise."""
import json
import os
import signal
import socket
import subprocess
import threading
import time

from harness import ENV, PIKO, PK_BUILD, JsonLogProcess, TimeoutError_, _first_line, _kill

GO_PIKOSERVER = os.environ.get("GO_PIKOSERVER",
                               os.path.join(PK_BUILD, "interop", "go-pikoserver"))


class PikoProc(JsonLogProcess):
    """A running `piko` (agent or forward). Its stderr JSON records are collected; tests wait
    for them with wait_msg()."""

    name = "piko"

    def __init__(self, args, env=None):
        e = dict(ENV)
        if env:
            e.update(env)
        self.argv = [PIKO] + list(args)
        self._start(self.argv, e, stdout=subprocess.DEVNULL)

    def count(self, msg, **fields):
        with self.cond:
            return sum(1 for r in self.records if r.get("msg") == msg and
                       all(r.get(k) == v for k, v in fields.items()))

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=15.0):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError_("piko still running after %ss:\n%s" % (timeout, self.tail()))
        self.reader.join(5)
        return code

    def stop(self):
        _kill(self.proc)
        self.reader.join(5)


def run_piko(args, timeout=20):
    """Runs piko to completion (help, version, bad arguments). Returns (code, out, err)."""
    p = subprocess.run([PIKO] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                       env=ENV, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class GoPikoServer:
    """tests/interop/go/pikoserver: an independent upstream port (hashicorp/yamux +
    gorilla/websocket). Its stdout lines are events (see its main.go)."""

    def __init__(self, args=()):
        if not os.access(GO_PIKOSERVER, os.X_OK):
            raise AssertionError("go-pikoserver is not built at %s (tests/interop/interop.mk)"
                                 % GO_PIKOSERVER)
        self.proc = subprocess.Popen([GO_PIKOSERVER, "--listen", "127.0.0.1:0"] + list(args),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=ENV)
        try:
            self.port = int(_first_line(self.proc, 15, "go-pikoserver"))
        except BaseException:
            _kill(self.proc)
            raise
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def url(self, scheme="http"):
        return "%s://127.0.0.1:%d" % (scheme, self.port)

    def wait_line(self, prefix, count=1, timeout=15.0):
        """Waits until `count` lines start with prefix; returns them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [l for l in self.lines if l.startswith(prefix)]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError_("go-pikoserver: %d of %d lines %r within %ss; got %r"
                                        % (len(got), count, prefix, timeout, self.lines[-20:]))
                self.cond.wait(min(left, 0.5))

    def count(self, prefix):
        with self.cond:
            return sum(1 for l in self.lines if l.startswith(prefix))

    def stop(self):
        try:
            self.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
        except ProcessLookupError:
            pass
        _kill(self.proc)
        self.reader.join(5)


class RespServer:
    """A threaded server speaking the Redis protocol subset: commands are arrays of bulk
    strings; PING -> +PONG, ECHO x -> bulk x, SET k v -> +OK, GET k -> bulk or null,
    DEL k -> :n, INCR k -> :n, anything else -> -ERR. Replies in order (pipelining works)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = self.sock.getsockname()
        self.forward = "127.0.0.1:%d" % self.addr[1]
        self.data = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _read_command(f):
        line = f.readline()
        if not line:
            return None
        if not line.startswith(b"*"):
            raise ValueError("expected an array, got %r" % line[:40])
        n = int(line[1:].strip())
        args = []
        for _ in range(n):
            hdr = f.readline()
            if not hdr.startswith(b"$"):
                raise ValueError("expected a bulk string")
            size = int(hdr[1:].strip())
            args.append(f.read(size))
            f.read(2)
        return args

    @staticmethod
    def bulk(v):
        if v is None:
            return b"$-1\r\n"
        return b"$%d\r\n%s\r\n" % (len(v), v)

    def _reply(self, args):
        cmd = args[0].upper() if args else b""
        with self.lock:
            if cmd == b"PING":
                return b"+PONG\r\n"
            if cmd == b"ECHO" and len(args) == 2:
                return self.bulk(args[1])
            if cmd == b"SET" and len(args) == 3:
                self.data[args[1]] = args[2]
                return b"+OK\r\n"
            if cmd == b"GET" and len(args) == 2:
                return self.bulk(self.data.get(args[1]))
            if cmd == b"DEL" and len(args) == 2:
                return b":%d\r\n" % (1 if self.data.pop(args[1], None) is not None else 0)
            if cmd == b"INCR" and len(args) == 2:
                v = int(self.data.get(args[1], b"0")) + 1
                self.data[args[1]] = b"%d" % v
                return b":%d\r\n" % v
        return b"-ERR unknown command\r\n"

    def _serve(self, c):
        f = c.makefile("rb")
        try:
            while True:
                args = self._read_command(f)
                if args is None:
                    break
                c.sendall(self._reply(args))
        except (OSError, ValueError):
            pass
        finally:
            f.close()
            c.close()

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def resp_command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def resp_read(f):
    """Reads one RESP reply from a buffered file: str (+), int (:), bytes/None ($), or
    raises on -ERR."""
    line = f.readline()
    if not line:
        raise AssertionError("connection closed before a reply")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"+":
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n)
        f.read(2)
        return data
    if kind == b"-":
        raise AssertionError("error reply %r" % rest)
    raise AssertionError("bad reply %r" % line[:60])
