#!/usr/bin/env python3
"""Checks deploy/kubernetes/ without a cluster: every file parses as YAML, every object
has apiVersion, kind and metadata.name, and the cloakroom objects have what the README
promises (two replicas, probes on /readyz and /healthz, read-only root, non-root, no
capabilities, resources, the Secret's keys, a Service and a Redis that match). Run by
.ci/run; exits 1 with one line per problem."""

import pathlib
import sys
import tomllib

import yaml

root = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
problems = []
objects = {}


def need(cond, what):
    if not cond:
        problems.append(what)
    return cond


def dig(obj, *path):
    for key in path:
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and isinstance(key, int) and key < len(obj):
            obj = obj[key]
        else:
            return None
    return obj


files = sorted(root.glob("*.yaml"))
need(files, f"no manifests in {root}")
for path in files:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problems.append(f"{path.name}: not valid YAML: {e}")
        continue
    for doc in docs:
        where = f"{path.name}: {doc.get('kind', '?')}/{dig(doc, 'metadata', 'name')}"
        for field in ("apiVersion", "kind"):
            need(isinstance(doc.get(field), str), f"{where}: no {field}")
        if need(isinstance(dig(doc, "metadata", "name"), str), f"{where}: no metadata.name"):
            objects[(doc["kind"], doc["metadata"]["name"])] = (path.name, doc)


def get(kind, name):
    found = objects.get((kind, name))
    need(found, f"no {kind} {name}")
    return found[1] if found else {}


def check_workload(name, replicas=None):
    dep = get("Deployment", name)
    spec = dig(dep, "spec") or {}
    if replicas is not None:
        need(spec.get("replicas") == replicas, f"Deployment {name}: replicas is not {replicas}")
    labels = dig(spec, "template", "metadata", "labels") or {}
    selector = dig(spec, "selector", "matchLabels") or {}
    need(selector and all(labels.get(k) == v for k, v in selector.items()),
         f"Deployment {name}: selector does not match the pod labels")
    pod = dig(spec, "template", "spec") or {}
    need(dig(pod, "securityContext", "runAsNonRoot") is True, f"Deployment {name}: runAsNonRoot is not true")
    containers = pod.get("containers") or []
    need(containers, f"Deployment {name}: no containers")
    for c in containers:
        cn = f"Deployment {name} container {c.get('name')}"
        need(c.get("image"), f"{cn}: no image")
        sc = c.get("securityContext") or {}
        need(sc.get("readOnlyRootFilesystem") is True, f"{cn}: root filesystem is not read-only")
        need(sc.get("allowPrivilegeEscalation") is False, f"{cn}: allowPrivilegeEscalation is not false")
        need("ALL" in (dig(sc, "capabilities", "drop") or []), f"{cn}: capabilities are not dropped (ALL)")
        need(dig(c, "resources", "requests") and dig(c, "resources", "limits"),
             f"{cn}: no resource requests and limits")
    return dep, labels, pod, containers


def check_service(name, labels, containers):
    svc = get("Service", name)
    selector = dig(svc, "spec", "selector") or {}
    need(selector and all(labels.get(k) == v for k, v in selector.items()),
         f"Service {name}: selector matches no pod of its Deployment")
    names = {p.get("name") for c in containers for p in c.get("ports") or []}
    numbers = {p.get("containerPort") for c in containers for p in c.get("ports") or []}
    for port in dig(svc, "spec", "ports") or []:
        target = port.get("targetPort", port.get("port"))
        need(target in names or target in numbers, f"Service {name}: targetPort {target} is no container port")


# cloakroom itself
dep, labels, pod, containers = check_workload("cloakroom", replicas=2)
main = next((c for c in containers if c.get("name") == "cloakroom"), {})
need(dig(main, "readinessProbe", "httpGet", "path") == "/readyz", "cloakroom: readinessProbe is not GET /readyz")
need(dig(main, "livenessProbe", "httpGet", "path") == "/healthz", "cloakroom: livenessProbe is not GET /healthz")
need(dig(pod, "securityContext", "runAsUser") == 65532, "cloakroom: runAsUser is not 65532")
need((pod.get("terminationGracePeriodSeconds") or 30) > 30,
     "cloakroom: terminationGracePeriodSeconds is not above shutdown_grace (30s)")
check_service("cloakroom", labels, containers)

secret = get("Secret", "cloakroom-secrets")
secret_keys = set((secret.get("stringData") or {}) | (secret.get("data") or {}))
for env in main.get("env") or []:
    ref = dig(env, "valueFrom", "secretKeyRef")
    if ref:
        need(ref.get("name") == "cloakroom-secrets" and ref.get("key") in secret_keys,
             f"cloakroom: env {env.get('name')} names a missing Secret key {ref}")
envs = {e.get("name") for e in main.get("env") or []}
need({"CLOAKROOM_SECRET", "CLOAKROOM_ADMIN_TOKEN"} <= envs, "cloakroom: the secret and admin token are not in its env")

config_map = get("ConfigMap", "cloakroom-config")
text = dig(config_map, "data", "proxy.toml") or ""
try:
    config = tomllib.loads(text)
    need(dig(config, "session", "store") == "redis", "ConfigMap: session.store is not redis")
    need(dig(config, "session", "secret") == "${CLOAKROOM_SECRET}", "ConfigMap: session.secret is not from the env")
    need(dig(config, "listen", "admin") == "0.0.0.0:9901", "ConfigMap: the admin listener is not on 9901 for the probes")
    redis_url = dig(config, "session", "redis", "url") or ""
    need("//redis:" in redis_url, "ConfigMap: session.redis.url does not name the redis Service")
except tomllib.TOMLDecodeError as e:
    problems.append(f"ConfigMap cloakroom-config: proxy.toml is not valid TOML: {e}")
mounts = {m.get("name") for m in main.get("volumeMounts") or []}
volumes = {v.get("name"): v for v in pod.get("volumes") or []}
need(mounts <= set(volumes), f"cloakroom: a volumeMount names no volume ({mounts - set(volumes)})")
need(dig(volumes.get("config"), "configMap", "name") == "cloakroom-config", "cloakroom: the config volume is not the ConfigMap")

# the shared store
_, redis_labels, _, redis_containers = check_workload("redis")
check_service("redis", redis_labels, redis_containers)

if problems:
    for p in problems:
        print(f"k8s-check: {p}", file=sys.stderr)
    sys.exit(1)
print(f"k8s-check: {len(objects)} objects in {len(files)} files: ok")
