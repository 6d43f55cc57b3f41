#!/usr/bin/env python3
"""The Secrets the manifests mount: certificates, auth files, the peer secret, etcd's users.

Usage (from a checkout, with memring and PyYAML installed: `make venv`):
    .venv/bin/python deploy/kubernetes/make_secrets.py DIR [--namespace memring]
        [--cluster-domain cluster.local]
    kubectl apply -f DIR/secrets.yaml

What it makes, in DIR (kept: run it again after adding a shard or replicas and it issues only
what is missing, reusing the CAs, passwords and secrets it made before; keep DIR private, it
holds the CA keys):
- a CA for memring (memring-ca/) and one for etcd (etcd-ca/): with --client-cert-auth etcd
  takes a client certificate's common name for a user name, so no certificate of memring's
  CA may reach it (cluster.local_tls says the same for `memring up --secure`);
- per backend pod, a certificate whose common name and first DNS name are its node id (the
  pod name: peer TLS checks it) and whose other names are its hosts (the proxies check those),
  in one Secret per shard, memring-<shard>-tls (NAME.crt, NAME.key, ca.crt), because a
  StatefulSet mounts the same Secrets in every pod: each pod reads its own files by name;
- the proxies' certificate (memring-proxy-tls): their TLS listener's and their client
  certificate towards the backends;
- etcd's member certificates (memring-etcd-tls, with etcd-admin.crt for etcd-auth.sh) and
  memring's client certificate with the memring user's password (memring-etcd-client);
- memring-backend-auth (the proxies' user on the backends), memring-client-auth (the users
  applications log in to the proxies with), memring-peer-secret.

The shards, their replicas and the etcd members are read from the manifests beside this
script (shard-*.yaml, etcd.yaml), so the Secrets always match what is deployed.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from memring.cluster.certificates import CertificateAuthority
from memring.cluster.launcher import write_peer_secret
from memring.cluster.local_tls import write_auth_file

HERE = Path(__file__).resolve().parent
BACKEND_SERVICE = "memring-backend"
PROXY_SERVICE = "memring-proxy"
ETCD_SERVICE = "memring-etcd"
ETCD_ADMIN = "etcd-admin"            # etcd-auth.sh's certificate: the name of no etcd user
ETCD_CLIENT = "memring-etcd-client"  # memring's: the name of no etcd user either
BACKEND_USER = "memring"             # the proxies' (and memring's tools') user on the backends
CLIENT_USER = "app"                  # the first user applications log in to the proxies with


def manifests(pattern: str) -> list[dict[str, Any]]:
    """The objects of the manifests beside this script whose file names match `pattern`."""
    found = []
    for path in sorted(HERE.glob(pattern)):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def stateful_sets(pattern: str) -> dict[str, int]:
    """{name: replicas} of the StatefulSets in the files matching `pattern`."""
    return {doc["metadata"]["name"]: int(doc["spec"]["replicas"])
            for doc in manifests(pattern) if doc["kind"] == "StatefulSet"}


def service_hosts(name: str, namespace: str, domain: str) -> list[str]:
    """Every name a pod of the namespace may use for `name` (a service or pod.service)."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.{domain}"]


def issue(ca: CertificateAuthority, name: str, hosts: Iterable[str]) -> tuple[Path, Path]:
    """NAME.crt and NAME.key in the CA's directory, issued once (kept on later runs)."""
    cert, key = ca.directory / f"{name}.crt", ca.directory / f"{name}.key"
    if not (cert.exists() and key.exists()):
        ca.issue(name, hosts)
    return cert, key


def kept(path: Path, make: Any) -> Path:
    """`path`, made by `make(path)` unless a previous run made it."""
    if not path.exists():
        make(path)
    return path


def new_password(path: Path) -> None:
    path.touch(mode=0o600)
    path.write_text(secrets.token_urlsafe(24) + "\n")


def secret(name: str, namespace: str, files: dict[str, Path], kind: str = "Opaque"
           ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": kind,
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "memring"}},
            "data": {key: base64.b64encode(path.read_bytes()).decode("ascii")
                     for key, path in files.items()}}


def make(directory: Path, namespace: str, domain: str, proxy_hosts: Iterable[str] = ()
         ) -> list[dict[str, Any]]:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    memring_ca = CertificateAuthority.create(directory / "memring-ca", "memring cluster CA")
    etcd_ca = CertificateAuthority.create(directory / "etcd-ca", "memring etcd CA")
    out = []

    etcd_files = {"ca.crt": etcd_ca.cert}
    for member_set, replicas in stateful_sets("etcd.yaml").items():
        for ordinal in range(replicas):
            member = f"{member_set}-{ordinal}"
            hosts = [member, *service_hosts(f"{member}.{ETCD_SERVICE}", namespace, domain),
                     "localhost", "127.0.0.1"]
            etcd_files[f"{member}.crt"], etcd_files[f"{member}.key"] = \
                issue(etcd_ca, member, hosts)
    etcd_files[f"{ETCD_ADMIN}.crt"], etcd_files[f"{ETCD_ADMIN}.key"] = \
        issue(etcd_ca, ETCD_ADMIN, ())
    out.append(secret("memring-etcd-tls", namespace, etcd_files))
    client_cert, client_key = issue(etcd_ca, ETCD_CLIENT, ())
    out.append(secret("memring-etcd-client", namespace, {
        "ca.crt": etcd_ca.cert, "tls.crt": client_cert, "tls.key": client_key,
        "password": kept(directory / "etcd-memring.password", new_password)}))
    kept(directory / "etcd-root.password", new_password)  # for etcd-auth.sh only

    for shard_set, replicas in stateful_sets("shard-*.yaml").items():
        files = {"ca.crt": memring_ca.cert}
        for ordinal in range(replicas):
            node = f"{shard_set}-{ordinal}"
            files[f"{node}.crt"], files[f"{node}.key"] = issue(
                memring_ca, node, [node, *service_hosts(f"{node}.{BACKEND_SERVICE}",
                                                        namespace, domain)])
        out.append(secret(f"{shard_set}-tls", namespace, files))
    proxy_cert, proxy_key = issue(memring_ca, PROXY_SERVICE,
                                  [*service_hosts(PROXY_SERVICE, namespace, domain),
                                   *proxy_hosts])
    out.append(secret("memring-proxy-tls", namespace, {
        "tls.crt": proxy_cert, "tls.key": proxy_key, "ca.crt": memring_ca.cert},
        "kubernetes.io/tls"))

    out.append(secret("memring-backend-auth", namespace, {"users": kept(
        directory / "backend-users", lambda p: write_auth_file(p, BACKEND_USER))}))
    out.append(secret("memring-client-auth", namespace, {"users": kept(
        directory / "client-users", lambda p: write_auth_file(p, CLIENT_USER))}))
    out.append(secret("memring-peer-secret", namespace, {"secret": kept(
        directory / "peer-secret", write_peer_secret)}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where the CAs, keys and passwords live "
                        "(kept between runs) and secrets.yaml is written")
    parser.add_argument("--namespace", default="memring")
    parser.add_argument("--cluster-domain", default="cluster.local")
    parser.add_argument("--proxy-host", action="append", default=[], metavar="NAME",
                        help="another name (or address) clients reach the proxies by, e.g. "
                        "a load balancer's, for their certificate; given when it is first "
                        "issued (delete DIR/memring-ca/memring-proxy.* to issue it again)")
    args = parser.parse_args(argv)
    objects = make(args.directory, args.namespace, args.cluster_domain, args.proxy_host)
    target = args.directory / "secrets.yaml"
    target.touch(mode=0o600)
    target.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    print(f"{len(objects)} Secrets in {target}: kubectl apply -f {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
