"""pikod as a process: start, readiness, respawn, reload, shutdown, systemd notify, config
errors. Real pikod processes on loopback ports; real HTTP clients."""
import http.client
import json
import os
import signal
import socket
import threading
import time
import unittest

from harness import Load, Pikod, NotifySocket, run_pikod, TimeoutError_


def proxy_request(addr, host="ep.example.com", timeout=10.0):
    """One fresh connection, one request; returns (status, body)."""
    c = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        c.request("GET", "/x", headers={"Host": host})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def expect_no_upstreams(addr):
    """One request on a fresh connection: None if it got pikod's 502, else what it got."""
    status, body = proxy_request(addr)
    if status == 502 and json.loads(body) == {"error": "no available upstreams"}:
        return None
    return "unexpected answer %s %r" % (status, body)


class DaemonTest(unittest.TestCase):
    def start(self, *args, **kw):
        d = Pikod(*args, **kw)
        self.addCleanup(d.stop)
        return d

    def test_start_ready_health_and_404(self):
        d = self.start(["--workers", "2"]).wait_ready()
        self.assertEqual(len(d.worker_pids()), 2)
        status, headers, body = d.http("admin", "GET", "/ready")
        self.assertEqual(status, 200, body)
        status, _, body = d.http("admin", "GET", "/health")
        self.assertEqual(status, 200)
        status, headers, body = d.http("admin", "GET", "/nope")
        self.assertEqual(status, 404)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(json.loads(body), {"error": "not found"})

    def test_port_zero_is_bound_and_logged(self):
        d = self.start(["--workers", "1"]).wait_ready()
        for name in ("proxy", "upstream", "admin", "cluster"):
            self.assertNotEqual(d.addrs[name][1], 0, name)
        # The logged proxy port really is ours: it answers with pikod's JSON error.
        status, body = proxy_request(d.addrs["proxy"])
        self.assertEqual(status, 502)
        self.assertEqual(json.loads(body), {"error": "no available upstreams"})

    def test_proxy_without_endpoint_is_400(self):
        d = self.start(["--workers", "1"]).wait_ready()
        status, body = proxy_request(d.addrs["proxy"], host="localhost")
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body), {"error": "missing endpoint id"})

    def test_kill_9_worker_respawns_into_same_slot(self):
        d = self.start(["--workers", "2"]).wait_ready()
        before = d.worker_pids()
        slot, pid = sorted(before.items())[0]
        mark = d.mark()
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _, rec = d.wait_msg("child started", 10, start=mark, slot=slot)
        started_after = time.monotonic() - killed_at
        self.assertNotEqual(rec["child_pid"], pid)
        self.assertEqual(rec["role"], "worker")
        self.assertLess(started_after, 1.0, "respawn took %.2fs" % started_after)
        d.wait_msg("child ready", 10, start=mark, slot=slot)
        _, exit_rec = d.wait_msg("child exited", 1, start=mark, slot=slot)
        self.assertEqual(exit_rec["signal"], signal.SIGKILL)
        status, _, _ = d.http("admin", "GET", "/ready")
        self.assertEqual(status, 200)
        # The other worker was not touched.
        other = [s for s in before if s != slot][0]
        self.assertEqual(d.worker_pids()[other], before[other])

    def test_repeated_crashes_back_off_exponentially(self):
        d = self.start(["--workers", "1"]).wait_ready()
        slot, pid = list(d.worker_pids().items())[0]
        delays = []
        for _ in range(3):
            mark = d.mark()
            os.kill(pid, signal.SIGKILL)
            _, rec = d.wait_msg("respawning child", 10, start=mark, slot=slot)
            delays.append(rec["delay_ms"])
            _, rec = d.wait_msg("child started", 15, start=mark, slot=slot)
            pid = rec["child_pid"]
            d.wait_msg("child ready", 15, start=mark, slot=slot)
        self.assertEqual(delays, [delays[0], delays[0] * 2, delays[0] * 4])

    def test_sighup_under_load_loses_nothing_and_replaces_workers(self):
        d = self.start(["--workers", "2"]).wait_ready()
        old = set(d.worker_pids().values())
        with Load(lambda: expect_no_upstreams(d.addrs["proxy"])) as load:
            for gen in (2, 3, 4):
                # Load must be flowing before each reload for the test to mean anything.
                load.wait_progress(50)
                mark = d.mark()
                d.signal(signal.SIGHUP)
                d.wait_msg("reload complete", 30, start=mark, generation=gen)
            load.wait_progress(50)
        self.assertEqual(load.errors, [])
        self.assertGreater(load.ok, 200)
        new = set(d.worker_pids(generation=4).values())
        self.assertEqual(len(new), 2)
        self.assertFalse(old & new)
        # The old generation is gone once drained.
        for pid in old:
            d.wait_log(lambda r, p=pid: r.get("msg") == "child exited" and r.get("child_pid") == p,
                       15, what="exit of old worker %d" % pid)

    def test_invalid_config_on_sighup_keeps_old_generation(self):
        notify = NotifySocket()
        self.addCleanup(notify.close)
        d = self.start(["--workers", "1"], config='proxy = { timeout = "10s"; };\n',
                       notify_socket=notify.path).wait_ready()
        notify.wait_for(lambda m: m.get("READY") == "1")
        pids = d.worker_pids()
        with open(d.config_path, "w") as f:
            f.write('proxy = { timeout = "ten seconds"; };\n')
        mark = d.mark()
        d.signal(signal.SIGHUP)
        _, rec = d.wait_msg("reload failed; the running generation keeps serving", 15,
                            start=mark)
        self.assertIn("proxy.timeout", rec["error"])
        m = notify.wait_for(lambda m: m.get("STATUS", "").startswith("reload failed"))
        self.assertEqual(m.get("READY"), "1")
        self.assertIn("proxy.timeout", m["STATUS"])
        self.assertEqual(d.children(start=mark), {})
        self.assertEqual(d.worker_pids(), pids)
        status, _ = proxy_request(d.addrs["proxy"])
        self.assertEqual(status, 502)
        status, _, _ = d.http("admin", "GET", "/ready")
        self.assertEqual(status, 200)

    def test_sighup_with_changed_address_moves_listener(self):
        p1, p2 = free_port(), free_port()
        d = self.start(["--workers", "1", "--log.subsystems", "listener"],
                       ports=("proxy", "admin", "cluster"),
                       config='upstream = { bind_addr = "127.0.0.1:%d"; };\n' % p1).wait_ready()
        self.assertEqual(d.addrs["upstream"][1], p1)
        proxy_before = d.addrs["proxy"]
        # A head that never completes keeps the old worker draining (up to the grace period).
        held = socket.create_connection(proxy_before, timeout=10)
        self.addCleanup(held.close)
        held.sendall(b"GET / HTTP/1.1\r\nHost: ep.example.com\r\n")
        with open(d.config_path, "w") as f:
            f.write('upstream = { bind_addr = "127.0.0.1:%d"; };\n' % p2)
        mark = d.mark()
        d.signal(signal.SIGHUP)
        _, rec = d.wait_msg("listening", 15, start=mark, listener="upstream")
        self.assertEqual(rec["bound"], "127.0.0.1:%d" % p2)
        d.wait_msg("reload complete", 30, start=mark)
        # Only the changed listener was bound again.
        self.assertEqual([r.get("listener") for r in d.records[mark:]
                          if r.get("msg") == "listening"], ["upstream"])
        c = http.client.HTTPConnection("127.0.0.1", p2, timeout=10)
        c.request("GET", "/nope")
        self.assertEqual(c.getresponse().status, 404)
        c.close()
        # The old address is closed as soon as the old generation drains, even while its
        # worker still finishes a request (here a head that never completes).
        old_pid = list(d.worker_pids(generation=1).values())[0]
        d.wait_log(lambda r: r.get("msg") == "stopped accepting for good" and
                   r.get("listener") == "upstream" and r.get("pid") == old_pid, 15,
                   start=mark, what="the old worker letting go of the upstream listener")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p1), timeout=5).close()
        os.kill(old_pid, 0)  # still there: refused while the old worker drains
        held.close()
        for pid in d.worker_pids(generation=1).values():
            d.wait_log(lambda r, p=pid: r.get("msg") == "child exited" and r.get("child_pid") == p,
                       15, what="exit of old worker")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p1), timeout=5).close()
        status, _ = proxy_request(proxy_before)
        self.assertEqual(status, 502)

    def test_sigterm_exits_zero_and_ready_turns_503_while_draining(self):
        notify = NotifySocket()
        self.addCleanup(notify.close)
        d = self.start(["--workers", "2"], notify_socket=notify.path).wait_ready()
        ready = notify.wait_for(lambda m: m.get("READY") == "1")
        self.assertEqual(ready.get("MAINPID"), str(d.proc.pid))
        # Hold a request head half-sent so a worker has work in flight while stopping.
        s = socket.create_connection(d.addrs["proxy"])
        s.sendall(b"GET / HTTP/1.1\r\nHost: ep.example.com\r\n")
        workers = list(d.worker_pids().values())
        mark = d.mark()
        d.signal(signal.SIGTERM)
        notify.wait_for(lambda m: m.get("STOPPING") == "1")
        # Every worker, not just the first child to say so: the one holding s must know.
        for pid in workers:
            d.wait_msg("draining", 10, start=mark, pid=pid)
        status, _, body = d.http("admin", "GET", "/ready")
        self.assertEqual(status, 503, body)
        s.sendall(b"\r\n")
        reply = s.recv(4096)
        self.assertTrue(reply.startswith(b"HTTP/1.1 502"), reply)
        self.assertIn(b"Connection: close", reply)
        s.close()
        self.assertEqual(d.wait_exit(10), 0)
        self.assertFalse(os.path.exists(os.path.join(d.state_dir, "pikod.pid")))

    def test_second_sigterm_stops_at_once(self):
        d = self.start(["--workers", "1"]).wait_ready()
        s = socket.create_connection(d.addrs["proxy"])
        s.sendall(b"GET / HTTP/1.1\r\n")  # keeps the worker from finishing its drain
        d.signal(signal.SIGTERM)
        d.wait_msg("stopping", 10, proc="supervisor")
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(4), 0)
        s.close()

    def test_notify_reloading_carries_monotonic_usec(self):
        notify = NotifySocket()
        self.addCleanup(notify.close)
        d = self.start(["--workers", "1"], notify_socket=notify.path).wait_ready()
        notify.wait_for(lambda m: m.get("READY") == "1")
        d.signal(signal.SIGHUP)
        m = notify.wait_for(lambda m: m.get("RELOADING") == "1")
        usec = int(m["MONOTONIC_USEC"])
        now = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
        self.assertLess(abs(now - usec), 30e6)
        m = notify.wait_for(lambda m: m.get("READY") == "1" and "generation 2" in
                            m.get("STATUS", ""))
        self.assertIn("STATUS", m)

    def test_second_instance_on_same_state_dir_refuses(self):
        d = self.start(["--workers", "1"]).wait_ready()
        code, out, err = run_pikod(["--state-dir", d.state_dir, "--workers", "1",
                                    "--proxy.bind-addr", "127.0.0.1:0",
                                    "--upstream.bind-addr", "127.0.0.1:0",
                                    "--admin.bind-addr", "127.0.0.1:0",
                                    "--cluster.bind-addr", "127.0.0.1:0"])
        self.assertEqual(code, 1, err)
        self.assertIn("another pikod (pid %d)" % d.proc.pid, err)
        # The first one is unharmed.
        status, _, _ = d.http("admin", "GET", "/ready")
        self.assertEqual(status, 200)

    def test_busy_port_is_a_clear_error(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        self.addCleanup(s.close)
        d = self.start(["--workers", "1", "--proxy.bind-addr", "127.0.0.1:%d" % port],
                       ports=("upstream", "admin", "cluster"))
        code = d.wait_exit(20)
        self.assertEqual(code, 1)
        self.assertTrue(any("Address already in use" in l and "proxy" in l
                            for l in d.raw_lines), d.raw_lines)


class CommandLineTest(unittest.TestCase):
    def test_version(self):
        code, out, _ = run_pikod(["--version"])
        self.assertEqual(code, 0)
        self.assertRegex(out, r"^pikod \d+\.\d+\.\d+")

    def test_help_lists_every_option_with_default(self):
        code, out, _ = run_pikod(["--help"])
        self.assertEqual(code, 0)
        for flag in ("--workers", "--state-dir", "--grace-period", "--proxy.bind-addr",
                     "--proxy.timeout", "--proxy.upstream-wait", "--proxy.http.max-header-bytes",
                     "--proxy.http.read-header-timeout", "--proxy.http.idle-timeout",
                     "--upstream.bind-addr", "--admin.bind-addr", "--cluster.bind-addr",
                     "--cluster.join", "--cluster.node-id-prefix", "--log.level",
                     "--log.subsystems", "--upstream.auth.hmac-secret-key",
                     "--proxy.tls.cert", "--check", "--config"):
            self.assertIn(flag, out)
        self.assertIn(":8000", out)
        self.assertIn("127.0.0.1:8002", out)

    def check_config(self, text, *expect_in_err, tmpdir=None):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pikod.conf")
            with open(path, "w") as f:
                f.write(text)
            code, out, err = run_pikod(["--check", "--config", path])
        self.assertEqual(code, 2, "expected exit 2 for %r, got %d: %s%s" % (text, code, out, err))
        for e in expect_in_err:
            self.assertIn(e, err)
        return err

    def test_check_accepts_valid_config(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pikod.conf")
            with open(path, "w") as f:
                f.write('workers = 2;\nproxy = { bind_addr = ":9000"; timeout = "5s"; };\n'
                        'log = { level = "debug"; subsystems = ["proxy"]; };\n')
            code, out, err = run_pikod(["--check", "--config", path])
        self.assertEqual(code, 0, err)

    def test_config_errors_name_key_and_line(self):
        self.check_config('workers = 1;\nproxy = { bind_adr = ":1"; };\n', "proxy.bind_adr", ":2")
        self.check_config('workers = "two";\n', "workers", ":1")
        self.check_config('\nproxy = { bind_addr = "nonsense"; };\n', "proxy.bind_addr", ":2")
        self.check_config('proxy = { timeout = "30x"; };\n', "proxy.timeout", ":1")
        self.check_config('\n\nproxy = { tls = { cert = "/etc/hostname"; }; };\n',
                          "proxy.tls", ":3")
        self.check_config('log = { level = "loud"; };\n', "log.level", ":1")
        self.check_config('workers = -1;\n', "workers", ":1")
        self.check_config('upstream = { auth = { rsa_public_key = "not a key"; }; };\n',
                          "upstream.auth.rsa_public_key", ":1")
        self.check_config('workers = 1\nproxy = {', "syntax error")
        self.check_config('state_dir = "${PIKOD_TEST_SURELY_UNSET_VAR}";\n', "state_dir",
                          "PIKOD_TEST_SURELY_UNSET_VAR")

    def test_tls_is_refused_until_implemented(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
            for p in (cert, key):
                with open(p, "w") as f:
                    f.write("placeholder\n")
            code, _, err = run_pikod(["--check", "--proxy.tls.cert", cert,
                                      "--proxy.tls.key", key])
        self.assertEqual(code, 2, err)
        self.assertIn("proxy.tls.cert: TLS listeners are not implemented", err)

    def test_flag_errors_exit_2_and_name_the_flag(self):
        for args, needle in ((["--proxy.timeout", "soon"], "--proxy.timeout"),
                             (["--workers", "many"], "--workers"),
                             (["--no-such-flag", "1"], "--no-such-flag"),
                             (["--admin.bind-addr", "1.2.3.4:99999"], "--admin.bind-addr"),
                             (["positional"], "positional"),
                             (["--config", "/nonexistent/pikod.conf"], "/nonexistent/pikod.conf")):
            code, out, err = run_pikod(["--check"] + args)
            self.assertEqual(code, 2, (args, err))
            self.assertIn(needle, err, args)

    def test_env_expansion_in_config(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pikod.conf")
            with open(path, "w") as f:
                f.write('proxy = { bind_addr = "${PIKOD_IT_ADDR}"; timeout = "${PIKOD_IT_T:7s}"; };\n')
            code, _, err = run_pikod(["--check", "--config", path],
                                     env={"PIKOD_IT_ADDR": "127.0.0.1:9"})
            self.assertEqual(code, 0, err)
            code, _, err = run_pikod(["--check", "--config", path],
                                     env={"PIKOD_IT_ADDR": "bad address"})
            self.assertEqual(code, 2)
            self.assertIn("proxy.bind_addr", err)


if __name__ == "__main__":
    unittest.main()
