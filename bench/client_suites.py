"""Client libraries' own test suites against memcached 1.6.18, a memring backend and a proxy.

Issue 14 asks that every memcached client library's own test suite pass against memring
exactly as it passes against memcached. This script gets the suites from PyPI sdists
(pinned below), installs them and their needs into a venv of their own
(.cache/client-suites-venv, so the project's venv stays clean), and runs each suite three
times, against servers it starts on free 127.0.0.1 ports: memcached 1.6.18, one memring
backend, and a memring proxy over two memring backends (a static topology). It prints a
table of passed/total per suite and server, then, for every test that fails on memring,
its name and one line saying why. Binary-protocol variants (pylibmc with binary=True,
`memccapable -b`, the libmemcached tools with `--binary`) are reported like the rest.

    make client-suites                            # installs libmemcached-dev/-tools first
    make client-suites CLIENT_SUITES_ARGS="--emcache-tests ~/src/emcache"   # + emcache's
    .venv/bin/python bench/client_suites.py --suites pylibmc,memccapable --json /tmp/cs.json

Every suite run has a deadline (--timeout) and every server is stopped at the end, also on
Ctrl-C or SIGTERM. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from processes import (
    HOST,
    REPO,
    BenchError,
    Server,
    ask_version,
    free_port,
    run_until_done,
    spawned,
)

CACHE = REPO / ".cache"
SDISTS = CACHE / "client-suites"
VENV = CACHE / "client-suites-venv"
SHIMS = Path(__file__).resolve().parent / "client_suite_shims"
TARGETS = ("memcached", "backend", "proxy")

# The libraries whose tests run, pinned. aiomcache 0.8.2's sdist has no tests/ (0.8.1's
# has them), so 0.8.1 is both the library and its suite.
PYLIBMC = ("pylibmc", "1.6.3")
PYTHON_MEMCACHED = ("python-memcached", "1.62")
AIOMCACHE = ("aiomcache", "0.8.1")
SDIST_PINS = (PYLIBMC, PYTHON_MEMCACHED, AIOMCACHE)
# What the suites import besides their library (aiomcache's conftest imports docker and
# memcache, i.e. python-memcached, at the top); pytest-timeout bounds each test.
TEST_PINS = ("pytest==8.3.4", "pytest-asyncio==0.21.2", "pytest-timeout==2.3.1",
             "docker==7.1.0")
# emcache is on PyPI as wheels only, none with its tests; they run only from a checkout of its
# git repository given with --emcache-tests.
EMCACHE = "emcache==1.3.3"
EMCACHE_MISSING = ("not run: PyPI has wheels only (no sdist in any release) and the wheels "
                   "hold no tests; --emcache-tests DIR runs them from a checkout of emcache's "
                   "git repository")
# emcache's acceptance tests want memcached on localhost:11211 and :11212; both nodes become
# the server under test (its unix-socket, TLS and SASL tests need servers set up as in its
# compose.yaml and are left out).
EMCACHE_NODES = ('pytest.param([MemcachedHostAddress("localhost", 11211), '
                 'MemcachedHostAddress("localhost", 11212)], id="tcp_client")')
EMCACHE_NODES_SHIM = ('pytest.param([MemcachedHostAddress(a.rsplit(":", 1)[0], '
                      'int(a.rsplit(":", 1)[1])) for a in __import__("os").environ['
                      '"CLIENT_SUITES_SERVERS"].split(",")], id="tcp_client")')
PER_TEST_TIMEOUT = 30  # seconds, for pytest-timeout


@dataclass
class TestOutcome:
    name: str
    passed: bool
    reason: str = ""


@dataclass
class SuiteRun:
    """One suite against one target: each test's outcome, or why the suite did not run."""

    suite: str
    target: str
    tests: list[TestOutcome] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(t.passed for t in self.tests)

    def cell(self) -> str:
        if self.error and not self.tests:
            return "error"
        return f"{self.passed}/{len(self.tests)}" + ("*" if self.error else "")


class SuiteError(Exception):
    """A suite did not run to its end; carries the outcomes it gave before that."""

    def __init__(self, message: str, outcomes: list[TestOutcome] | None = None) -> None:
        super().__init__(message)
        self.outcomes = outcomes or []


@dataclass
class Context:
    """What every suite runner needs: the suites' interpreter and sources, a scratch folder."""

    python: Path
    sources: dict[str, Path]
    tmp: Path
    env: dict[str, str]
    timeout: float


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the suites' sources


def run_checked(argv: list[str], what: str, timeout: float = 600, cwd: Path | None = None
                ) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"{what} failed: {e}") from e
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({' '.join(argv)}):\n{done.stderr[-2000:]}")


def unpacked(name: str, version: str) -> Path:
    """The sdist of `name==version`, downloaded from PyPI once and unpacked in SDISTS."""
    folder = SDISTS / f"{name}-{version}"
    if folder.is_dir():
        return folder
    SDISTS.mkdir(parents=True, exist_ok=True)
    archive = SDISTS / f"{name}-{version}.tar.gz"
    if not archive.exists():
        progress(f"downloading the {name} {version} sdist")
        run_checked([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
                     "--no-deps", "--dest", str(SDISTS), f"{name}=={version}"],
                    f"pip download {name}=={version}")
    staging = Path(tempfile.mkdtemp(dir=SDISTS))
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    (staging / folder.name).rename(folder)
    staging.rmdir()
    return folder


def add_shims(sources: dict[str, Path]) -> None:
    """Point each suite at CLIENT_SUITES_SERVER (see client_suite_shims/README.md)."""
    for folder in sources.values():
        # An empty config of its own: pytest would otherwise take memring's pyproject.toml.
        (folder / "pytest.ini").write_text("[pytest]\n")
    memcache_tests = sources["python-memcached"] / "tests"
    shutil.copy(SHIMS / "python_memcached_conftest.py", memcache_tests / "conftest.py")
    shutil.copy(SHIMS / "python_memcached_utils.py", memcache_tests / "utils.py")
    (memcache_tests / "__init__.py").touch()
    shutil.copy(SHIMS / "pylibmc_conftest.py", sources["pylibmc"] / "conftest.py")
    conftest = sources["aiomcache"] / "tests" / "conftest.py"
    text = conftest.read_text()
    tail = (SHIMS / "aiomcache_conftest_tail.txt").read_text()
    if tail not in text:
        # Its docker fixtures (unused here) are annotated with docker-py 1.x's `Client`,
        # which no installable `docker` has any more; the annotation is evaluated at import.
        text = text.replace("docker_mod.Client", "Any")
        conftest.write_text(text + tail)


def prepared_emcache_tests(checkout: Path) -> Path:
    """A copy of emcache's tests/ from a checkout, its two nodes read from the environment."""
    folder = SDISTS / "emcache-tests"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(checkout / "tests", folder / "tests")
    conftest = folder / "tests" / "acceptance" / "conftest.py"
    text = conftest.read_text() if conftest.exists() else ""
    if EMCACHE_NODES not in text:
        raise BenchError(f"{conftest} does not name its nodes as expected ({EMCACHE_NODES})")
    conftest.write_text(text.replace(EMCACHE_NODES, EMCACHE_NODES_SHIM))
    (folder / "pytest.ini").write_text("[pytest]\n")
    return folder


def prepared_sources(emcache_checkout: Path | None) -> dict[str, Path]:
    sources = {name: unpacked(name, version) for name, version in SDIST_PINS}
    add_shims(sources)
    if emcache_checkout is not None:
        sources["emcache"] = prepared_emcache_tests(emcache_checkout)
    return sources


def prepared_venv(sources: dict[str, Path]) -> Path:
    """The suites' venv with the pinned libraries built from their sdists (once)."""
    python = VENV / "bin" / "python"
    wanted = "\n".join([*TEST_PINS, EMCACHE, *(f"{n}=={v}" for n, v in SDIST_PINS)])
    stamp = VENV / ".client-suites-installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if not Path("/usr/include/libmemcached/memcached.h").exists():
        raise BenchError("pylibmc builds against libmemcached: `apt-get install "
                         "libmemcached-dev` (or `make client-suites` as root)")
    progress(f"installing the suites and what they need into {VENV}")
    run_checked([sys.executable, "-m", "venv", "--clear", str(VENV)], "creating the venv")
    run_checked([str(python), "-m", "pip", "install", "--quiet", *TEST_PINS, EMCACHE,
                 *(str(SDISTS / f"{n}-{v}.tar.gz") for n, v in SDIST_PINS)],
                "installing the suites' packages")
    stamp.write_text(wanted)
    return python


# ---------------------------------------------------------------- servers under test


def memcached_argv(port: int) -> list[str]:
    binary = shutil.which("memcached")
    if binary is None:
        raise BenchError("memcached is not installed: `make debian-deps` as root")
    user = ["-u", "root"] if os.geteuid() == 0 else []
    return [binary, "-p", str(port), "-U", "0", "-l", HOST, *user]


def backend_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "memring.backend", "--listen", f"{HOST}:{port}"]


@contextlib.contextmanager
def started(name: str, argv_for: Callable[[int], list[str]]) -> Iterator[Server]:
    port = free_port()
    with spawned(name, argv_for(port), port, ask_version, "`version`") as (server, _):
        yield server


@contextlib.contextmanager
def target(kind: str, tmp: Path) -> Iterator[int]:
    """A fresh server of `kind` (one of TARGETS); yields the port a client talks to."""
    with contextlib.ExitStack() as stack:
        if kind == "memcached":
            yield stack.enter_context(started("memcached", memcached_argv)).port
            return
        first = stack.enter_context(started("backend", backend_argv))
        if kind == "backend":
            yield first.port
            return
        second = stack.enter_context(started("backend-2", backend_argv))
        config = tmp / "proxy.toml"
        config.write_text("[proxy]\n" + "".join(
            f'\n[[shards]]\nname = "s{i}"\nnodes = ["{HOST}:{s.port}"]\n'
            for i, s in enumerate((first, second), start=1)))
        proxy = stack.enter_context(started("proxy", lambda port: [
            sys.executable, "-m", "memring.proxy", "--listen", f"{HOST}:{port}",
            "--config", str(config)]))
        yield proxy.port


# ---------------------------------------------------------------- running one suite


def first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


def junit_outcomes(report: Path) -> list[TestOutcome]:
    """Each test case of a pytest JUnit XML report; the reason is its failure's first line."""
    outcomes = []
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        problem = next((c for c in case if c.tag in ("failure", "error")), None)
        skipped = case.find("skipped")
        if skipped is not None:
            outcomes.append(TestOutcome(name, False, "skipped: " + first_line(
                skipped.get("message"))))
        elif problem is not None:
            outcomes.append(TestOutcome(name, False, first_line(
                problem.get("message")) or first_line(problem.text)))
        else:
            outcomes.append(TestOutcome(name, True))
    return outcomes


def run_bounded(argv: list[str], cwd: Path, env: dict[str, str], timeout: float
                ) -> tuple[int | None, str]:
    """Run `argv` in its own process group; kill the group at the deadline. Returns the exit
    status (None on timeout) and stdout+stderr."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group: its children too
            process.wait()
        out.seek(0)
        return status, out.read().decode(errors="replace")


def pytest_suite(folder: Callable[[dict[str, Path]], Path], tests: str, *extra: str,
                 env: Callable[[int], dict[str, str]]
                 ) -> Callable[[Context, int], list[TestOutcome]]:
    def run(context: Context, port: int) -> list[TestOutcome]:
        report = context.tmp / "junit.xml"
        report.unlink(missing_ok=True)
        cwd = folder(context.sources)
        argv = [str(context.python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                f"--junitxml={report}", f"--timeout={PER_TEST_TIMEOUT}",
                "--timeout-method=signal", *extra, tests]
        status, output = run_bounded(argv, cwd, {**context.env, **env(port)}, context.timeout)
        if status is None:
            raise SuiteError(f"timed out after {context.timeout:.0f}s")
        if not report.exists():
            raise SuiteError(f"pytest exited {status} without a report: "
                             f"{first_line(output[-500:])}")
        return junit_outcomes(report)
    return run


def address_env(port: int) -> dict[str, str]:
    return {"CLIENT_SUITES_SERVER": f"{HOST}:{port}"}


def two_nodes_env(port: int) -> dict[str, str]:
    return {"CLIENT_SUITES_SERVERS": f"{HOST}:{port},{HOST}:{port}"}


def pylibmc_env(binary: bool) -> Callable[[int], dict[str, str]]:
    def env(port: int) -> dict[str, str]:
        return {"MEMCACHED_HOST": HOST, "MEMCACHED_PORT": str(port),
                "CLIENT_SUITES_BINARY": "1" if binary else "0"}
    return env


def pylibmc_doctests(context: Context, port: int) -> list[TestOutcome]:
    folder = context.sources["pylibmc"]
    argv = [str(context.python), str(SHIMS / "pylibmc_doctests.py"), str(folder / "docs")]
    status, output = run_bounded(argv, folder, {**context.env, **pylibmc_env(False)(port)},
                                 context.timeout)
    outcomes = []
    for line in output.splitlines():
        if line.startswith("{"):
            outcomes.append(TestOutcome(**json.loads(line)))
    if status != 0:
        raise SuiteError("timed out" if status is None else
                         f"exited {status}: {first_line(output[-500:])}", outcomes)
    return outcomes


def memccapable_lines(output: str) -> Iterator[str]:
    """memccapable's output as lines; the last line of an assertion trace has no newline,
    so the next test's name is glued to it (`...memcapable.cc:566: f()binary quit`)."""
    for line in output.splitlines():
        text = line.strip()
        if text.startswith("./") and not text.endswith(")"):
            trace, _, name = text.rpartition(")")
            yield trace + ")"
            yield name.strip()
        else:
            yield text


def memccapable_outcomes(output: str) -> list[TestOutcome]:
    """memccapable -v prints `name   [pass]`; a failing test prints `name` and `[FAIL]` on
    the next line, then its assertion trace (innermost first), whose first line is the
    reason."""
    outcomes: list[TestOutcome] = []
    pending = ""
    for text in memccapable_lines(output):
        name, bracket, verdict = text.rpartition("[")
        if bracket and verdict in ("pass]", "FAIL]", "skipped]"):
            passed = verdict == "pass]"
            outcomes.append(TestOutcome(name.strip() or pending, passed,
                                        "" if passed else verdict.rstrip("]")))
            pending = ""
        elif text.startswith("./"):
            last = outcomes[-1] if outcomes else None
            if last is not None and not last.passed and last.reason in ("FAIL", "skipped"):
                last.reason = text[:200]
        elif text:
            pending = text
    return outcomes


def memccapable(binary: bool) -> Callable[[Context, int], list[TestOutcome]]:
    """libmemcached's memccapable, every test of one protocol."""
    def run(context: Context, port: int) -> list[TestOutcome]:
        tool = shutil.which("memccapable")
        if tool is None:
            raise SuiteError("memccapable is missing: `apt-get install libmemcached-tools`")
        # -v prints the failed assertions; -t bounds each I/O.
        argv = [tool, "-h", HOST, "-p", str(port), "-v", "-t", "5", "-b" if binary else "-a"]
        status, output = run_bounded(argv, context.tmp, context.env, context.timeout)
        outcomes = memccapable_outcomes(output)
        if status is None:
            raise SuiteError(f"timed out after {context.timeout:.0f}s (the test after "
                             f"{outcomes[-1].name if outcomes else 'none'} hung)", outcomes)
        return outcomes
    return run


def raw_get(port: int, key: str) -> bytes | None:
    """The value of `key` by a plain text `get`, or None on a miss."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(f"get {key}\r\n".encode())
        reply = b""
        while not (reply.endswith(b"END\r\n") or reply.endswith(b"ERROR\r\n")):
            if len(reply) > 1 << 20:  # the test values are a few bytes
                raise SuiteError(f"get {key}: over 1 MiB without END")
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    if not reply.startswith(b"VALUE "):
        return None
    header, _, rest = reply.partition(b"\r\n")
    return rest[:int(header.split()[3])]


def libmemcached_tools(binary: bool) -> Callable[[Context, int], list[TestOutcome]]:
    """Debian's libmemcached-tools, each doing its job once; the result checked over the
    text protocol (or by the tool's exit status and output)."""
    def run(context: Context, port: int) -> list[TestOutcome]:
        servers = [f"--servers={HOST}:{port}"]
        payload = context.tmp / "client-suites-file.txt"
        payload.write_bytes(b"memring client suites\n")
        key = payload.name

        def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
            path = shutil.which(name)
            if path is None:
                raise SuiteError(f"{name} is missing: `apt-get install libmemcached-tools`")
            protocol = ["--binary"] if binary else []
            try:
                return subprocess.run([path, *servers, *protocol, *args], capture_output=True, text=True,
                                      timeout=30, cwd=context.tmp, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                return subprocess.CompletedProcess([name], -1, "", "timed out after 30s")

        def check(name: str, ok: bool, done: subprocess.CompletedProcess[str], want: str) -> None:
            why = "" if ok else (f"{want}; exit {done.returncode}, "
                                 f"{first_line(done.stderr) or first_line(done.stdout)!r}")
            outcomes.append(TestOutcome(name, ok, why))

        outcomes: list[TestOutcome] = []
        if not binary:  # memcping and memcdump have no --binary (libmemcached-tools 1.1.4)
            done = tool("memcping")
            check("memcping", done.returncode == 0, done, "exit 0")
        done = tool("memcstat")
        check("memcstat", done.returncode == 0 and "pid:" in done.stdout, done,
              "exit 0 and a pid: line")
        done = tool("memccp", str(payload))
        stored = raw_get(port, key)
        check("memccp", done.returncode == 0 and stored == payload.read_bytes(), done,
              f"the file stored under its name (get gave {stored!r})")
        done = tool("memccat", key)
        printed = done.stdout.encode()
        check("memccat", done.returncode == 0 and printed in (
            payload.read_bytes(), payload.read_bytes() + b"\n"), done,
              f"the file's bytes and a newline (printed {done.stdout[:60]!r})")
        done = tool("memcexist", key)
        missing = tool("memcexist", "client-suites-no-such-key")
        check("memcexist", done.returncode == 0 and missing.returncode != 0, done,
              f"exit 0 for a stored key, not 0 for a missing one ({missing.returncode})")
        done = tool("memctouch", "--expire=100", key)
        check("memctouch", done.returncode == 0, done, "exit 0")
        if not binary:
            done = tool("memcdump")
            check("memcdump", done.returncode == 0 and key in done.stdout, done,
                  f"the stored key listed (printed {done.stdout[:60]!r})")
        done = tool("memcslap", "--concurrency=2", "--execute-number=100")
        check("memcslap", done.returncode == 0, done, "exit 0")
        done = tool("memcrm", key)
        check("memcrm", done.returncode == 0 and raw_get(port, key) is None, done,
              "exit 0 and the key gone")
        tool("memccp", str(payload))
        done = tool("memcflush")
        check("memcflush", done.returncode == 0 and raw_get(port, key) is None, done,
              "exit 0 and the key gone")
        return outcomes
    return run


SUITES: dict[str, Callable[[Context, int], list[TestOutcome]]] = {
    "python-memcached": pytest_suite(lambda s: s["python-memcached"], "tests",
                                     env=address_env),
    "aiomcache": pytest_suite(lambda s: s["aiomcache"], "tests", "-o", "asyncio_mode=auto",
                              env=address_env),
    "pylibmc": pytest_suite(lambda s: s["pylibmc"], "tests", env=pylibmc_env(False)),
    "pylibmc-binary": pytest_suite(lambda s: s["pylibmc"], "tests", env=pylibmc_env(True)),
    "pylibmc-doctests": pylibmc_doctests,
    "memccapable": memccapable(binary=False),
    "memccapable-binary": memccapable(binary=True),
    "libmemcached-tools": libmemcached_tools(binary=False),
    "libmemcached-tools-binary": libmemcached_tools(binary=True),
    "emcache": pytest_suite(lambda s: s["emcache"], "tests/acceptance", "-o",
                            "asyncio_mode=auto", "-k", "not unix_client",
                            "--ignore=tests/acceptance/test_ssl.py",
                            "--ignore=tests/acceptance/test_sasl.py", env=two_nodes_env),
}


def run_suite(suite: str, kind: str, context: Context) -> SuiteRun:
    result = SuiteRun(suite, kind)
    started_at = time.monotonic()
    try:
        with target(kind, context.tmp) as port:
            result.tests = SUITES[suite](context, port)
    except SuiteError as e:
        result.tests, result.error = e.outcomes, str(e)
    except BenchError as e:
        result.error = first_line(str(e))
    result.seconds = time.monotonic() - started_at
    return result


# ---------------------------------------------------------------- the report


def table(runs: list[SuiteRun], suites: list[str], kinds: list[str]) -> str:
    """passed/total per suite and target; `n/a` for a suite that was not run."""
    by = {(r.suite, r.target): r for r in runs}
    lines = ["| suite | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for suite in suites:
        cells = [by[suite, k].cell() if (suite, k) in by else "n/a" for k in kinds]
        lines.append(f"| {suite} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plain_reason(reason: str) -> str:
    """A reason without what changes from run to run (libmemcached's pointers and ports)."""
    reason = re.sub(r"\(0x[0-9a-f]+\) ", "", reason)
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", reason)


def memring_failures(runs: list[SuiteRun]) -> list[str]:
    """Tests that fail on a memring target although they pass on memcached (or were not
    run there), one line per test and reason with the targets it fails on; many tests of
    one suite failing for one reason make one line."""
    on_memcached = {(r.suite, t.name): t.passed for r in runs if r.target == "memcached"
                    for t in r.tests}
    targets: dict[tuple[str, str, str], list[str]] = {}
    lines = []
    for run in runs:
        if run.target == "memcached":
            continue
        if run.error:
            lines.append(f"{run.suite} [{run.target}]: did not finish: {run.error}")
        for test in run.tests:
            if not test.passed and on_memcached.get((run.suite, test.name), True):
                key = (run.suite, test.name, plain_reason(test.reason))
                targets.setdefault(key, []).append(run.target)
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for (suite, name, reason), kinds in targets.items():
        grouped.setdefault((suite, ", ".join(kinds), reason), []).append(name)
    for (suite, on, reason), names in grouped.items():
        if len(names) > 3:
            lines.append(f"{suite} [{on}] {len(names)} tests ({', '.join(names)}): {reason}")
        else:
            lines += [f"{suite} [{on}] {name}: {reason}" for name in names]
    return lines


def run(args: argparse.Namespace) -> int:
    suites = [s for s in args.suites.split(",") if s]
    kinds = [k for k in args.targets.split(",") if k]
    not_run: dict[str, str] = {}
    if "emcache" in suites and args.emcache_tests is None:
        not_run["emcache"] = EMCACHE_MISSING
    for name in suites:
        if name not in SUITES:
            raise BenchError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    for kind in kinds:
        if kind not in TARGETS:
            raise BenchError(f"unknown target {kind!r}; known: {', '.join(TARGETS)}")
    sources = prepared_sources(args.emcache_tests)
    python = prepared_venv(sources)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    runs: list[SuiteRun] = []
    with tempfile.TemporaryDirectory(prefix="client-suites-") as tmp:
        context = Context(python, sources, Path(tmp), env, args.timeout)
        for suite in (s for s in suites if s not in not_run):
            for kind in kinds:
                progress(f"{suite} against {kind} ...")
                result = run_suite(suite, kind, context)
                progress(f"  {result.cell()} in {result.seconds:.1f}s"
                         + (f" ({result.error})" if result.error else ""))
                runs.append(result)
    failures = memring_failures(runs)
    print(table(runs, suites, kinds))
    print("\n`*`: the suite stopped early (see below).")
    for suite, why in not_run.items():
        print(f"\n{suite}: {why}")
    if any(r.error for r in runs if r.target == "memcached"):
        print("\nOn memcached:")
        print("\n".join(f"- {r.suite}: {r.error}" for r in runs
                        if r.target == "memcached" and r.error))
    print(f"\nFailing on memring but passing on memcached ({len(failures)}):")
    print("\n".join(f"- {line}" for line in failures) or "- none")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "pins": {name: version for name, version in SDIST_PINS} | {"emcache": EMCACHE},
            "not_run": not_run,
            "runs": [asdict(r) | {"passed": r.passed, "total": len(r.tests)} for r in runs],
            "memring_failures": failures,
            "markdown": table(runs, suites, kinds),
        }, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default=",".join(SUITES),
                        help="comma-separated suites to run (%(default)s)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated servers to run them against (%(default)s)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds one suite may run against one server (%(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--emcache-tests", metavar="DIR", type=Path,
                        help="a checkout of emcache's git repository, whose tests/acceptance "
                             "then run too (PyPI has no emcache sdist)")
    args = parser.parse_args(argv)
    # Ctrl-C stops everything even when started in the background (which ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return run_until_done(run, args)


if __name__ == "__main__":
    sys.exit(main())
