"""Wire compatibility of our codecs (proto/websocket, proto/yamux, proto/http1) with
independent implementations: hashicorp/yamux + gorilla/websocket (Go) and yamux-js + ws
(Node). Each test pairs tests/interop/codec_peer (our codecs) with an independent peer over
loopback; the side that opens streams sends 1 MiB of a per-stream pattern on each of 64
streams (four times the 256 KiB window), the other side echoes, and both sides' summary
lines must account for every byte. Also checks go-agent, the stand-in Piko agent that the
tunnel tests use.

Binaries come from the make fragment tests/interop/interop.mk (`make integration-test`
builds them): $PK_SAN_BUILD/interop/codec_peer, $PK_BUILD/interop/go-yamuxpeer,
$PK_BUILD/interop/go-agent, tests/interop/node/peer.js (+ node_modules).
"""
import os
import shutil
import socket
import subprocess
import threading
import time
import unittest

from harness import ENV, ROOT, TimeoutError_

BUILD = os.environ.get("PK_BUILD", os.path.join(ROOT, "build"))
SAN_BUILD = os.environ.get("PK_SAN_BUILD", os.path.join(BUILD, "san"))
CODEC_PEER = [os.path.join(SAN_BUILD, "interop", "codec_peer")]
GO_PEER = [os.path.join(BUILD, "interop", "go-yamuxpeer")]
GO_AGENT = [os.path.join(BUILD, "interop", "go-agent")]
NODE_PEER = [shutil.which("node") or "/usr/bin/node",
             os.path.join(ROOT, "tests", "interop", "node", "peer.js")]

STREAMS = 64
BYTES = 1 << 20
PEER_TIMEOUT = 60  # seconds, enforced by each peer itself
WAIT = 90          # seconds the test waits for a peer
NODE_WS_PING_MS = "50"


class Peer:
    """A peer process; stdout lines are collected by a thread and waited for with a
    deadline (nothing sleeps to synchronise)."""

    def __init__(self, argv):
        for path in argv[:2]:
            if path.startswith("/") and not os.path.exists(path):
                raise AssertionError("%s is missing: run `make integration-test` (or build "
                                     "the INTEROP_TARGETS) first" % path)
        self.argv = argv
        self.lines = []
        self.err_lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=ENV, start_new_session=True)
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                                         daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr,
                                                                  self.err_lines),
                                         daemon=True)]
        for t in self.readers:
            t.start()

    def _read(self, stream, into):
        for raw in stream:
            with self.cond:
                into.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def describe(self):
        with self.cond:
            return "%s\nstdout:\n%s\nstderr (last 20):\n%s" % (
                " ".join(self.argv), "\n".join(self.lines), "\n".join(self.err_lines[-20:]))

    def wait_line(self, pred, timeout=WAIT, start=0, what="line"):
        """Returns (index, line) of the first stdout line at index >= start matching pred."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i]):
                        return i, self.lines[i]
                    i += 1
                if not self.readers[0].is_alive():
                    raise AssertionError("peer ended while waiting for %s:\n%s" % (
                        what, self.describe()))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError_("timed out waiting for %s:\n%s" % (
                        what, self.describe()))
                self.cond.wait(min(left, 0.5))

    def port(self):
        _, line = self.wait_line(lambda l: True, what="the port line")
        return int(line)

    def wait(self, timeout=WAIT):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError_("peer did not exit within %ss:\n%s" % (timeout,
                                                                      self.describe()))
        for t in self.readers:
            t.join(10)
        return rc

    def summaries(self):
        with self.cond:
            return [parse_summary(l) for l in self.lines if l.startswith("summary ")]

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        for t in self.readers:
            t.join(5)


def parse_summary(line):
    """summary k=v ... error=<free text to the end>  ->  dict (numbers as int)."""
    head, _, err = line.partition(" error=")
    out = {"error": err}
    for field in head.split()[1:]:
        k, _, v = field.partition("=")
        out[k] = int(v)
    return out


class EchoServer:
    """A TCP echo service on loopback (the service behind go-agent): echoes as it reads
    and half-closes its side after the client's EOF."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.conns = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    def _echo(self, c):
        c.settimeout(WAIT)
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


class InteropTest(unittest.TestCase):
    def peer(self, argv):
        p = Peer(argv)
        self.addCleanup(p.stop)
        return p

    def pair(self, server, server_args, client, client_args):
        """Runs a one-connection server and a client against it to completion. Returns
        (server summary, client summary)."""
        srv = self.peer(server + ["server", "--listen", "127.0.0.1:0", "--conns", "1",
                                  "--timeout", str(PEER_TIMEOUT)] + server_args)
        url = "ws://127.0.0.1:%d/piko/v1/upstream/interop" % srv.port()
        cli = self.peer(client + ["client", "--url", url, "--timeout", str(PEER_TIMEOUT)] +
                        client_args)
        crc = cli.wait()
        src = srv.wait()
        both = "\n--- client: %s\n--- server: %s" % (cli.describe(), srv.describe())
        self.assertEqual((crc, src), (0, 0), both)
        ss, cs = srv.summaries(), cli.summaries()
        self.assertEqual(len(ss), 1, srv.describe())
        self.assertEqual(len(cs), 1, cli.describe())
        return ss[0], cs[0]

    def assert_opener(self, s, who):
        self.assertEqual((s["opened"], s["verified"], s["failed"], s["verified_bytes"],
                          s["error"]), (STREAMS, STREAMS, 0, STREAMS * BYTES, "none"), who)
        self.assertGreaterEqual(s["pings"], 1, who)  # the --ping sent at start was answered

    def assert_echoer(self, s, who):
        self.assertEqual((s["opened"], s["echoed_streams"], s["echoed_bytes"], s["error"]),
                         (0, STREAMS, STREAMS * BYTES, "none"), who)

    OPEN = ["--open", str(STREAMS), "--bytes", str(BYTES), "--ping"]

    # ---- Go: hashicorp/yamux + gorilla/websocket ----

    def test_go_client_opens_codec_server_echoes(self):
        srv, cli = self.pair(CODEC_PEER, ["--echo", "--frag", "--ws-ping-ms", "5"],
                             GO_PEER, self.OPEN + ["--ws-ping-ms", "5", "--ping-ms", "20"])
        self.assert_opener(cli, "go client")
        self.assert_echoer(srv, "codec server")

    def test_codec_server_opens_go_client_echoes(self):
        # Piko's direction: the WebSocket server is the yamux server and opens the streams.
        srv, cli = self.pair(CODEC_PEER, self.OPEN + ["--ws-ping-ms", "5", "--ping-ms", "20"],
                             GO_PEER, ["--echo", "--ws-ping-ms", "5", "--ping-ms", "20"])
        self.assert_opener(srv, "codec server")
        self.assert_echoer(cli, "go client")

    def test_codec_client_opens_go_server_echoes(self):
        srv, cli = self.pair(GO_PEER, ["--echo", "--ws-ping-ms", "5", "--ping-ms", "20"],
                             CODEC_PEER, self.OPEN + ["--frag", "--ws-ping-ms", "5"])
        self.assert_opener(cli, "codec client")
        self.assert_echoer(srv, "go server")

    def test_go_server_opens_codec_client_echoes(self):
        srv, cli = self.pair(GO_PEER, self.OPEN + ["--ws-ping-ms", "5"],
                             CODEC_PEER, ["--echo", "--msg-size", "65536", "--ws-ping-ms", "5",
                                          "--ping", "--ping-ms", "20"])
        self.assert_opener(srv, "go server")
        self.assert_echoer(cli, "codec client")

    def test_codec_server_lazy_opens_large_windows_go_client_echoes(self):
        # Lazy opens (SYN on the first Data frame) and windows above 256 KiB both ways: our
        # grant rides on later WindowUpdates, hashicorp's on its ACK.
        srv, cli = self.pair(CODEC_PEER, self.OPEN + ["--lazy", "--window", str(1 << 20)],
                             GO_PEER, ["--echo", "--window", str(4 << 20)])
        self.assert_opener(srv, "codec server")
        self.assert_echoer(cli, "go client")

    def test_go_server_opens_large_windows_codec_client_echoes(self):
        # hashicorp grants its larger window with the SYN; we grant ours with the ACK.
        srv, cli = self.pair(GO_PEER, self.OPEN + ["--window", str(4 << 20)],
                             CODEC_PEER, ["--echo", "--window", str(1 << 20)])
        self.assert_opener(srv, "go server")
        self.assert_echoer(cli, "codec client")

    def test_codec_server_rejects_text_message(self):
        srv = self.peer(CODEC_PEER + ["server", "--listen", "127.0.0.1:0", "--echo",
                                      "--conns", "1", "--timeout", str(PEER_TIMEOUT)])
        url = "ws://127.0.0.1:%d/piko/v1/upstream/interop" % srv.port()
        cli = self.peer(GO_PEER + ["client", "--url", url, "--send-text",
                                   "--timeout", str(PEER_TIMEOUT)])
        self.assertEqual(cli.wait(), 0, cli.describe())
        self.assertIn("closed code=1003", cli.lines, cli.describe())
        self.assertEqual(srv.wait(), 1, srv.describe())  # the connection ended in error
        [s] = srv.summaries()
        self.assertTrue(s["error"].startswith("websocket: error 1003"), srv.describe())

    # ---- Node: yamux-js + ws ----
    # ws terminates a connection with 60 automatic pongs not yet flushed (maxPendingAutoPongs),
    # which pings every 5 ms can reach while 64 MiB are queued, so Node pairs ping less often.

    def test_node_client_opens_codec_server_echoes(self):
        srv, cli = self.pair(CODEC_PEER, ["--echo", "--ws-ping-ms", NODE_WS_PING_MS],
                             NODE_PEER, self.OPEN + ["--ws-ping-ms", NODE_WS_PING_MS])
        self.assert_opener(cli, "node client")
        self.assert_echoer(srv, "codec server")

    def test_codec_server_opens_node_client_echoes(self):
        srv, cli = self.pair(CODEC_PEER, self.OPEN + ["--frag", "--ws-ping-ms", NODE_WS_PING_MS],
                             NODE_PEER, ["--echo", "--ws-ping-ms", NODE_WS_PING_MS])
        self.assert_opener(srv, "codec server")
        self.assert_echoer(cli, "node client")

    def test_codec_client_opens_node_server_echoes(self):
        srv, cli = self.pair(NODE_PEER, ["--echo", "--ws-ping-ms", NODE_WS_PING_MS],
                             CODEC_PEER, self.OPEN + ["--ws-ping-ms", NODE_WS_PING_MS])
        self.assert_opener(cli, "codec client")
        self.assert_echoer(srv, "node server")

    def test_node_server_opens_codec_client_echoes(self):
        srv, cli = self.pair(NODE_PEER, self.OPEN + ["--ws-ping-ms", NODE_WS_PING_MS],
                             CODEC_PEER, ["--echo", "--frag", "--ws-ping-ms", NODE_WS_PING_MS])
        self.assert_opener(srv, "node server")
        self.assert_echoer(cli, "codec client")

    def test_codec_server_lazy_opens_large_windows_node_client_echoes(self):
        srv, cli = self.pair(CODEC_PEER, self.OPEN + ["--lazy", "--window", str(1 << 20)],
                             NODE_PEER, ["--echo", "--window", str(2 << 20)])
        self.assert_opener(srv, "codec server")
        self.assert_echoer(cli, "node client")

    # ---- go-agent, the stand-in Piko agent ----

    def test_go_agent_registers_forwards_and_reconnects(self):
        echo = EchoServer()
        self.addCleanup(echo.close)
        streams, nbytes = 8, 256 * 1024 + 1
        srv = self.peer(CODEC_PEER + ["server", "--listen", "127.0.0.1:0", "--conns", "2",
                                      "--open", str(streams), "--bytes", str(nbytes),
                                      "--expect-token", "tok-1",
                                      "--timeout", str(PEER_TIMEOUT)])
        port = srv.port()
        agent = self.peer(GO_AGENT + ["--url", "http://127.0.0.1:%d" % port, "--endpoint",
                                      "ep-1", "--forward", echo.addr, "--token", "tok-1"])
        # The server ends the first session once its streams are verified; the agent must
        # register again, and the second session must work as well.
        self.assertEqual(srv.wait(), 0, srv.describe() + "\n" + agent.describe())
        upgrades = [l for l in srv.lines if l.startswith("upgraded ")]
        self.assertEqual(upgrades, ["upgraded path=/piko/v1/upstream/ep-1"] * 2)
        for s in srv.summaries():
            self.assertEqual((s["verified"], s["verified_bytes"], s["error"]),
                             (streams, streams * nbytes, "none"), srv.describe())
        agent.wait_line(lambda l: l == "registered", start=1, what="second registration")
        self.assertGreaterEqual(echo.conns, 2 * streams)

    def test_go_agent_exits_2_on_401(self):
        srv = self.peer(CODEC_PEER + ["server", "--listen", "127.0.0.1:0", "--conns", "1",
                                      "--echo", "--expect-token", "right",
                                      "--timeout", str(PEER_TIMEOUT)])
        port = srv.port()
        agent = self.peer(GO_AGENT + ["--url", "http://127.0.0.1:%d" % port, "--endpoint",
                                      "ep-1", "--forward", "127.0.0.1:9", "--token", "wrong"])
        self.assertEqual(agent.wait(), 2, agent.describe())
        self.assertEqual(agent.lines, ['{"error":"invalid token"}'], agent.describe())
        srv.wait()


if __name__ == "__main__":
    unittest.main()
