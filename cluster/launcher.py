"""`memring up`: a whole local cluster in the foreground, and the state file it leaves.

Theory of operation. `LocalCluster.start()` spawns etcd (cluster.etcd_process, fast elections,
data in a temp dir) unless an etcd URL was given, writes the cluster's `config` and `shards/*`
records, starts shards x replicas backends (`python -m memring.backend ... --etcd URL --cluster NAME
--shard ID --node-id ID`) and the proxies, each on its own free port with its log in the run
directory, and returns once every shard has a leader and every proxy has registered and has a
live connection to every leader (its `stats`). `stop()` terminates the proxies and backends
(they revoke their leases), kills what is still there after a grace period, reaps them, and
stops etcd last. The children are in their
own process group (a terminal's Ctrl-C reaches only `memring up`, which stops them in order) and
get SIGTERM if `memring up` itself dies (PR_SET_PDEATHSIG).

The state file (`$XDG_RUNTIME_DIR/memring/<cluster>.json`, else `~/.memring/<cluster>.json`)
records the etcd URL so `memring status` finds the cluster without `--etcd`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import trio

from memring.cluster.coordinator import ClusterConfig, CoordinatorError
from memring.cluster.etcd_process import HOST, EtcdProcess, free_port, start_etcd
from memring.cluster.keyspace import check_id

READY_TIMEOUT = 30.0
RECORDS_TIMEOUT = 10.0  # writing config and shard records to a fresh etcd
STOP_GRACE = 5.0
_PR_SET_PDEATHSIG = 1


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


@dataclass
class Child:
    role: str           # "backend" or "proxy"
    name: str           # node id, or proxy-N
    address: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, process_group=0,
                                            preexec_fn=_die_with_parent)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def routes_to(address: str, leaders: set[str]) -> bool:
    """The proxy at `address` answers and has a live connection to every leader: only then
    does a client get through to every shard (the proxy learns of a new leader, and
    connects to it, a little after etcd has it)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5) as s:
            s.settimeout(0.5)
            s.sendall(b"stats\r\n")
            reply = b""
            for _ in range(1000):
                if reply.endswith(b"END\r\n"):
                    break
                chunk = s.recv(65536)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    up = {line.split()[1].decode()[len("backend:"):-len(":state")]
          for line in reply.splitlines()
          if line.startswith(b"STAT backend:") and line.endswith(b":state up")}
    return leaders <= up


def _backend_flags() -> str:
    """The backend's --help, to pass only the cluster flags it knows."""
    try:
        return subprocess.run([sys.executable, "-m", "memring.backend", "--help"], capture_output=True,
                              text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


class LocalCluster:
    """etcd (unless given), the backends and the proxies of one plan, on this machine."""

    def __init__(self, plan: ClusterPlan, port: int, etcd_url: str | None = None, *,
                 metrics: bool = False) -> None:
        self.plan = plan
        self.port = port
        self.metrics = metrics
        self.etcd_url = etcd_url
        self.etcd: EtcdProcess | None = None
        self.children: list[Child] = []
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"memring-{plan.name}-"))
        self.stopping = False  # set by a signal: waits give up, start() raises
        self._state_written = False

    # -- bringing it up ------------------------------------------------------------------

    def _metrics_flag(self) -> list[str]:
        return ["--metrics-listen", f"{HOST}:{free_port()}"] if self.metrics else []

    @staticmethod
    def _metrics_note(argv: list[str]) -> str:
        if "--metrics-listen" not in argv:
            return ""
        return f" metrics http://{argv[argv.index('--metrics-listen') + 1]}/metrics"

    def start(self, say: Any = say) -> None:
        if not port_is_free(self.port):
            raise LaunchError(f"port {self.port} is already in use; choose another with --port")
        if self.etcd_url is None:
            self.etcd = start_etcd(data_dir=self.run_dir / "etcd")
            self.etcd_url = self.etcd.url
            say(f"memring up: etcd     {self.etcd_url} (pid {self.etcd.process.pid})")
        else:
            say(f"memring up: etcd     {self.etcd_url} (given)")
        self._check_stopping()
        trio.run(self._write_records)
        help_text = _backend_flags()
        url = self.etcd_url
        for shard in self.plan.shards:
            for node_id in shard.node_ids():
                address = f"{HOST}:{free_port()}"
                argv = [sys.executable, "-m", "memring.backend", "--listen", address, "--etcd", url,
                        "--cluster", self.plan.name, "--shard", shard.shard_id,
                        "--node-id", node_id]
                if "--lease-ttl" in help_text:
                    argv += ["--lease-ttl", f"{self.plan.config.lease_ttl:g}"]
                if "--peer-listen" in help_text:
                    # replication "auto" (the default): the mode the config says, live
                    argv += ["--peer-listen", f"{HOST}:{free_port()}"]
                argv += self._metrics_flag()
                self._spawn(Child("backend", node_id, address, argv,
                                  self.run_dir / f"{node_id}.log"))
                say(f"memring up: backend  {node_id:<10} shard {shard.shard_id:<6} {address} "
                    f"(pid {self._pid(-1)}){self._metrics_note(argv)}")
        for index in range(self.plan.proxies):
            port = self.port if index == 0 else free_port()
            address = f"{HOST}:{port}"
            name = f"proxy-{index + 1}"
            argv = [sys.executable, "-m", "memring.proxy", "--listen", address, "--etcd", url,
                    "--cluster", self.plan.name, "--proxy-id", name, *self._metrics_flag()]
            self._spawn(Child("proxy", name, address, argv, self.run_dir / f"{name}.log"))
            say(f"memring up: proxy    {name:<10} {address} (pid {self._pid(-1)})"
                f"{self._metrics_note(argv)}")
        trio.run(self._await_ready)
        self._write_state()
        say(f"memring up: logs in {self.run_dir}; state in {state_path(self.plan.name)}")

    def _pid(self, index: int) -> int:
        process = self.children[index].process
        return process.pid if process else 0

    def _spawn(self, child: Child) -> None:
        self._check_stopping()
        child.spawn()
        self.children.append(child)

    def _check_stopping(self) -> None:
        if self.stopping:
            raise LaunchError("interrupted while starting")

    async def _write_records(self) -> None:
        from memring.cluster.etcd_coordinator import EtcdCoordinator

        assert self.etcd_url is not None
        deadline = trio.current_time() + RECORDS_TIMEOUT
        while True:  # a just-started etcd on a busy machine may miss the first 1 s deadline
            try:
                async with EtcdCoordinator.connect(self.etcd_url, self.plan.name) as etcd:
                    await etcd.put_config(self.plan.config)
                    for shard in self.plan.shards:
                        await etcd.ensure_shard(shard.shard_id, weight=shard.weight)
                return
            except CoordinatorError as exc:
                if trio.current_time() >= deadline:
                    raise LaunchError(f"cannot write the cluster's records: {exc}") from None
            await trio.sleep(0.2)

    async def _await_ready(self) -> None:
        """Every shard has a leader; every proxy registered and answers."""
        from memring.cluster.etcd_coordinator import EtcdCoordinator

        assert self.etcd_url is not None
        missing = "etcd"
        async with EtcdCoordinator.connect(self.etcd_url, self.plan.name) as etcd:
            deadline = trio.current_time() + READY_TIMEOUT
            while trio.current_time() < deadline:
                self._check_stopping()
                for child in self.children:
                    code = child.exited()
                    if code is not None:
                        raise LaunchError(f"{child.role} {child.name} exited with code {code}:"
                                          f"\n{child.log_tail()}")
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
                                   or not await trio.to_thread.run_sync(routes_to, c.address,
                                                                        leaders))]
                    if not leaderless and not absent:
                        return
                    missing = (f"a leader for {', '.join(leaderless)}" if leaderless else
                               f"the proxy at {', '.join(absent)}")
                await trio.sleep(0.1)
        raise LaunchError(f"not ready after {READY_TIMEOUT:g}s: waiting for {missing}; logs "
                          f"in {self.run_dir}")

    def _write_state(self) -> None:
        path = state_path(self.plan.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"cluster": self.plan.name, "etcd": self.etcd_url, "pid": os.getpid(),
                 "proxies": [c.address for c in self.children if c.role == "proxy"],
                 "backends": {c.name: c.address for c in self.children if c.role == "backend"},
                 "logs": str(self.run_dir), "started": time.time()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)
        self._state_written = True

    # -- running and stopping --------------------------------------------------------------

    def supervise(self, say: Any = say) -> None:
        """Until `stopping`: report a child that exits (the rest keep running)."""
        reported: set[str] = set()
        while not self.stopping:
            for child in self.children:
                code = child.exited()
                if code is not None and child.name not in reported:
                    reported.add(child.name)
                    say(f"memring up: {child.role} {child.name} exited with code {code}; "
                        f"last lines of {child.log_path}:\n{child.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Proxies and backends: terminate, then kill after STOP_GRACE; etcd last."""
        try:
            for child in self.children:
                if child.process is not None and child.process.poll() is None:
                    child.process.terminate()
            deadline = time.monotonic() + STOP_GRACE
            for child in self.children:
                if child.process is None:
                    continue
                try:
                    child.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait(STOP_GRACE)
        finally:
            if self.etcd is not None:
                self.etcd.stop()
            if self._state_written:
                with contextlib.suppress(OSError):
                    state_path(self.plan.name).unlink()
            shutil.rmtree(self.run_dir, ignore_errors=True)


def up(plan: ClusterPlan, port: int, etcd_url: str | None, *, metrics: bool = False) -> int:
    """Run the cluster until SIGINT/SIGTERM; 0 after a clean stop, 1 if it could not start."""
    cluster = LocalCluster(plan, port, etcd_url, metrics=metrics)

    def on_signal(signum: int, _frame: object) -> None:
        cluster.stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cluster.start()
        except (LaunchError, RuntimeError, OSError) as exc:
            if not cluster.stopping:
                print(f"memring up: error: {exc}", file=sys.stderr)
                return 1
            return 0
        replicas = sorted({s.replicas for s in plan.shards})
        say(f"memring up: ready: cluster {plan.name}, {len(plan.shards)} shard(s) x "
              f"{'/'.join(map(str, replicas))} replica(s) behind {HOST}:{port}; "
              f"`memring status --cluster {plan.name}` shows it; Ctrl-C stops all")
        cluster.supervise()
        say("memring up: stopping")
        return 0
    finally:
        cluster.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
