"""deploy/kubernetes/ read as Kubernetes would run it, without Kubernetes: the objects, and
for one pod of a workload what its container gets (tests/unit/test_kubernetes.py and the
local rehearsal of the pods, tests/helpers/kubernetes_pods.py).

A container is prepared in a local directory standing for the pod's filesystem: each volume
it mounts is written there (a Secret's data from make_secrets.py, a ConfigMap's, an empty
directory), the mount paths in its argv and environment are rewritten to those copies, and
`$(VAR)` in its argv is expanded from its env as the kubelet does (the downward API's values
from the `Pod` given). Nothing else changes.
"""

from __future__ import annotations

import base64
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
NAMESPACE = "memring"
Object = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    """What the downward API tells a container about its pod."""

    name: str
    namespace: str = NAMESPACE
    ip: str = "10.1.2.3"

    def field(self, path: str) -> str:
        return {"metadata.name": self.name, "metadata.namespace": self.namespace,
                "status.podIP": self.ip}[path]


@dataclass(frozen=True)
class Prepared:
    """A container ready to run here: its argv (command and args) and full environment."""

    argv: list[str]
    env: dict[str, str]


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


@cache
def objects() -> tuple[Object, ...]:
    found: list[Object] = []
    for path in manifest_files():
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(found)


def of_kind(kind: str) -> list[Object]:
    return [o for o in objects() if o["kind"] == kind]


def named(kind: str, name: str) -> Object:
    (found,) = [o for o in of_kind(kind) if o["metadata"]["name"] == name]
    return found


def workloads() -> list[Object]:
    return [o for o in objects() if o["kind"] in ("StatefulSet", "Deployment", "Job")]


def containers() -> Iterator[tuple[Object, Object]]:
    """(workload, container) for every container of every workload."""
    for workload in workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


def program_containers(program: str) -> list[tuple[Object, Object]]:
    return [(w, c) for w, c in containers() if c.get("command") == [program]]


def shard_sets() -> list[Object]:
    return [o for o in of_kind("StatefulSet") if o["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "backend"]


def config_map(name: str) -> dict[str, str]:
    data: dict[str, str] = named("ConfigMap", name)["data"]
    return data


def flags(args: list[str]) -> dict[str, str | None]:
    """`--flag=value` as {flag: value}; a bare `--flag` (a switch) as {flag: None}."""
    found: dict[str, str | None] = {}
    for token in args:
        assert token.startswith("--"), f"stray argument {token!r}: use --flag=value"
        name, sep, value = token.partition("=")
        assert name not in found, f"{name} given twice"
        found[name] = value if sep else None
    return found


def first_pod(workload: Object) -> Pod:
    """The workload's first pod (a Deployment's name has a random suffix)."""
    name = workload["metadata"]["name"]
    return Pod(f"{name}-0" if workload["kind"] == "StatefulSet" else f"{name}-7c9f8d6b5-x2x4k")


def pod_env(container: Object, pod: Pod) -> dict[str, str]:
    """The container's own env, with the downward API's values for `pod`."""
    env = {}
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else \
            pod.field(var["valueFrom"]["fieldRef"]["fieldPath"])
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion; a name missing from env is an error here (the kubelet
    would leave it as it is, silently)."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in env, f"$({name}) is not in the container's env"
        return env[name]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, text)


def load_make_secrets() -> ModuleType:
    """deploy/kubernetes/make_secrets.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("make_secrets", DEPLOY / "make_secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mounted_files(workload: Object, container: Object, root: Path,
                  secrets: dict[str, Object]) -> dict[str, str]:
    """Write what the container's volumes hold under `root`; {mount path: path under root}.
    A volume claim (etcd's data) is an empty directory here."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    where = {}
    for mount in container.get("volumeMounts", []):
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes.get(mount["name"], {})
        if "secret" in volume:
            for key, data in secrets[volume["secret"]["secretName"]]["data"].items():
                (target / key).write_bytes(base64.b64decode(data))
                (target / key).chmod(0o440)  # defaultMode
        elif "configMap" in volume:
            for key, text in config_map(volume["configMap"]["name"]).items():
                (target / key).write_text(text)
        where[mount["mountPath"]] = str(target)
    return where


def localized(text: str, where: dict[str, str]) -> str:
    """`text` with each mount path replaced by its local copy (one pass: the local paths may
    be under /tmp, which is a mount path too)."""
    paths = sorted(where, key=len, reverse=True)
    pattern = "|".join(re.escape(p) + r"(?=/|$)" for p in paths)
    return re.sub(pattern, lambda m: where[m.group(0)], text) if paths else text


def prepare(workload: Object, container: Object, pod: Pod, root: Path,
            secrets: dict[str, Object]) -> Prepared:
    """The container of `pod` with its volumes written under `root`."""
    where = mounted_files(workload, container, root, secrets)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_map(source["configMapRef"]["name"]))
    own = pod_env(container, pod)
    env = {name: localized(value, where) for name, value in {**env, **own}.items()}
    argv = [localized(expand(arg, own), where)
            for arg in [*container.get("command", []), *container.get("args", [])]]
    return Prepared(argv, env)
