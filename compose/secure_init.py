#!/usr/bin/env python3
"""The compose cluster's security, made inside the cluster: certificates, passwords, etcd users.

Usage (compose/docker-compose.yml runs both as one-shot services):
  memring-secure-init files SECRETS CA_DIR --node ID=HOST... --proxy NAME... --etcd NAME...
  memring-secure-init etcd-auth SECRETS --endpoint URL --cluster NAME

`files` writes, once (a finished SECRETS holds `.complete` and is left as it is): the cluster
CA's certificate `ca.crt` and one certificate per node (common name the node id, for its
client and peer ports, naming its service host), per proxy (naming the proxy's host,
localhost and 127.0.0.1, where the host's clients reach the published port) and
`memring-tools.crt` (for `memring status`); etcd's own CA `etcd-ca.crt` (apart from the
cluster's: etcd takes a client certificate's common name for a user name, see
cluster/local_tls.py), one certificate per etcd member and `etcd-client.crt` for memring's
processes; the auth file `auth` (user memring, a random password), `peer-secret`, and the
etcd passwords `etcd-root.password` and `etcd-memring.password`. Keys are 0600, owned by the
image's user. The CA keys stay in CA_DIR, a volume only this service mounts.

`etcd-auth` adds etcd's root user and a `memring` user and role limited to the cluster's
prefix, with the passwords of SECRETS, and turns authentication on, through etcd's JSON
gateway (as cluster.etcd_process.enable_auth does for tests). etcd answers those calls only
while authentication is off, so on an etcd where it is on already this does nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from memring.cluster.certificates import CertificateAuthority, CertificateError
from memring.cluster.keyspace import Keyspace, prefix_end
from memring.cluster.launcher import write_peer_secret
from memring.cluster.local_tls import SECURE_USER, TOOLS_CERT, write_auth_file

COMPLETE = ".complete"  # written last: a SECRETS without it is remade from scratch
ETCD_CLIENT = "etcd-client"  # memring's client certificate for etcd; not an etcd user's name
ETCD_ROOT = "root"
LOCAL_HOSTS = ("localhost", "127.0.0.1")
TIMEOUT = 5.0  # seconds per gateway call


def _password_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24) + "\n")


def _install(authority: CertificateAuthority, name: str, hosts: list[str],
             secrets_dir: Path, file_name: str | None = None) -> None:
    """Issue `name`'s certificate and copy it and its key (0600) into `secrets_dir`."""
    credential = authority.issue(name, hosts)
    stem = file_name or name
    shutil.copyfile(credential.cert, secrets_dir / f"{stem}.crt")
    key = secrets_dir / f"{stem}.key"
    shutil.copyfile(credential.key, key)
    os.chmod(key, 0o600)


def make_files(secrets_dir: Path, ca_dir: Path, nodes: dict[str, str], proxies: list[str],
               etcd_members: list[str]) -> bool:
    """Everything the module doc lists; False (and nothing changed) when already made."""
    if (secrets_dir / COMPLETE).exists():
        return False
    for old in secrets_dir.iterdir():  # a half-made set from an interrupted run
        if old.is_file():
            old.unlink()
    cluster = CertificateAuthority.create(ca_dir / "cluster", "memring cluster CA")
    etcd = CertificateAuthority.create(ca_dir / "etcd", "memring etcd CA")
    shutil.copyfile(cluster.cert, secrets_dir / "ca.crt")
    shutil.copyfile(etcd.cert, secrets_dir / "etcd-ca.crt")
    for node, host in nodes.items():
        _install(cluster, node, [host, *LOCAL_HOSTS], secrets_dir)
    for proxy in proxies:
        _install(cluster, proxy, [proxy, *LOCAL_HOSTS], secrets_dir)
    _install(cluster, TOOLS_CERT, [], secrets_dir)
    for member in etcd_members:
        # the common name is no etcd user's (see the module doc); the file is named after it
        _install(etcd, f"etcd-member-{member}", [member, *LOCAL_HOSTS], secrets_dir, member)
    _install(etcd, ETCD_CLIENT, [], secrets_dir)
    write_auth_file(secrets_dir / "auth", SECURE_USER)
    write_peer_secret(secrets_dir / "peer-secret")
    _password_file(secrets_dir / f"etcd-{ETCD_ROOT}.password")
    _password_file(secrets_dir / f"etcd-{SECURE_USER}.password")
    (secrets_dir / COMPLETE).write_text("")
    return True


class GatewayRefused(Exception):
    """etcd's JSON gateway answered an error (the message is etcd's)."""


def _gateway(endpoint: str, context: ssl.SSLContext, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{endpoint}/v3/auth/{path}", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise GatewayRefused(f"auth/{path}: {exc.code} "
                             f"{exc.read().decode(errors='replace').strip()}") from None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def enable_etcd_auth(secrets_dir: Path, endpoint: str, cluster: str) -> bool:
    """Users, role and authentication on; False when etcd had authentication on already."""
    context = ssl.create_default_context(cafile=str(secrets_dir / "etcd-ca.crt"))
    context.load_cert_chain(str(secrets_dir / f"{ETCD_CLIENT}.crt"),
                            str(secrets_dir / f"{ETCD_CLIENT}.key"))
    try:
        # with authentication on, etcd takes the certificate's name for a user: unknown, refused
        _gateway(endpoint, context, "user/list", {})
    except GatewayRefused:
        return False

    def call(path: str, body: dict[str, Any]) -> None:
        try:
            _gateway(endpoint, context, path, body)
        except GatewayRefused as exc:  # an earlier run stopped half way: keep what it made
            if "already exists" not in str(exc):
                raise

    def password(user: str) -> str:
        return (secrets_dir / f"etcd-{user}.password").read_text().strip()

    prefix = Keyspace(cluster).prefix
    call("user/add", {"name": ETCD_ROOT, "password": password(ETCD_ROOT)})
    call("user/grant", {"user": ETCD_ROOT, "role": ETCD_ROOT})
    call("role/add", {"name": SECURE_USER})
    call("role/grant", {"name": SECURE_USER, "perm": {
        "permType": "READWRITE", "key": _b64(prefix),
        "range_end": _b64(prefix_end(prefix.encode()).decode())}})
    call("user/add", {"name": SECURE_USER, "password": password(SECURE_USER)})
    call("user/grant", {"user": SECURE_USER, "role": SECURE_USER})
    call("enable", {})
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="memring-secure-init", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    files = commands.add_parser("files", help="certificates and passwords, once")
    files.add_argument("secrets", type=Path)
    files.add_argument("ca_dir", type=Path)
    files.add_argument("--node", action="append", default=[], metavar="ID=HOST")
    files.add_argument("--proxy", action="append", default=[], metavar="NAME")
    files.add_argument("--etcd", action="append", default=[], metavar="NAME")
    auth = commands.add_parser("etcd-auth", help="etcd users and authentication, once")
    auth.add_argument("secrets", type=Path)
    auth.add_argument("--endpoint", required=True, metavar="URL")
    auth.add_argument("--cluster", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "files":
            nodes = dict(item.split("=", 1) for item in args.node)
            made = make_files(args.secrets, args.ca_dir, nodes, args.proxy, args.etcd)
            print(f"memring-secure-init: {'made' if made else 'kept'} {args.secrets}")
        else:
            done = enable_etcd_auth(args.secrets, args.endpoint, args.cluster)
            print("memring-secure-init: etcd authentication "
                  f"{'turned on' if done else 'was on already'}")
    except (OSError, ValueError, GatewayRefused, CertificateError) as exc:
        print(f"memring-secure-init: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
