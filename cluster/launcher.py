"""`memring up`: a whole local cluster in the foreground, and the state file it leaves.

Theory of operation. `up()` is one `trio.run`: a task turns SIGINT/SIGTERM
(`trio.open_signal_receiver`) into the cancellation of everything but the stop.
`LocalCluster.start()` spawns etcd (cluster.etcd_process, fast elections, data in the run
directory) unless an etcd URL was given, writes the cluster's `config` and `shards/*`
records, starts shards x replicas backends (`python -m memring.backend ... --etcd URL
--cluster NAME --shard ID --node-id ID --peer-listen ...`) and the proxies (`python -m
memring.proxy`; forked by cluster.fork_server, which imports their modules once), each on
its own free port with its log in the run directory, and returns once every shard has a leader and every proxy has registered and has a live connection to
every leader (its `stats`). Every wait is a trio sleep inside a cancel scope with a deadline.
`stop()` (shielded, bounded) sends SIGTERM to the proxies and backends (they revoke their
leases), gives them STOP_GRACE seconds (a second signal cuts it short), SIGKILLs what is
left and reaps it, then stops etcd the same way, last. The launcher never imports the
servers: it knows their flags, which ship in the same package.

The children are in their own process group (a terminal's Ctrl-C reaches only `memring up`,
which stops them in order) and get SIGTERM if `memring up` itself dies (PR_SET_PDEATHSIG,
which fires when the spawning *thread* exits: they are spawned from the trio thread, never
from a worker thread as `trio.lowlevel.open_process` would).

etcd security: a given etcd's TLS files and user (`etcd_security`) go to every backend and
proxy as flags. With `secure_etcd=True` the etcd `LocalCluster` starts is secured: a private
CA in the run directory, TLS for clients and peers with client certificates required, the
root user and a `memring` user and role limited to the cluster's prefix (etcd_process.
enable_auth), and a client certificate for memring's processes (`memring up --secure` turns
this on with the rest, below).

The state file (`$XDG_RUNTIME_DIR/memring/<cluster>.json`, else `~/.memring/<cluster>.json`)
records the etcd URL, and the paths (never the contents) of its TLS files and password file,
so `memring status` finds the cluster without `--etcd`.

`secure=True` (`memring up --secure`) turns on every protection together: etcd secured as
above, and a cluster CA of its own (cluster.local_tls: a certificate per backend, proxy and
memring's tools) with an auth file (a generated user and password unless one is given):
backends serve TLS requiring a cluster certificate (only the proxies and memring's tools
reach them), proxies serve clients over TLS (authenticated by the auth file, no client
certificate) and reach the backends over mutual TLS. The state file records the paths of
the CA and the tools' certificate and key, never a key or password itself.

The backends' replication links are authenticated by default: `memring up` writes a new
random peer secret (`peer-secret`, mode 0600) in the run directory and passes it to every
backend with --peer-secret-file (`--peer-secret-file FILE` uses a given one, for nodes
started by hand beside the cluster; `--no-peer-secret` runs them unauthenticated).
"""

from __future__ import annotations

import compileall
import contextlib
import ctypes
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import trio

from memring.cluster.auth_file import load_credentials
from memring.cluster.certificates import CertificateAuthority, CertificateError
from memring.cluster.coordinator import AccessDenied, ClusterConfig, CoordinatorError
from memring.cluster.etcd_process import HOST, EtcdProcess, enable_auth, free_port, spawn_etcd
from memring.cluster.etcd_security import EtcdSecurity
from memring.cluster.fork_server import ChildProcess, ForkServer, ForkServerError
from memring.cluster.keyspace import Keyspace, check_id
from memring.cluster.local_tls import ClusterTls, write_auth_file
from memring.cluster.node_stats import fetch_stats
from memring.protocol.ascii_auth import Login

ETCD_TIMEOUT = 15.0  # a spawned etcd answers /health
ETCD_CLIENT_CERT = "memring-etcd-client"  # never an etcd user's name (etcd_process doc)
# mutual TLS on the peer links: each node's certificate (--tls-*, named by its node id) serves
PEER_TLS_FLAGS: tuple[str, ...] = ("--peer-tls",)
RECORDS_TIMEOUT = 10.0  # writing config and shard records to a fresh etcd
READY_TIMEOUT = 30.0  # every shard has a leader, every proxy routes to them
STOP_GRACE = 5.0  # SIGTERM to SIGKILL
ROUTES_TIMEOUT = 1.5  # a proxy's `stats` for the readiness check
KILL_WAIT = 5.0  # SIGKILL to reaped (a process in uninterruptible sleep takes its time)
POLL = 0.05  # how often a wait for a process looks again
SUPERVISE_POLL = 0.2
_PR_SET_PDEATHSIG = 1

Say = Callable[[str], None]


def say(line: str) -> None:
    print(line, flush=True)


class LaunchError(RuntimeError):
    """The cluster could not be brought up (the message says which part and why)."""


# --- the state file -----------------------------------------------------------------------


def state_path(cluster: str) -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "memring" if runtime else Path.home() / ".memring"
    return base / f"{cluster}.json"


def read_state(cluster: str) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(cluster).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- what to run --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    shard_id: str
    replicas: int
    weight: int = 1

    def node_ids(self) -> tuple[str, ...]:
        return tuple(f"{self.shard_id}-r{i}" for i in range(1, self.replicas + 1))


@dataclass(frozen=True)
class ClusterPlan:
    name: str = "memring"
    config: ClusterConfig = field(default_factory=ClusterConfig)
    shards: tuple[ShardPlan, ...] = ()
    proxies: int = 1


def plan_from_flags(name: str, shards: int, replicas: int) -> ClusterPlan:
    if shards < 1 or replicas < 1:
        raise ValueError("--shards and --replicas must be at least 1")
    return ClusterPlan(check_id("cluster", name), ClusterConfig(),
                       tuple(ShardPlan(f"s{i}", replicas) for i in range(1, shards + 1)))


def plan_from_file(path: str, name: str | None, shards: int, replicas: int) -> ClusterPlan:
    """The cluster file (etc/cluster.toml): `name`, `proxies`, `[config]`, `[[shards]]` with
    `id`, `replicas` and `weight`; without [[shards]], --shards x --replicas."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"bad TOML in {path}: {exc}") from None
    table = data.get("config", {})
    known = {f.name for f in fields(ClusterConfig)}
    if not isinstance(table, dict) or set(table) - known:
        raise ValueError(f"{path}: [config] keys are {', '.join(sorted(known))}")
    config = ClusterConfig(**table)
    cluster = check_id("cluster", name or str(data.get("name", "memring")))
    plans = []
    for index, shard in enumerate(data.get("shards", []), start=1):
        if not isinstance(shard, dict):
            raise ValueError(f"{path}: shard #{index} must be a table")
        plan = ShardPlan(check_id("shard", str(shard.get("id", f"s{index}"))),
                         int(shard.get("replicas", replicas)), int(shard.get("weight", 1)))
        if plan.replicas < 1 or plan.weight < 1:
            raise ValueError(f"{path}: shard {plan.shard_id}: replicas and weight must be >= 1")
        plans.append(plan)
    proxies = int(data.get("proxies", 1))
    if proxies < 1:
        raise ValueError(f"{path}: proxies must be at least 1")
    base = plan_from_flags(cluster, shards, replicas)
    return replace(base, config=config, proxies=proxies,
                   shards=tuple(plans) if plans else base.shards)


# --- the processes ------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent (`memring up`) dies, whatever way it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """In its own process group, SIGTERM when `memring up` dies; call from the trio thread."""
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, process_group=0,
                                preexec_fn=_die_with_parent)


async def wait_exited(processes: list[ChildProcess]) -> None:
    """Until every one of `processes` has exited (and is reaped); the caller bounds it."""
    while any(process.poll() is None for process in processes):
        await trio.sleep(POLL)


async def terminate_then_kill(processes: list[ChildProcess],
                              grace: trio.CancelScope) -> list[ChildProcess]:
    """SIGTERM, wait within `grace` (a scope whose deadline the caller set), SIGKILL what is
    left and reap it within KILL_WAIT; returns the processes that outlived even that."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    with grace:
        await wait_exited(processes)
    for process in processes:
        if process.poll() is None:
            process.kill()
    with trio.move_on_after(KILL_WAIT):
        await wait_exited(processes)
    return [process for process in processes if process.poll() is None]


@dataclass
class Child:
    role: str           # "backend" or "proxy"
    name: str           # node id, or proxy-N
    address: str
    argv: list[str]
    log_path: Path
    process: ChildProcess | None = None  # spawned, or forked by the fork server

    def spawn(self) -> None:
        self.process = _spawn(self.argv, self.log_path)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def write_peer_secret(path: Path) -> None:
    """A new random peer secret (64 hex characters: 32 random bytes, the backend's minimum
    is 32 bytes) in `path`, created readable by its owner only; FileExistsError if present."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")


def compile_servers() -> None:
    """Write the bytecode of memring's modules once, before dozens of servers import them:
    from a checkout (an editable install), with PYTHONDONTWRITEBYTECODE set or not, each
    process would otherwise compile ~60 modules itself. A module already compiled costs a
    stat; a tree the user may not write (a system install, compiled by pip) is left as is."""
    package = Path(__file__).resolve().parent.parent  # memring/'s folders are links
    for folder in ("protocol", "netio", "cluster", "backend", "proxy"):
        compileall.compile_dir(package / folder, quiet=2)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


async def routes_to(address: str, leaders: set[str], login: Login | None = None,
                    tls: ssl.SSLContext | None = None) -> bool:
    """The proxy at `address` answers and routes to every leader (its pool is in rotation:
    connected, or dormant and connecting on its next request): only then does a client get
    through to every shard (the proxy learns of a new leader a little after etcd has it). `login`: the proxy's clients authenticate
    (its --auth-file); `tls`: it serves TLS. At most ROUTES_TIMEOUT."""
    stats = await fetch_stats(address, ROUTES_TIMEOUT, login, tls)
    if stats is None:
        return False
    up = {name[len("backend:"):-len(":state")] for name, value in stats.items()
          if name.startswith("backend:") and name.endswith(":state") and value == "up"}
    return leaders <= up


class LocalCluster:
    """etcd (unless given), the backends and the proxies of one plan, on this machine."""

    def __init__(self, plan: ClusterPlan, port: int, etcd_url: str | None = None, *,
                 metrics: bool = False, etcd_security: EtcdSecurity | None = None,
                 secure_etcd: bool = False, auth_file: str = "",
                 peer_secret_file: str | None = None, secure: bool = False) -> None:
        """`peer_secret_file`: the backends' --peer-secret-file; None (the default) writes a
        new one in the run directory, "" runs the peer links unauthenticated. `secure`:
        every protection at once (module doc); it needs the peer secret."""
        if secure and (peer_secret_file == "" or etcd_url is not None):
            raise ValueError("secure: needs its own etcd and a peer secret")
        self.plan = plan
        self.secure = secure
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"memring-{plan.name}-"))
        if secure and not auth_file:
            auth_file = str(self.run_dir / "auth")
            write_auth_file(Path(auth_file))
        # memcached's ASCII auth on every backend and proxy (`memring up --auth-file`); the
        # proxies authenticate to the backends as its first user, and so does the readiness
        # check to the proxies
        self.auth_file = auth_file
        self.login = load_credentials(auth_file).first() if auth_file else None
        self.port = port
        self.metrics = metrics
        self.etcd_url = etcd_url
        self.etcd_security = etcd_security or EtcdSecurity()
        self.secure_etcd = secure_etcd or secure
        self.tls: ClusterTls | None = None  # secure: made by start()
        self.etcd: EtcdProcess | None = None
        self.children: list[Child] = []
        self.fork_server: ForkServer | None = None  # while the servers are being started
        if peer_secret_file is None:
            peer_secret_file = str(self.run_dir / "peer-secret")
            write_peer_secret(Path(peer_secret_file))
        self.peer_secret_file = peer_secret_file
        self._grace = trio.CancelScope()  # stop()'s current wait for SIGTERM to work
        self._hurried = False  # hurry() was called: no more waiting for SIGTERM
        self._state_written = False

    # -- bringing it up ------------------------------------------------------------------

    def _metrics_flag(self) -> list[str]:
        return ["--metrics-listen", f"{HOST}:{free_port()}"] if self.metrics else []

    @staticmethod
    def _metrics_note(argv: list[str]) -> str:
        if "--metrics-listen" not in argv:
            return ""
        return f" metrics http://{argv[argv.index('--metrics-listen') + 1]}/metrics"

    def backend_argv(self, shard: ShardPlan, node_id: str, address: str, url: str
                     ) -> list[str]:
        """The backend's cluster mode; replication "auto" (its default with --peer-listen)
        follows the mode the cluster's config says, live."""
        return [sys.executable, "-m", "memring.backend", "--listen", address, "--etcd", url,
                "--cluster", self.plan.name, "--shard", shard.shard_id, "--node-id", node_id,
                "--lease-ttl", f"{self.plan.config.lease_ttl:g}",
                "--peer-listen", f"{HOST}:{free_port()}", *self._metrics_flag(),
                *self._auth_flags("--auth-file"), *self.etcd_security.argv(),
                *(["--peer-secret-file", self.peer_secret_file] if self.peer_secret_file
                  else []),
                *(self.tls.server_flags(node_id, "require") if self.tls else []),
                *(PEER_TLS_FLAGS if self.tls else ())]

    def proxy_argv(self, name: str, address: str, url: str) -> list[str]:
        """Clients are asked for no certificate: they authenticate with the auth file."""
        return [sys.executable, "-m", "memring.proxy", "--listen", address, "--etcd", url,
                "--cluster", self.plan.name, "--proxy-id", name, *self._metrics_flag(),
                *self._auth_flags("--auth-file", "--backend-auth-file"),
                *(self.tls.server_flags(name, "none") + self.tls.backend_link_flags(name)
                  if self.tls else []),
                *self.etcd_security.argv()]

    def _proxy_names(self) -> list[str]:
        return [f"proxy-{index + 1}" for index in range(self.plan.proxies)]

    async def _make_certificates(self) -> ClusterTls:
        names = [n for shard in self.plan.shards for n in shard.node_ids()]
        try:
            return await trio.to_thread.run_sync(ClusterTls.create, self.run_dir / "tls",
                                                 names + self._proxy_names())
        except (OSError, CertificateError) as exc:
            raise LaunchError(f"cannot make the cluster's certificates: {exc}") from None

    def _auth_flags(self, *flags: str) -> list[str]:
        return [part for flag in flags for part in (flag, self.auth_file)] \
            if self.auth_file else []

    async def start(self, say: Say = say) -> None:
        """Bring the plan up; LaunchError says what did not come up. Cancellable."""
        if not port_is_free(self.port):
            raise LaunchError(f"port {self.port} is already in use; choose another with --port")
        if self.etcd_url is None:
            self.etcd_url = await self._start_etcd()
            assert self.etcd is not None
            secured = f" ({self.etcd_security.describe()})" if self.secure_etcd else ""
            say(f"memring up: etcd     {self.etcd_url} (pid {self.etcd.process.pid}){secured}")
        else:
            say(f"memring up: etcd     {self.etcd_url} (given)")
        url = self.etcd_url
        if self.secure:
            self.tls = await self._make_certificates()
            say(f"memring up: cluster CA {self.tls.ca} (certificates beside it); clients "
                f"authenticate with {self.auth_file}")
        say(f"memring up: peer links authenticated with {self.peer_secret_file}"
            if self.peer_secret_file else
            "memring up: peer links unauthenticated (--no-peer-secret)")
        await trio.to_thread.run_sync(compile_servers)
        self.fork_server = ForkServer.start(self.run_dir / "fork-server.log",
                                            _die_with_parent)  # imports while we write
        await self._write_records(url)
        await self._fork_server_ready(say)
        for shard in self.plan.shards:
            for node_id in shard.node_ids():
                address = f"{HOST}:{free_port()}"
                argv = self.backend_argv(shard, node_id, address, url)
                pid = await self._spawn(Child("backend", node_id, address, argv,
                                              self.run_dir / f"{node_id}.log"), say)
                say(f"memring up: backend  {node_id:<10} shard {shard.shard_id:<6} {address} "
                    f"(pid {pid}){self._metrics_note(argv)}")
        for index, name in enumerate(self._proxy_names()):
            port = self.port if index == 0 else free_port()
            address = f"{HOST}:{port}"
            argv = self.proxy_argv(name, address, url)
            pid = await self._spawn(Child("proxy", name, address, argv,
                                          self.run_dir / f"{name}.log"), say)
            say(f"memring up: proxy    {name:<10} {address} (pid {pid})"
                f"{self._metrics_note(argv)}")
        self._close_fork_server()
        await self._await_ready(url)
        self._write_state()
        say(f"memring up: logs in {self.run_dir}; state in {state_path(self.plan.name)}")
        if self.tls is not None and self.login is not None:
            say(f"memring up: clients connect over TLS (CA {self.tls.ca}) and authenticate as "
                f"{self.login[0].decode()} (password in {self.auth_file}), e.g. pymemcache: "
                f"Client(('{HOST}', {self.port}), tls_context=ssl.create_default_context("
                f"cafile='{self.tls.ca}')).set('auth', b'{self.login[0].decode()} PASSWORD', "
                f"noreply=False) first")

    async def _fork_server_ready(self, say: Say) -> None:
        """The fork server has imported the servers' modules; if it cannot, each server is
        spawned (and imports them) itself, as without it."""
        if self.fork_server is None:
            return
        try:
            await self.fork_server.ready()
        except ForkServerError as exc:
            self._fork_server_failed(exc, say)

    def _fork_server_failed(self, exc: ForkServerError, say: Say) -> None:
        say(f"memring up: {exc}; each server imports its modules itself")
        self._close_fork_server()

    def _close_fork_server(self) -> None:
        if self.fork_server is not None:
            self.fork_server.close()
            self.fork_server = None

    async def _spawn(self, child: Child, say: Say) -> int:
        """Forked by the fork server while it runs, else spawned."""
        try:
            if self.fork_server is not None:
                try:
                    # shielded (FORK_TIMEOUT bounds it): a server forked is one recorded,
                    # which stop() will end, even when a signal cuts the start short
                    with trio.CancelScope(shield=True):
                        child.process = await self.fork_server.fork(child.argv,
                                                                    child.log_path)
                except ForkServerError as exc:
                    self._fork_server_failed(exc, say)
            if child.process is None:
                child.spawn()
        except OSError as exc:
            raise LaunchError(f"cannot start {child.role} {child.name}: {exc}") from None
        self.children.append(child)
        assert child.process is not None
        await trio.lowlevel.checkpoint_if_cancelled()  # a signal stops the start here
        return child.process.pid

    async def _start_etcd(self) -> str:
        ca = None
        try:
            if self.secure_etcd:
                ca = await trio.to_thread.run_sync(CertificateAuthority.create,
                                                   self.run_dir / "ca")
            self.etcd = etcd = spawn_etcd(data_dir=self.run_dir / "etcd", process_group=0,
                                          preexec_fn=_die_with_parent, ca=ca)
        except (RuntimeError, OSError, CertificateError) as exc:
            # EtcdNotFound says how to install it, CertificateError what openssl said
            raise LaunchError(f"cannot start etcd: {exc}") from None
        with trio.move_on_after(ETCD_TIMEOUT):
            while etcd.process.poll() is None:
                if await trio.to_thread.run_sync(etcd.healthy):  # at most 0.5 s
                    if ca is not None:
                        await self._secure(etcd, ca)
                    return etcd.url
                await trio.sleep(POLL)
            raise LaunchError(f"etcd exited with code {etcd.process.returncode}:\n"
                              f"{etcd.log_tail()}")
        raise LaunchError(f"etcd on {etcd.url} not healthy after {ETCD_TIMEOUT:g}s:\n"
                          f"{etcd.log_tail()}")

    async def _secure(self, etcd: EtcdProcess, ca: CertificateAuthority) -> None:
        """Users and roles on the fresh etcd, and the credentials memring's processes use."""
        try:
            users = await trio.to_thread.run_sync(
                lambda: enable_auth(etcd, Keyspace(self.plan.name).prefix,
                                    directory=self.run_dir / "etcd-auth"))
            client = await trio.to_thread.run_sync(ca.issue, ETCD_CLIENT_CERT)
        except (RuntimeError, OSError, CertificateError) as exc:  # EtcdAdminError, openssl
            raise LaunchError(f"cannot secure etcd: {exc}") from None
        self.etcd_security = EtcdSecurity(str(client.ca), str(client.cert), str(client.key),
                                          users.user, str(users.password_file))

    async def _write_records(self, url: str) -> None:
        from memring.cluster.etcd_coordinator import EtcdCoordinator

        problem = "etcd does not answer"
        with trio.move_on_after(RECORDS_TIMEOUT):
            while True:  # a just-started etcd on a busy machine may miss the first 1 s deadline
                try:
                    async with EtcdCoordinator.connect(url, self.plan.name,
                                                       security=self.etcd_security) as etcd:
                        await etcd.put_config(self.plan.config)
                        for shard in self.plan.shards:
                            await etcd.ensure_shard(shard.shard_id, weight=shard.weight)
                    return
                except AccessDenied as exc:  # waiting will not change it
                    raise LaunchError(f"etcd refuses us: {exc}") from None
                except CoordinatorError as exc:
                    problem = str(exc)
                await trio.sleep(0.2)
        raise LaunchError(f"cannot write the cluster's records within {RECORDS_TIMEOUT:g}s: "
                          f"{problem}")

    async def _await_ready(self, url: str) -> None:
        """Every shard has a leader; every proxy registered and answers."""
        from memring.cluster.etcd_coordinator import EtcdCoordinator

        missing = "etcd"
        tools = self.tls.tools_context() if self.tls is not None else None
        with trio.move_on_after(READY_TIMEOUT):
            async with EtcdCoordinator.connect(url, self.plan.name, probe=False,
                                               security=self.etcd_security) as etcd:
                while True:
                    for child in self.children:
                        code = child.exited()
                        if code is not None:
                            raise LaunchError(f"{child.role} {child.name} exited with code "
                                              f"{code}:\n{child.log_tail()}")
                    try:
                        view = await etcd.snapshot()
                    except CoordinatorError as exc:
                        missing = f"etcd ({exc})"
                    else:
                        leaderless = [s.shard_id for s in self.plan.shards
                                      if s.shard_id not in view.shards
                                      or view.shards[s.shard_id].leader is None]
                        proxies = {p.address for p in view.proxies.values()}
                        leaders = {s.leader.address for s in view.shards.values()
                                   if s.leader is not None}
                        absent = [c.address for c in self.children if c.role == "proxy"
                                  and (c.address not in proxies
                                       or not await routes_to(c.address, leaders,
                                                              self.login, tools))]
                        if not leaderless and not absent:
                            return
                        missing = (f"a leader for {', '.join(leaderless)}" if leaderless else
                                   f"the proxy at {', '.join(absent)}")
                    await trio.sleep(0.1)
        raise LaunchError(f"not ready after {READY_TIMEOUT:g}s: waiting for {missing}; logs "
                          f"in {self.run_dir}")

    def _write_state(self) -> None:
        path = state_path(self.plan.name)
        state = {"cluster": self.plan.name, "etcd": self.etcd_url, "pid": os.getpid(),
                 "proxies": [c.address for c in self.children if c.role == "proxy"],
                 "backends": {c.name: c.address for c in self.children if c.role == "backend"},
                 "logs": str(self.run_dir), "started": time.time()}
        if self.auth_file:  # `memring status` asks the nodes for stats as its first user
            state["auth_file"] = self.auth_file
        if self.tls is not None:  # what memring status connects with (paths only)
            state["tls"] = {"tls_ca": str(self.tls.ca), "tls_cert": str(self.tls.tools.cert),
                            "tls_key": str(self.tls.tools.key)}
        if self.etcd_security != EtcdSecurity():  # paths only: the files stay 0600
            state["etcd_security"] = {f"etcd_{k}": v for k, v in
                                      dataclasses.asdict(self.etcd_security).items()}
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(state, indent=2) + "\n")
            tmp.replace(path)
        except OSError as exc:
            raise LaunchError(f"cannot write the state file {path}: {exc.strerror}") from None
        self._state_written = True

    # -- running and stopping --------------------------------------------------------------

    async def supervise(self, say: Say = say) -> None:
        """Until cancelled: report a child that exits (the rest keep running)."""
        reported: set[str] = set()
        while True:
            for child in self.children:
                code = child.exited()
                if code is not None and child.name not in reported:
                    reported.add(child.name)
                    say(f"memring up: {child.role} {child.name} exited with code {code}; "
                        f"last lines of {child.log_path}:\n{child.log_tail()}")
            await trio.sleep(SUPERVISE_POLL)

    def hurry(self) -> None:
        """Stop waiting for SIGTERM to work: SIGKILL now (a second Ctrl-C)."""
        self._hurried = True
        self._grace.cancel()

    def _grace_period(self) -> trio.CancelScope:
        self._grace = trio.CancelScope(deadline=trio.current_time() + STOP_GRACE)
        if self._hurried:
            self._grace.cancel()
        return self._grace

    async def stop(self, say: Say = say) -> None:
        """Proxies and backends, then etcd: SIGTERM, SIGKILL after STOP_GRACE, reaped; then
        the state file and the run directory. Bounded (2 x (STOP_GRACE + KILL_WAIT)); the
        caller shields it."""
        try:
            survivors = await terminate_then_kill(
                [c.process for c in self.children if c.process is not None],
                self._grace_period())
            if self.etcd is not None:  # last: the servers revoke their leases on the way out
                survivors += await terminate_then_kill([self.etcd.process],
                                                       self._grace_period())
            for process in survivors:
                say(f"memring up: pid {process.pid} survived SIGKILL for {KILL_WAIT:g}s")
        finally:
            self._close_fork_server()  # a start cut short
            if self._state_written:
                with contextlib.suppress(OSError):
                    state_path(self.plan.name).unlink()
            shutil.rmtree(self.run_dir, ignore_errors=True)


async def run(cluster: LocalCluster, say: Say = say) -> int:
    """Start `cluster` and supervise it until SIGINT/SIGTERM; always stop it. 0 after a
    clean stop (also when a signal interrupts the start), 1 if it could not start."""
    plan = cluster.plan
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running = trio.CancelScope()

            async def on_signals() -> None:
                async for _signum in signals:
                    if running.cancel_called:
                        cluster.hurry()  # a second signal: kill without waiting
                    else:
                        say("memring up: stopping")
                        running.cancel()

            nursery.start_soon(on_signals)
            try:
                with running:
                    await cluster.start(say)
                    replicas = sorted({s.replicas for s in plan.shards})
                    say(f"memring up: ready: cluster {plan.name}, {len(plan.shards)} shard(s) x "
                        f"{'/'.join(map(str, replicas))} replica(s) behind {HOST}:{cluster.port};"
                        f" `memring status --cluster {plan.name}` shows it; Ctrl-C stops all")
                    await cluster.supervise(say)
            except LaunchError as exc:
                print(f"memring up: error: {exc}", file=sys.stderr)
                code = 1
            finally:
                with trio.CancelScope(shield=True):
                    await cluster.stop(say)
                nursery.cancel_scope.cancel()  # the signal watcher
    return code


def up(plan: ClusterPlan, port: int, etcd_url: str | None, *, metrics: bool = False,
       etcd_security: EtcdSecurity | None = None, secure_etcd: bool = False,
       auth_file: str = "", peer_secret_file: str | None = None, secure: bool = False) -> int:
    """`memring up`: run the cluster until SIGINT/SIGTERM (one trio.run)."""
    return trio.run(run, LocalCluster(plan, port, etcd_url, metrics=metrics,
                                      etcd_security=etcd_security, secure_etcd=secure_etcd,
                                      auth_file=auth_file, peer_secret_file=peer_secret_file,
                                      secure=secure))
