#!/usr/bin/env python3
"""Install test of the .deb (make install-test): install, run, remove, purge.

On this machine, as root:
  1. dpkg -i the package: every file of packaging/files.txt is in place, the pikod user
     and /var/lib/pikod exist, the binaries run, the packaged configuration validates
     (as root and as the pikod user), the installed unit passes systemd-analyze verify
     and security (exposure <= 3.0), and the installed pikod serves /ready as the pikod
     user with state in /var/lib/pikod, then stops cleanly on SIGTERM;
  2. dpkg -r: the programs are gone, the configuration stays;
  3. dpkg -P: nothing of the package is left (files, /etc/pikod, /var/lib/pikod, the
     systemd enablement link, dpkg's record).
The package must not be installed beforehand. Whatever happens, the package is purged
at the end and net.unix.max_dgram_qlen (which the package raises) is restored.
Ends with "install-test: N passed, N failed".

Usage: install_test.py PATH/pikod_<version>_<arch>.deb
"""
import grp
import json
import os
import pwd
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSCTL = "/proc/sys/net/unix/max_dgram_qlen"
WANTS = "/etc/systemd/system/multi-user.target.wants/pikod.service"
STATE = "/var/lib/pikod"
DEADLINE = 20  # seconds for pikod to become ready or to stop


class Failed(Exception):
    pass


class Run:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, what, ok, detail=""):
        if ok:
            self.passed += 1
            print("ok    %s" % what)
        else:
            self.failed += 1
            print("FAIL  %s%s" % (what, ": " + detail if detail else ""))
        return ok

    def require(self, what, ok, detail=""):
        if not self.check(what, ok, detail):
            raise Failed(what)


def sh(*argv, **kw):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, **kw)


def packaged_paths():
    """Destinations of packaging/files.txt as Debian installs them."""
    env = dict(os.environ, PREFIX="/usr", UNITDIR="/lib/systemd/system")
    out = sh(os.path.join(ROOT, "packaging", "install.sh"), "list", env=env)
    if out.returncode != 0:
        raise SystemExit("install.sh list failed: " + out.stderr)
    paths = []
    for p in out.stdout.split():
        paths.append(p + ".gz" if "/share/man/" in p else p)
    return paths


def dpkg_status():
    r = sh("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "pikod")
    return r.stdout.strip() if r.returncode == 0 else ""


def serve_once(run, version):
    """Starts the installed pikod as the pikod user, waits for /ready, stops it."""
    argv = ["/usr/sbin/pikod", "--config",
            "/etc/pikod/pikod.conf", "--workers", "1", "--grace-period", "2s"]
    for name in ("proxy", "upstream", "admin", "cluster"):
        argv += ["--%s.bind-addr" % name, "127.0.0.1:0"]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                         user="pikod", group="pikod", extra_groups=[], cwd="/")
    admin = None
    ready = False
    buf = b""
    end = time.monotonic() + DEADLINE
    try:
        # Wait for the supervisor's "ready" record (every child serves), then ask /ready.
        while not ready and time.monotonic() < end:
            r, _, _ = select.select([p.stderr], [], [], max(0, end - time.monotonic()))
            if not r:
                break
            chunk = os.read(p.stderr.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("subsystem") != "supervisor":
                    continue
                if rec.get("msg") == "listening" and rec.get("listener") == "admin":
                    admin = rec.get("bound")
                elif rec.get("msg") == "starting":
                    run.check("pikod logs its version when it starts",
                              rec.get("version") == version, line.decode())
                elif rec.get("msg") == "ready":
                    ready = True
        run.require("installed pikod, as user pikod, starts and reports ready",
                    ready and admin is not None, buf.decode(errors="replace")[-500:])
        try:
            with urllib.request.urlopen("http://%s/ready" % admin, timeout=5) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError as e:
            status = str(e)
        run.require("it answers /ready 200 on its admin port", status == 200,
                    "status %r" % status)
        st = os.stat(os.path.join(STATE, "pikod.pid"))
        run.check("its pid file in /var/lib/pikod belongs to pikod",
                  pwd.getpwuid(st.st_uid).pw_name == "pikod")
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=DEADLINE)
        run.check("it stops with exit 0 on SIGTERM", code == 0, "exit %r" % code)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()


def main(argv):
    if len(argv) != 1 or not argv[0].endswith(".deb"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    deb = os.path.abspath(argv[0])
    if os.geteuid() != 0:
        print("install-test: needs root (dpkg -i)", file=sys.stderr)
        return 2
    with open(os.path.join(ROOT, "VERSION")) as f:
        version = f.read().strip()
    paths = packaged_paths()
    if dpkg_status():
        print("install-test: pikod is already installed (%s); remove it first" % dpkg_status(),
              file=sys.stderr)
        return 2
    present = [p for p in paths + ["/etc/pikod", STATE] if os.path.lexists(p)]
    if present:
        print("install-test: files of the package exist before installing: %s" % present,
              file=sys.stderr)
        return 2

    with open(SYSCTL) as f:
        qlen = f.read().strip()
    try:  # a container may forbid it: then the package cannot apply it either
        with open(SYSCTL, "w") as f:
            f.write(qlen + "\n")
        sysctl_writable = True
    except OSError:
        sysctl_writable = False
    run = Run()
    try:
        r = sh("dpkg", "-i", deb)
        run.require("dpkg -i installs the package", r.returncode == 0, r.stdout + r.stderr)
        run.check("dpkg records it installed", dpkg_status() == "ii", dpkg_status())
        missing = [p for p in paths if not os.path.isfile(p)]
        run.check("every file of packaging/files.txt is installed", not missing, str(missing))
        try:
            pw = pwd.getpwnam("pikod")
            ok = grp.getgrgid(pw.pw_gid).gr_name == "pikod" and pw.pw_uid < 1000
            run.check("system user and group pikod exist", ok, str(pw))
        except KeyError:
            run.require("system user pikod exists", False)
        st = os.stat(STATE)
        run.check("/var/lib/pikod is 0750 pikod:pikod",
                  (st.st_mode & 0o7777) == 0o750 and pwd.getpwuid(st.st_uid).pw_name == "pikod"
                  and grp.getgrgid(st.st_gid).gr_name == "pikod",
                  "mode %o uid %d" % (st.st_mode & 0o7777, st.st_uid))
        for prog in ("/usr/sbin/pikod", "/usr/bin/pikoctl", "/usr/bin/piko"):
            r = sh(prog, "--version")
            run.check("%s --version prints %s" % (prog, version),
                      r.returncode == 0 and version in r.stdout, r.stdout + r.stderr)
        r = sh("/usr/sbin/pikod", "--check", "--config", "/etc/pikod/pikod.conf")
        run.check("pikod --check --config /etc/pikod/pikod.conf (root)", r.returncode == 0,
                  r.stderr)
        r = sh("runuser", "-u", "pikod", "--", "/usr/sbin/pikod", "--check", "--config",
               "/etc/pikod/pikod.conf")
        run.check("the same check as user pikod", r.returncode == 0, r.stderr)
        r = sh("man", "-w", "pikod")
        run.check("man pikod finds the page", r.returncode == 0, r.stderr)
        r = sh("systemd-analyze", "verify", "/lib/systemd/system/pikod.service")
        run.check("systemd-analyze verify of the installed unit is clean",
                  r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr)
        r = sh("systemd-analyze", "security", "--offline=true", "--threshold=30",
               "/lib/systemd/system/pikod.service")
        run.check("installed unit's exposure is at most 3.0", r.returncode == 0,
                  r.stdout[-300:])
        run.check("the unit is enabled (multi-user.target.wants link)", os.path.islink(WANTS))
        if sysctl_writable:
            with open(SYSCTL) as f:
                now = f.read().strip()
            run.check("postinst applied net.unix.max_dgram_qlen = 512", now == "512", now)
        serve_once(run, version)

        r = sh("dpkg", "-r", "pikod")
        run.require("dpkg -r removes the package", r.returncode == 0, r.stdout + r.stderr)
        left = [p for p in paths if os.path.lexists(p) and not p.startswith("/etc/")]
        run.check("after dpkg -r only configuration remains", not left, str(left))
        run.check("after dpkg -r /etc/pikod/pikod.conf is kept",
                  os.path.isfile("/etc/pikod/pikod.conf"))
        run.check("dpkg records config-files", dpkg_status() == "rc", dpkg_status())

        r = sh("dpkg", "-P", "pikod")
        run.require("dpkg -P purges the package", r.returncode == 0, r.stdout + r.stderr)
        left = [p for p in paths + ["/etc/pikod", STATE, "/usr/share/doc/pikod", WANTS]
                if os.path.lexists(p)]
        run.check("after dpkg -P nothing of the package is left", not left, str(left))
        run.check("dpkg has no record of pikod", dpkg_status() == "", dpkg_status())
    except Failed:
        pass
    finally:
        if dpkg_status():
            sh("dpkg", "-P", "pikod")
        with open(SYSCTL, "w") as f:
            f.write(qlen + "\n")
    print("install-test: %d passed, %d failed" % (run.passed, run.failed))
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
