#!/usr/bin/env python3
"""Offline check of pikod's Kubernetes manifests (make k8s-check).

No cluster and no downloaded schema: a small schema of the Kubernetes fields these
manifests may use (unknown fields, wrong types and missing required fields are errors,
as a strict `kubectl apply --validate` would make them), then pikod's own rules:
selectors and named ports that resolve, the StatefulSet joined through its headless
Service, probes on the admin port with admin.bind_addr off loopback, node_id_prefix from
the pod name, terminationGracePeriodSeconds above grace_period, the image tag equal to
the VERSION file, a non-root read-only container. With --pikod BIN the ConfigMap's
pikod.conf is validated by `pikod --check` with the pod's environment filled in.

Usage: check_manifests.py [--pikod BIN] FILE.yaml ...
Prints one line per problem and exits 1 if there is any.
"""
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ---- a schema of the fields used (a subset of the Kubernetes API) ----
# A type is: "str", "int", "bool", "intstr", "quantity", "map" (string to string),
# "any" (not checked), [type] (a list), or the name of a struct below. A struct maps
# field -> type; a field name ending in "!" is required.
S = {
    "ObjectMeta": {"name!": "str", "namespace": "str", "labels": "map",
                   "annotations": "map"},
    "TemplateMeta": {"labels!": "map", "annotations": "map"},
    "LabelSelector": {"matchLabels!": "map"},
    "ConfigMap": {"apiVersion!": "str", "kind!": "str", "metadata!": "ObjectMeta",
                  "data!": "map"},
    "Service": {"apiVersion!": "str", "kind!": "str", "metadata!": "ObjectMeta",
                "spec!": "ServiceSpec"},
    "ServiceSpec": {"type": "str", "clusterIP": "str", "publishNotReadyAddresses": "bool",
                    "selector!": "map", "ports!": ["ServicePort"]},
    "ServicePort": {"name!": "str", "port!": "int", "targetPort": "intstr",
                    "protocol": "str", "nodePort": "int"},
    "StatefulSet": {"apiVersion!": "str", "kind!": "str", "metadata!": "ObjectMeta",
                    "spec!": "StatefulSetSpec"},
    "StatefulSetSpec": {"serviceName!": "str", "replicas": "int",
                        "podManagementPolicy": "str", "updateStrategy": "UpdateStrategy",
                        "selector!": "LabelSelector", "template!": "PodTemplate",
                        "volumeClaimTemplates": ["any"], "minReadySeconds": "int"},
    "UpdateStrategy": {"type": "str", "rollingUpdate": "any"},
    "PodTemplate": {"metadata!": "TemplateMeta", "spec!": "PodSpec"},
    "PodSpec": {"containers!": ["Container"], "volumes": ["Volume"],
                "terminationGracePeriodSeconds": "int", "securityContext": "PodSecurity",
                "affinity": "any", "enableServiceLinks": "bool", "serviceAccountName": "str",
                "nodeSelector": "map", "tolerations": ["any"],
                "topologySpreadConstraints": ["any"]},
    "PodSecurity": {"runAsNonRoot": "bool", "runAsUser": "int", "runAsGroup": "int",
                    "fsGroup": "int", "seccompProfile": "Seccomp", "sysctls": ["Sysctl"]},
    "Seccomp": {"type!": "str"},
    "Sysctl": {"name!": "str", "value!": "str"},
    "Container": {"name!": "str", "image!": "str", "imagePullPolicy": "str",
                  "command": ["str"], "args": ["str"], "env": ["EnvVar"],
                  "ports": ["ContainerPort"], "readinessProbe": "Probe",
                  "livenessProbe": "Probe", "startupProbe": "Probe",
                  "lifecycle": "Lifecycle", "resources": "Resources",
                  "securityContext": "ContainerSecurity", "volumeMounts": ["VolumeMount"]},
    "EnvVar": {"name!": "str", "value": "str", "valueFrom": "EnvVarSource"},
    "EnvVarSource": {"fieldRef": "FieldRef", "secretKeyRef": "KeyRef",
                     "configMapKeyRef": "KeyRef"},
    "FieldRef": {"fieldPath!": "str"},
    "KeyRef": {"name!": "str", "key!": "str", "optional": "bool"},
    "ContainerPort": {"name": "str", "containerPort!": "int", "protocol": "str"},
    "Probe": {"httpGet": "HTTPGet", "tcpSocket": "any", "exec": "Exec",
              "initialDelaySeconds": "int", "periodSeconds": "int", "timeoutSeconds": "int",
              "failureThreshold": "int", "successThreshold": "int"},
    "HTTPGet": {"path!": "str", "port!": "intstr", "scheme": "str"},
    "Exec": {"command!": ["str"]},
    "Lifecycle": {"preStop": "Handler", "postStart": "Handler"},
    "Handler": {"exec": "Exec", "httpGet": "HTTPGet", "sleep": "any"},
    "Resources": {"requests": "Quantities", "limits": "Quantities"},
    "Quantities": {"cpu": "quantity", "memory": "quantity", "ephemeral-storage": "quantity"},
    "ContainerSecurity": {"allowPrivilegeEscalation": "bool", "readOnlyRootFilesystem": "bool",
                          "runAsNonRoot": "bool", "runAsUser": "int",
                          "capabilities": "Capabilities", "privileged": "bool"},
    "Capabilities": {"drop": ["str"], "add": ["str"]},
    "VolumeMount": {"name!": "str", "mountPath!": "str", "readOnly": "bool", "subPath": "str"},
    "Volume": {"name!": "str", "configMap": "ConfigMapVolume", "emptyDir": "any",
               "secret": "any"},
    "ConfigMapVolume": {"name!": "str", "items": ["any"], "defaultMode": "int"},
    "PodDisruptionBudget": {"apiVersion!": "str", "kind!": "str", "metadata!": "ObjectMeta",
                            "spec!": "PDBSpec"},
    "PDBSpec": {"maxUnavailable": "intstr", "minAvailable": "intstr",
                "selector!": "LabelSelector"},
}
KINDS = {"ConfigMap": "v1", "Service": "v1", "StatefulSet": "apps/v1",
         "PodDisruptionBudget": "policy/v1"}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_type(t, v, path, errs):
    if t == "any":
        return
    if isinstance(t, list):
        if not isinstance(v, list):
            errs.append("%s: expected a list" % path)
            return
        for i, item in enumerate(v):
            check_type(t[0], item, "%s[%d]" % (path, i), errs)
        return
    simple = {"str": str, "bool": bool}
    if t in simple:
        if not isinstance(v, simple[t]):
            errs.append("%s: expected %s, got %r" % (path, t, v))
    elif t == "int":
        if not isinstance(v, int) or isinstance(v, bool):
            errs.append("%s: expected an integer, got %r" % (path, v))
    elif t == "intstr":
        if not isinstance(v, (int, str)) or isinstance(v, bool):
            errs.append("%s: expected an integer or a name, got %r" % (path, v))
    elif t == "quantity":
        if not isinstance(v, (int, str)) or not QUANTITY.match(str(v)):
            errs.append("%s: invalid quantity %r" % (path, v))
    elif t == "map":
        if not isinstance(v, dict) or not all(
                isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
            errs.append("%s: expected a map of strings to strings (quote numbers)" % path)
    else:
        fields = S[t]
        if not isinstance(v, dict):
            errs.append("%s: expected an object (%s)" % (path, t))
            return
        known = {f.rstrip("!"): ft for f, ft in fields.items()}
        for f in fields:
            if f.endswith("!") and f[:-1] not in v:
                errs.append("%s: missing required field %s" % (path, f[:-1]))
        for k, x in v.items():
            if k not in known:
                errs.append("%s: unknown field %r" % (path, k))
            else:
                check_type(known[k], x, "%s.%s" % (path, k) if path else k, errs)


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def conf_value(conf, group, key):
    """The string or integer value of key (in group, or at top level) in a libconfig text."""
    text = conf
    if group:
        m = re.search(r"^\s*%s\s*=\s*\{(.*?)^\s*\};" % re.escape(group), conf, re.S | re.M)
        if not m:
            return None
        text = m.group(1)
    m = re.search(r"^\s*%s\s*=\s*(\"([^\"]*)\"|\[([^\]]*)\]|([0-9]+))\s*;" % re.escape(key),
                  text, re.M)
    if not m:
        return None
    return m.group(2) if m.group(2) is not None else (m.group(3) or m.group(4))


def duration_seconds(s):
    if s is None:
        return None
    if re.fullmatch(r"[0-9]+", s):
        return int(s)
    total = 0.0
    for n, unit in re.findall(r"([0-9]+)(ms|h|m|s)", s):
        total += int(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def check_pikod_rules(docs, errs, pikod):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    sts_list = by_kind.get("StatefulSet", [])
    if len(sts_list) != 1:
        errs.append("expected exactly one StatefulSet, found %d" % len(sts_list))
        return
    sts = sts_list[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    if not selects(spec["selector"]["matchLabels"], labels):
        errs.append("StatefulSet: selector does not match the pod template labels")
    c = pod["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = services.get(spec["serviceName"])
    if headless is None or headless["spec"].get("clusterIP") != "None":
        errs.append("StatefulSet: serviceName %r is not a headless Service" % spec["serviceName"])
    elif not headless["spec"].get("publishNotReadyAddresses"):
        errs.append("headless Service: publishNotReadyAddresses must be true (peers join "
                    "before they are ready)")
    served = set()
    for name, s in services.items():
        if not selects(s["spec"]["selector"], labels):
            errs.append("Service %s: selector matches no pod of the StatefulSet" % name)
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str) and tp not in ports:
                errs.append("Service %s: targetPort %r is not a container port" % (name, tp))
            served.add(p["name"])
    for need in ("proxy", "upstream"):
        if need not in served:
            errs.append("no Service exposes the %s port" % need)
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selects(pdb["spec"]["selector"]["matchLabels"], labels):
            errs.append("PodDisruptionBudget: selector matches no pod of the StatefulSet")
    if not by_kind.get("PodDisruptionBudget"):
        errs.append("no PodDisruptionBudget")

    for probe in ("readinessProbe", "livenessProbe"):
        hg = c.get(probe, {}).get("httpGet")
        if not hg:
            errs.append("container: no %s.httpGet" % probe)
            continue
        if hg["port"] not in ports and hg["port"] not in ports.values():
            errs.append("container: %s port %r is not a container port" % (probe, hg["port"]))
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
        errs.append("container: readinessProbe must GET /ready")

    with open(os.path.join(ROOT, "VERSION")) as f:
        version = f.read().strip()
    if not c["image"].endswith(":" + version):
        errs.append("container: image %r is not tagged with VERSION %s" % (c["image"], version))
    sc = c.get("securityContext", {})
    psc = pod.get("securityContext", {})
    if not psc.get("runAsNonRoot"):
        errs.append("pod: securityContext.runAsNonRoot must be true")
    if sc.get("allowPrivilegeEscalation") is not False or not sc.get("readOnlyRootFilesystem"):
        errs.append("container: allowPrivilegeEscalation false and readOnlyRootFilesystem "
                    "true are required")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        errs.append("container: capabilities.drop must contain ALL")

    env = {e["name"]: e for e in c.get("env", [])}
    for name, path in (("POD_NAME", "metadata.name"), ("POD_IP", "status.podIP"),
                       ("POD_NAMESPACE", "metadata.namespace")):
        ref = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if ref != path:
            errs.append("container: env %s must come from fieldRef %s" % (name, path))

    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    cm_vol = volumes.get(mounts.get("/etc/pikod"), {}).get("configMap")
    cms = {m["metadata"]["name"]: m for m in by_kind.get("ConfigMap", [])}
    if not cm_vol or cm_vol["name"] not in cms:
        errs.append("container: /etc/pikod is not a mounted ConfigMap of these manifests")
        return
    if "/var/lib/pikod" not in mounts:
        errs.append("container: state_dir /var/lib/pikod has no volume (read-only root)")
    conf = cms[cm_vol["name"]]["data"].get("pikod.conf")
    if conf is None:
        errs.append("ConfigMap %s: no pikod.conf key" % cm_vol["name"])
        return
    if c.get("args", [])[-2:] != ["--config", "/etc/pikod/pikod.conf"]:
        errs.append("container: args must end with --config /etc/pikod/pikod.conf")

    admin = conf_value(conf, "admin", "bind_addr")
    if admin is None or admin.startswith("127.") or admin.startswith("[::1]"):
        errs.append("pikod.conf: admin.bind_addr must not be loopback (the kubelet probes it)")
    elif admin.rsplit(":", 1)[-1] != str(ports.get("admin")):
        errs.append("pikod.conf: admin.bind_addr port differs from the admin container port")
    if conf_value(conf, "cluster", "node_id_prefix") != "${POD_NAME}-":
        errs.append('pikod.conf: cluster.node_id_prefix must be "${POD_NAME}-"')
    join = conf_value(conf, "cluster", "join") or ""
    if not re.search(r"\b%s\." % re.escape(spec["serviceName"]), join):
        errs.append("pikod.conf: cluster.join must name the headless Service %s"
                    % spec["serviceName"])
    grace = duration_seconds(conf_value(conf, None, "grace_period")) or 30
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
    # pikod kills children left after grace_period + 5 s; Kubernetes must wait longer.
    need = sleep + grace + 5
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps <= need:
        errs.append("pod: terminationGracePeriodSeconds %d must exceed preStop %ds + "
                    "grace_period %gs + 5s" % (tgps, sleep, grace))

    if pikod:
        check_with_pikod(pikod, conf, errs)


def check_with_pikod(pikod, conf, errs):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pikod.conf")
        with open(path, "w") as f:
            f.write(conf)
        env = dict(os.environ, POD_NAME="pikod-0", POD_NAMESPACE="pikod", POD_IP="10.0.0.7")
        r = subprocess.run([pikod, "--check", "--config", path], env=env,
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            errs.append("pikod --check rejects the ConfigMap's pikod.conf: %s"
                        % (r.stderr.strip() or r.stdout.strip()))


def main(argv):
    pikod = None
    files = []
    it = iter(argv)
    for a in it:
        if a == "--pikod":
            pikod = next(it)
        else:
            files.append(a)
    if not files:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    errs = []
    docs = []
    for fn in files:
        with open(fn) as f:
            for i, d in enumerate(yaml.safe_load_all(f)):
                if d is None:
                    continue
                where = "%s#%d" % (os.path.basename(fn), i)
                kind = d.get("kind") if isinstance(d, dict) else None
                if kind not in KINDS:
                    errs.append("%s: unexpected kind %r" % (where, kind))
                    continue
                if d.get("apiVersion") != KINDS[kind]:
                    errs.append("%s: %s needs apiVersion %s" % (where, kind, KINDS[kind]))
                e = []
                check_type(kind, d, "", e)
                name = (d.get("metadata") or {}).get("name", "?")
                if isinstance(name, str) and not NAME.match(name):
                    e.append("metadata.name: %r is not a DNS label" % name)
                errs += ["%s %s %s: %s" % (where, kind, name, x) for x in e]
                if not e:
                    docs.append(d)
    if not errs:
        check_pikod_rules(docs, errs, pikod)
    for e in errs:
        print("k8s-check: " + e)
    if errs:
        return 1
    print("k8s-check: %d objects in %d file(s) ok%s" % (
        len(docs), len(files), " (pikod.conf checked by pikod --check)" if pikod else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
