#!/usr/bin/env python3
"""A real HTTP/1.1 service to put behind an agent in integration tests.

Usage: upstream_service.py [ID]
Listens on 127.0.0.1:0 and prints the port as the first line of stdout. Every response
carries `X-Upstream-Id: ID` so tests can tell two services apart.

  /echo[...]           JSON: method, path, query, headers (ordered [name, value] pairs),
                       body_length, body_sha256, id. Any method; the request body may use
                       Content-Length or Transfer-Encoding: chunked.
  /bytes?n=N           N bytes of pattern() with Content-Length
  /chunked?n=N&chunk=C the same bytes with Transfer-Encoding: chunked, C bytes a chunk
  /slow?ms=M           waits M ms (at most 60 s), then answers 200 "slow done"
  /status?code=C       answers status C with a short body (none for 1xx/204/304)

Keep-alive is supported for clients that ask for it; the request body is always read in
full before answering so a connection stays in sync.
"""
import hashlib
import http.server
import json
import sys
import time
import urllib.parse

CYCLE = 251  # prime, so an offset error shows up at every power-of-two boundary
_BLOCK = bytes(i % CYCLE for i in range(CYCLE * 261))  # 65511 bytes, a whole number of cycles
MAX_N = 1 << 31


def pattern(n, offset=0):
    """The deterministic bytes [offset, offset+n): byte i is i % 251."""
    out = bytearray()
    pos = offset
    end = offset + n
    while pos < end:
        start = pos % CYCLE
        take = min(len(_BLOCK) - start, end - pos)
        out += _BLOCK[start:start + take]
        pos += take
    return bytes(out)


def pattern_chunks(n, size=65536):
    """Yields pattern(n) in pieces of `size` bytes (for streaming large bodies)."""
    off = 0
    while off < n:
        k = min(size, n - off)
        yield pattern(k, off)
        off += k


class BadRequest(Exception):
    pass


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "upstream-service"
    upstream_id = "upstream"

    def log_message(self, fmt, *args):  # quiet: tests read stdout for the port only
        pass

    # ---- request body ----
    def _read_exact(self, n, sink):
        while n > 0:
            data = self.rfile.read(min(n, 1 << 16))
            if not data:
                raise BadRequest("body ended early")
            sink(data)
            n -= len(data)

    def _read_line(self):
        line = self.rfile.readline(4098)
        if not line.endswith(b"\n"):
            raise BadRequest("bad chunk line")
        return line

    def read_body(self, sink):
        """Reads the request body (chunked or Content-Length) into sink(bytes)."""
        te = self.headers.get("Transfer-Encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise BadRequest("unsupported transfer-encoding %r" % te)
            while True:
                size_text = self._read_line().split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BadRequest("bad chunk size %r" % size_text)
                if size == 0:
                    while self._read_line() not in (b"\r\n", b"\n"):
                        pass  # trailers
                    return
                self._read_exact(size, sink)
                if self._read_line() not in (b"\r\n", b"\n"):
                    raise BadRequest("missing CRLF after chunk")
        cl = self.headers.get("Content-Length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                raise BadRequest("bad content-length")
            self._read_exact(n, sink)

    # ---- responses ----
    def _send(self, code, body=b"", ctype="text/plain", extra=()):
        self.send_response(code)
        self.send_header("X-Upstream-Id", self.upstream_id)
        for k, v in extra:
            self.send_header(k, v)
        if code >= 200 and code not in (204, 304):
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if code >= 200 and code not in (204, 304) and self.command != "HEAD":
            self.wfile.write(body)

    def _int_arg(self, q, name, default=None, lo=0, hi=MAX_N):
        v = q.get(name, [None])[0]
        if v is None:
            if default is None:
                raise BadRequest("missing %s" % name)
            return default
        try:
            n = int(v)
        except ValueError:
            raise BadRequest("bad %s" % name)
        if not lo <= n <= hi:
            raise BadRequest("%s out of range" % name)
        return n

    def handle_any(self):
        h = hashlib.sha256()
        length = [0]

        def sink(data):
            h.update(data)
            length[0] += len(data)

        try:
            self.read_body(sink)
            path, _, query = self.path.partition("?")
            q = urllib.parse.parse_qs(query, keep_blank_values=True)
            if path.startswith("/echo"):
                doc = {
                    "id": self.upstream_id,
                    "method": self.command,
                    "path": path,
                    "query": query,
                    "raw_target": self.path,
                    "version": self.request_version,
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "body_length": length[0],
                    "body_sha256": h.hexdigest(),
                }
                self._send(200, json.dumps(doc).encode(), "application/json")
            elif path == "/bytes":
                n = self._int_arg(q, "n")
                self.send_response(200)
                self.send_header("X-Upstream-Id", self.upstream_id)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(n))
                self.end_headers()
                for piece in pattern_chunks(n):
                    self.wfile.write(piece)
            elif path == "/chunked":
                n = self._int_arg(q, "n")
                chunk = self._int_arg(q, "chunk", 4096, 1, 1 << 24)
                self.send_response(200)
                self.send_header("X-Upstream-Id", self.upstream_id)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for piece in pattern_chunks(n, chunk):
                    self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/slow":
                ms = self._int_arg(q, "ms", 1000, 0, 60000)
                time.sleep(ms / 1000.0)  # the behaviour under test: a slow service
                self._send(200, b"slow done")
            elif path == "/status":
                code = self._int_arg(q, "code", 200, 100, 599)
                self._send(code, b"status %d" % code)
            else:
                self._send(404, b"not found")
        except BadRequest as e:
            self.close_connection = True
            self._send(400, str(e).encode(), extra=(("Connection", "close"),))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main():
    Handler.upstream_id = sys.argv[1] if len(sys.argv) > 1 else "upstream"
    srv = Server(("127.0.0.1", 0), Handler)
    sys.stdout.write("%d\n" % srv.server_address[1])
    sys.stdout.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
