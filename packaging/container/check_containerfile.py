#!/usr/bin/env python3
"""Lint of packaging/container/Containerfile (make container-check).

No container engine runs here, so the image is not built; this checks what can be
checked from the file and the tree:
  - every instruction is a known one, in a well-formed stage, FROM images carry a fixed
    tag (no :latest), COPY --from names an earlier stage;
  - COPY sources exist in the source tree, and the context is never copied whole (.);
  - apt-get: update and install in the same RUN, -y and --no-install-recommends, the
    lists removed in that RUN;
  - the final stage runs as a non-root numeric USER that matches runAsUser in the
    Kubernetes manifest, with ENTRYPOINT/CMD in exec (JSON) form;
  - with --binary BIN: each shared library BIN needs (readelf NEEDED) comes from a Debian
    package that the final stage installs (or from libc6).

Usage: check_containerfile.py [--binary BIN] [--manifest K8S.yaml] Containerfile
"""
import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KNOWN = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "LABEL",
         "ENTRYPOINT", "CMD", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD"}
BASE_LIBS = {"libc6"}  # in every Debian image


def instructions(text):
    """(line number, INSTRUCTION, argument text) with continuations joined."""
    out, buf, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    if buf:
        out.append((start, "?", buf))
    return out


def check_run_apt(n, arg, errs):
    cmds = [c.strip() for c in re.split(r"&&|;", arg)]
    installs = [c for c in cmds if re.search(r"\bapt-get\s+install\b", c)]
    if not installs:
        return
    if not any(re.search(r"\bapt-get\s+update\b", c) for c in cmds):
        errs.append("line %d: apt-get install without apt-get update in the same RUN" % n)
    for c in installs:
        if not re.search(r"\s-y\b|--yes\b", c):
            errs.append("line %d: apt-get install without -y" % n)
        if "--no-install-recommends" not in c:
            errs.append("line %d: apt-get install without --no-install-recommends" % n)
    if not re.search(r"rm -rf /var/lib/apt/lists/\*?", arg):
        errs.append("line %d: apt lists not removed in the RUN that installs" % n)


def installed_packages(arg):
    pkgs = set()
    for c in re.split(r"&&|;", arg):
        if re.search(r"\bapt-get\s+install\b", c):
            words = shlex.split(c)
            i = words.index("install")
            pkgs |= {w for w in words[i + 1:] if not w.startswith("-")}
    return pkgs


def needed_packages(binary):
    out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True,
                         check=True).stdout
    libs = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
    pkgs = {}
    for lib in libs:
        path = os.path.realpath(paths.get(lib, lib))
        r = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        if r.returncode != 0:  # usrmerge: dpkg may know the /lib spelling
            r = subprocess.run(["dpkg", "-S", path.replace("/usr/lib/", "/lib/", 1)],
                               capture_output=True, text=True)
        pkg = r.stdout.split(":", 1)[0] if r.returncode == 0 else None
        pkgs[lib] = pkg
    return pkgs


def manifest_uid(path):
    with open(path) as f:
        m = re.search(r"^\s*runAsUser:\s*([0-9]+)", f.read(), re.M)
    return m.group(1) if m else None


def main(argv):
    binary = manifest = None
    files = []
    it = iter(argv)
    for a in it:
        if a == "--binary":
            binary = next(it)
        elif a == "--manifest":
            manifest = next(it)
        else:
            files.append(a)
    if len(files) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(files[0]) as f:
        ins = instructions(f.read())
    errs = []
    stages = []  # [{"name", "user", "entry", "cmd", "apt"}]
    for n, word, arg in ins:
        if word not in KNOWN:
            errs.append("line %d: unknown instruction %s" % (n, word))
            continue
        if word == "FROM":
            m = re.match(r"^(\S+)(?:\s+AS\s+(\S+))?$", arg, re.I)
            if not m:
                errs.append("line %d: malformed FROM" % n)
                continue
            image = m.group(1)
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                errs.append("line %d: FROM %s: pin a tag (not latest)" % (n, image))
            stages.append({"name": m.group(2), "image": image, "user": None, "entry": None,
                           "cmd": None, "apt": set()})
            continue
        if not stages:
            errs.append("line %d: %s before FROM" % (n, word))
            continue
        st = stages[-1]
        if word == "RUN":
            check_run_apt(n, arg, errs)
            st["apt"] |= installed_packages(arg)
        elif word in ("COPY", "ADD"):
            words = shlex.split(arg)
            opts = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            frm = [o.split("=", 1)[1] for o in opts if o.startswith("--from=")]
            if frm:
                if frm[0] not in [s["name"] for s in stages[:-1]]:
                    errs.append("line %d: COPY --from=%s names no earlier stage" % (n, frm[0]))
                continue
            for src in paths[:-1]:
                if src in (".", "./", "*"):
                    errs.append("line %d: COPY of the whole context would take build/ too"
                                % n)
                elif not os.path.exists(os.path.join(ROOT, src)):
                    errs.append("line %d: COPY source %s is not in the source tree" % (n, src))
        elif word == "USER":
            st["user"] = arg
        elif word in ("ENTRYPOINT", "CMD"):
            try:
                v = json.loads(arg)
                ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
            except ValueError:
                ok = False
            if not ok:
                errs.append("line %d: %s must use the exec (JSON array) form" % (n, word))
            st["entry" if word == "ENTRYPOINT" else "cmd"] = arg
        elif word == "EXPOSE":
            for p in arg.split():
                if not re.fullmatch(r"[0-9]+(/(tcp|udp))?", p):
                    errs.append("line %d: EXPOSE %s is not a port" % (n, p))
    if not stages:
        errs.append("no FROM")
    else:
        final = stages[-1]
        if not final["image"].startswith("debian:") or "slim" not in final["image"]:
            errs.append("final stage: runtime image must be Debian slim, not %s"
                        % final["image"])
        user = (final["user"] or "").split(":")[0]
        if not user or user in ("0", "root"):
            errs.append("final stage: USER must be a non-root user")
        elif not user.isdigit():
            errs.append("final stage: USER should be numeric (runAsNonRoot cannot check a "
                        "name)")
        elif manifest and manifest_uid(manifest) not in (None, user):
            errs.append("final stage: USER %s differs from runAsUser %s in %s"
                        % (user, manifest_uid(manifest), manifest))
        if not final["entry"]:
            errs.append("final stage: no ENTRYPOINT")
        if binary:
            for lib, pkg in needed_packages(binary).items():
                if pkg is None:
                    errs.append("%s: no Debian package provides %s" % (binary, lib))
                elif pkg.split(":")[0] not in final["apt"] | BASE_LIBS:
                    errs.append("final stage: %s needs %s from package %s, not installed"
                                % (os.path.basename(binary), lib, pkg))
    for e in errs:
        print("container-check: " + e)
    if errs:
        return 1
    print("container-check: %s ok (%d stages%s)" % (
        os.path.relpath(files[0], ROOT), len(stages),
        ", runtime libraries of %s covered" % os.path.basename(binary) if binary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
