"""Start and stop a local etcd (Debian's `etcd`, 3.4) on free loopback ports: one member, or a
cluster of several (`start_etcd_cluster`).

Used by the tests and by `memring up`. The member keeps its data in a temporary directory
(removed on stop unless the caller gave one), logs to `<data dir>/etcd.log`, and is polled on
its `/health` endpoint until it answers. `stop()` is terminate-then-kill and always reaps the
process; a SIGSTOPped member (`pause()`) is resumed first so that it can exit cleanly.

etcd 3.4's smallest lease TTL is 1.5 x its election timeout (1 s by default, so TTLs round up
to 2 s); `fast_elections=True` uses a 50 ms heartbeat and 250 ms election timeout so a 1 s TTL
is honoured.

Secured members (`ca=` a CertificateAuthority): each member gets a certificate of its own
(common name `etcd-<name>-<port>`, never an etcd user's name: with `--client-cert-auth` etcd
takes a client certificate's common name as the user when a request carries no token, and
its gRPC gateway presents the member's own certificate), serves clients and peers over TLS
only and demands a client certificate from both. `enable_auth()` then adds the root user and
a user and role whose read-write permission covers given key prefixes (a cluster's, see
cluster.keyspace), and turns authentication on, through etcd's JSON gateway to the Auth API
(no etcdctl needed: Debian's etcd-server does not ship it). Passwords are random and written
to 0600 files.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memring.cluster.certificates import CertificateAuthority, Credential
from memring.cluster.keyspace import prefix_end

HOST = "127.0.0.1"
# etcd 3.4 refuses to start on architectures it does not support officially unless told to.
_GOARCH = {"aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "s390x": "s390x",
           "ppc64le": "ppc64le", "i686": "386", "riscv64": "riscv64"}


def await_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of `pid` shows state T (stopped) in /proc (Linux; elsewhere
    return at once): a SIGSTOP is acted on only when each thread next runs."""
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while tasks.is_dir():
        states = []
        for stat in tasks.glob("*/stat"):
            with contextlib.suppress(OSError):  # a thread that exited meanwhile
                text = stat.read_text()
                states.append(text[text.rindex(")") + 2])
        if all(state in "TtZX" for state in states):  # stopped, traced, or gone
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} not stopped {timeout:g}s after SIGSTOP: {states}")
        time.sleep(0.001)


class EtcdNotFound(RuntimeError):
    """No etcd binary on PATH."""


class EtcdStartError(RuntimeError):
    """etcd exited or did not become healthy in time."""


class EtcdAdminError(RuntimeError):
    """etcd refused a call of `enable_auth()` or `grant_prefix()` (the message is etcd's)."""


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out for outgoing connections and bind(0)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_FIRST_PORT = 10000


def free_port() -> int:
    """A loopback port nobody listens on, never the same twice in this process (two servers
    started side by side would race for a port handed out twice), and below the kernel's
    ephemeral range: a server restarted on its own port (a node after kill -9, an etcd
    member) must find it free, and a port of that range may meanwhile be taken as the source
    port of any outgoing connection (measured: a Jepsen run's restarted backend refused to
    start, `port ... already in use`)."""
    floor = _ephemeral_floor()
    candidates = range(_FIRST_PORT, floor) if floor - _FIRST_PORT >= 1000 else None
    with _handed_out_lock:
        for _ in range(1000):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((HOST, random.choice(candidates) if candidates else 0))
                except OSError:
                    continue  # taken: try another
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise OSError("no unused loopback port left")


def find_etcd(binary: str = "etcd") -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/bin:/usr/sbin:/usr/local/bin")
    if path is None:
        raise EtcdNotFound(
            f"no {binary!r} binary on PATH: install Debian's etcd-server without starting its "
            "service (`make debian-deps`), or pass --etcd URLS of a running etcd")
    return path


@dataclass
class EtcdProcess:
    """A running etcd member; `url` is its client URL."""

    process: subprocess.Popen[bytes]
    client_port: int
    peer_port: int
    data_dir: Path
    owns_data_dir: bool
    argv: list[str]
    env: dict[str, str]
    paused: bool = field(default=False)
    process_group: int | None = None
    preexec_fn: Callable[[], object] | None = None
    tls: Credential | None = None  # the member's certificate; it is also its client's here

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.client_port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """For HTTP calls to a TLS member (its CA; its own certificate as the client's)."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        return context

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pause(self) -> None:
        """SIGSTOP: etcd freezes with its sockets open (calls hang instead of being refused).
        Returns once every thread has stopped: each stops when next scheduled, and on a loaded
        machine etcd answered a call sent just after the signal (2 in 40 at load 13)."""
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True
        await_stopped(self.process.pid)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def healthy(self, timeout: float = 0.5) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout,
                                        context=self.ssl_context()) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def kill(self) -> None:
        """kill -9 and reap (the data dir stays, for `restart()`)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.paused = False

    def restart(self, ready_timeout: float = 15.0) -> None:
        """Start the member again (after `kill()`) with the same ports and data."""
        self.kill()
        self.process = _spawn(self.argv, self.env, self.log_path, self.process_group,
                              self.preexec_fn)
        _await_health(self, ready_timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate, then kill after `timeout`; reap; remove an owned data dir."""
        try:
            if self.process.poll() is None:
                if self.paused:
                    self.resume()
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout)
        finally:
            self.paused = False
            if self.owns_data_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)


def _spawn(argv: list[str], env: dict[str, str], log_path: Path,
           process_group: int | None = None, preexec_fn: Callable[[], object] | None = None
           ) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, process_group=process_group,
                                preexec_fn=preexec_fn)


def _await_health(member: EtcdProcess, ready_timeout: float) -> None:
    """Return once the member is healthy; else stop it and raise EtcdStartError."""
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if member.process.poll() is not None:
            tail = member.log_tail()
            code = member.process.returncode
            member.stop()
            raise EtcdStartError(f"etcd exited with code {code}:\n{tail}")
        if member.healthy():
            return
        time.sleep(0.05)
    tail = member.log_tail()
    member.stop()
    raise EtcdStartError(f"etcd on {member.url} not healthy after {ready_timeout:g}s:\n{tail}")


def start_etcd(*, data_dir: str | Path | None = None, name: str = "memring",
               fast_elections: bool = True, ready_timeout: float = 15.0,
               binary: str = "etcd", ca: CertificateAuthority | None = None,
               auth_token_ttl: int | None = None) -> EtcdProcess:
    """Start one etcd member on free loopback ports; return once /health says true. With
    `ca`, TLS for clients and peers, client certificates required (see the module doc);
    `auth_token_ttl`: seconds an unused auth token lives (etcd's default 300)."""
    member = spawn_etcd(data_dir=data_dir, name=name, fast_elections=fast_elections,
                        binary=binary, ca=ca, auth_token_ttl=auth_token_ttl)
    _await_health(member, ready_timeout)
    return member


def spawn_etcd(*, data_dir: str | Path | None = None, name: str = "memring",
               fast_elections: bool = True, binary: str = "etcd",
               process_group: int | None = None,
               preexec_fn: Callable[[], object] | None = None,
               ca: CertificateAuthority | None = None,
               auth_token_ttl: int | None = None) -> EtcdProcess:
    """Start one etcd member on free loopback ports and return at once (the caller polls
    `healthy()`). `process_group` and `preexec_fn` go to Popen (`memring up` keeps its
    children out of the terminal's process group); `restart()` uses them again."""
    client_port, peer_port = free_port(), free_port()
    scheme = "https" if ca else "http"
    return _spawn_member(name, data_dir, client_port, peer_port,
                         f"{name}={scheme}://{HOST}:{peer_port}",
                         fast_elections=fast_elections, binary=binary,
                         process_group=process_group, preexec_fn=preexec_fn, ca=ca,
                         auth_token_ttl=auth_token_ttl)


def _tls_flags(tls: Credential) -> list[str]:
    """Clients and peers over TLS only, each required to present a certificate of the CA."""
    cert, key, ca = str(tls.cert), str(tls.key), str(tls.ca)
    return ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca,
            "--client-cert-auth",
            "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
            "--peer-client-cert-auth"]


def _spawn_member(name: str, data_dir: str | Path | None, client_port: int, peer_port: int,
                  initial_cluster: str, *, fast_elections: bool, binary: str = "etcd",
                  process_group: int | None = None,
                  preexec_fn: Callable[[], object] | None = None,
                  ca: CertificateAuthority | None = None,
                  auth_token_ttl: int | None = None) -> EtcdProcess:
    path = find_etcd(binary)
    owns = data_dir is None
    base = Path(tempfile.mkdtemp(prefix="memring-etcd-")) if data_dir is None else Path(data_dir)
    base.mkdir(parents=True, exist_ok=True)
    scheme = "https" if ca else "http"
    client, peer = f"{scheme}://{HOST}:{client_port}", f"{scheme}://{HOST}:{peer_port}"
    argv = [path, "--name", name, "--data-dir", str(base / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "new"]
    if fast_elections:
        argv += ["--heartbeat-interval", "50", "--election-timeout", "250"]
    # its own files (a name per port): etcd re-reads them at each handshake, and members
    # started side by side from one CA must not rewrite each other's
    tls = ca.issue(f"etcd-{name}-{client_port}", (HOST, "localhost")) if ca else None
    if tls is not None:
        argv += _tls_flags(tls)
    if auth_token_ttl is not None:
        argv += ["--auth-token-ttl", str(auth_token_ttl)]
    env = dict(os.environ)
    goarch = _GOARCH.get(platform.machine().lower())
    if goarch:
        env.setdefault("ETCD_UNSUPPORTED_ARCH", goarch)
    process = _spawn(argv, env, base / "etcd.log", process_group, preexec_fn)
    return EtcdProcess(process, client_port, peer_port, base, owns, argv, env,
                       process_group=process_group, preexec_fn=preexec_fn, tls=tls)


@dataclass
class EtcdCluster:
    """Several etcd members forming one cluster on loopback: what a deployment runs, so that
    the tests can kill or pause one member, etcd's leader included, and see memring carry on
    through the others."""

    members: list[EtcdProcess]

    @property
    def urls(self) -> str:
        """Every member's client URL, comma-separated (memring's `--etcd` form)."""
        return ",".join(member.url for member in self.members)

    def _raft_ids(self, member: EtcdProcess, timeout: float = 0.5) -> tuple[str, str] | None:
        """(this member's id, the id of the leader it follows), from its status endpoint;
        None when it does not answer (paused, dead) or knows no leader."""
        request = urllib.request.Request(f"{member.url}/v3/maintenance/status", data=b"{}",
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout,
                                        context=member.ssl_context()) as response:
                status = json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None
        me = str(status.get("header", {}).get("member_id", ""))
        leader = str(status.get("leader", ""))
        return (me, leader) if me and leader and leader != "0" else None

    @staticmethod
    def _says_leader(member: EtcdProcess, timeout: float = 0.5) -> bool:
        """The member's `etcd_server_is_leader` metric is 1 (False when it does not answer)."""
        try:
            with urllib.request.urlopen(f"{member.url}/metrics", timeout=timeout,
                                        context=member.ssl_context()) as response:
                return b"\netcd_server_is_leader 1" in response.read()
        except (OSError, urllib.error.URLError):
            return False

    def leader(self, timeout: float = 0.5) -> EtcdProcess | None:
        """The member that is etcd's raft leader, as the live members report it. A TLS
        member with auth on refuses the gateway's status call (etcd 3.4 refuses gateway calls
        without a token when it demands client certificates): there, the one member whose
        metrics say it leads."""
        ids: dict[str, EtcdProcess] = {}
        leaders: set[str] = set()
        live = [m for m in self.members if not m.paused and m.process.poll() is None]
        if any(member.tls for member in live):
            leading = [m for m in live if self._says_leader(m, timeout)]
            return leading[0] if len(leading) == 1 else None
        for member in live:
            found = self._raft_ids(member, timeout)
            if found is not None:
                ids[found[0]] = member
                leaders.add(found[1])
        if len(leaders) != 1:
            return None
        return ids.get(leaders.pop())

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def start_etcd_cluster(size: int = 3, *, fast_elections: bool = True,
                       ready_timeout: float = 20.0, name: str = "memring",
                       ca: CertificateAuthority | None = None,
                       auth_token_ttl: int | None = None) -> EtcdCluster:
    """Start `size` members on free loopback ports as one new cluster; return once each says
    it is healthy (which needs an elected leader). `ca` and `auth_token_ttl` as start_etcd."""
    ports = [(free_port(), free_port()) for _ in range(size)]
    names = [f"{name}-{i + 1}" for i in range(size)]
    scheme = "https" if ca else "http"
    initial = ",".join(f"{n}={scheme}://{HOST}:{peer}"
                       for n, (_client, peer) in zip(names, ports, strict=True))
    members: list[EtcdProcess] = []
    try:
        for member_name, (client_port, peer_port) in zip(names, ports, strict=True):
            members.append(_spawn_member(member_name, None, client_port, peer_port, initial,
                                         fast_elections=fast_elections, ca=ca,
                                         auth_token_ttl=auth_token_ttl))
        for member in members:
            _await_health(member, ready_timeout)
    except BaseException:
        for member in members:
            member.stop()
        raise
    return EtcdCluster(members)


@contextlib.contextmanager
def running_etcd(*, data_dir: str | Path | None = None, fast_elections: bool = True,
                 ca: CertificateAuthority | None = None,
                 auth_token_ttl: int | None = None) -> Iterator[EtcdProcess]:
    """`start_etcd(...)` for the block; always stopped afterwards."""
    member = start_etcd(data_dir=data_dir, fast_elections=fast_elections, ca=ca,
                        auth_token_ttl=auth_token_ttl)
    try:
        yield member
    finally:
        member.stop()


@contextlib.contextmanager
def running_etcd_cluster(size: int = 3, *, fast_elections: bool = True,
                         ca: CertificateAuthority | None = None) -> Iterator[EtcdCluster]:
    """`start_etcd_cluster(...)` for the block; every member always stopped afterwards."""
    etcd = start_etcd_cluster(size, fast_elections=fast_elections, ca=ca)
    try:
        yield etcd
    finally:
        etcd.stop()


# --- authentication ---------------------------------------------------------------------------

ROOT_USER = "root"
MEMRING_USER = "memring"  # user and role


@dataclass(frozen=True)
class EtcdUsers:
    """What `enable_auth()` set up: the users' password files and the prefix granted."""

    root_password_file: Path
    user: str
    password_file: Path
    prefix: str


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _auth_call(member: EtcdProcess, path: str, body: dict[str, Any],
               timeout: float = 5.0) -> dict[str, Any]:
    """POST one Auth API call to etcd's JSON gateway (`/v3/auth/...`)."""
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{member.url}/v3/auth/{path}", method="POST",
                                     data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout,
                                    context=member.ssl_context()) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise EtcdAdminError(f"etcd at {member.url}: auth/{path}: {exc.code} {detail}") from None
    except (OSError, ValueError) as exc:
        raise EtcdAdminError(f"etcd at {member.url}: auth/{path}: {exc}") from None
    if not isinstance(reply, dict):
        raise EtcdAdminError(f"etcd at {member.url}: auth/{path}: unexpected reply {reply!r}")
    return reply


def _password_file(path: Path) -> tuple[str, Path]:
    """A new random password, written (0600) to `path`."""
    password = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password, path


def _grant(member: EtcdProcess, role: str, prefix: str) -> None:
    end = prefix_end(prefix.encode()).decode()
    _auth_call(member, "role/grant", {"name": role, "perm": {
        "permType": "READWRITE", "key": _b64(prefix), "range_end": _b64(end)}})


def enable_auth(etcd: EtcdProcess | EtcdCluster, prefix: str, *more_prefixes: str,
                directory: str | Path | None = None, user: str = MEMRING_USER) -> EtcdUsers:
    """Add `root` and `user` (with a role of the same name: read-write on keys starting with
    `prefix`, e.g. `Keyspace(cluster).prefix`, and on `more_prefixes`), then turn etcd's
    authentication on. The passwords go to `root.password` and `<user>.password` in
    `directory` (default: the first member's data directory). The gateway serves these
    calls only before authentication is on: with it on and `--client-cert-auth`, etcd 3.4
    refuses every gateway call that carries no token, Authenticate included."""
    member = etcd.members[0] if isinstance(etcd, EtcdCluster) else etcd
    base = Path(directory) if directory is not None else member.data_dir
    root_password, root_file = _password_file(base / f"{ROOT_USER}.password")
    password, user_file = _password_file(base / f"{user}.password")
    _auth_call(member, "user/add", {"name": ROOT_USER, "password": root_password})
    _auth_call(member, "user/grant", {"user": ROOT_USER, "role": ROOT_USER})
    _auth_call(member, "role/add", {"name": user})
    for granted in (prefix, *more_prefixes):
        _grant(member, user, granted)
    _auth_call(member, "user/add", {"name": user, "password": password})
    _auth_call(member, "user/grant", {"user": user, "role": user})
    _auth_call(member, "enable", {})
    return EtcdUsers(root_file, user, user_file, prefix)
