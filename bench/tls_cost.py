"""What TLS costs, measured beside the plain path in one run (issue 13).

Scenario pairs, each TLS scenario against its plain twin under the same closed-loop load:
  memcached        the load talks to one `memcached -t 1` directly (the reference)
  memcached-tls    the same over TLS: `memcached -t 1 -Z`, mutual (ssl_verify_mode=2: the
                   load presents a client certificate); the load pays for TLS too
  backend          the load talks to one memring backend (python -m memring.backend) alone
  backend-tls      the same backend with --tls --tls-verify require (the load presents a
                   client certificate, as to memcached -Z)
  proxy            `python -m memring.proxy` -> 2 x memcached -t 1, plain
  proxy-tls        the same proxy with --backend-tls (its certificate, verified both ways)
                   -> 2 x memcached -Z requiring it; the load talks plain to the proxy
  proxy-tls-all    TLS on the client link too (the proxy's --tls listener), only if this
                   proxy has one (`--tls` in `python -m memring.proxy --help`)
  backends         the proxy -> 2 x memring backend, plain
  backends-tls     TLS on every link: the load -TLS-> proxy -TLS-> 2 x memring backend
                   with --tls requiring a client certificate (only if both have --tls)
The backend and backends pairs need the backend's --tls listener, proxy-tls-all the proxy's;
without them those scenarios are skipped with a note.
A private CA (cluster.certificates) issues every certificate. Servers and proxies are pinned
to --server-cpu, the load to --load-cpu. Each round runs every load against every scenario,
alternating the order; the tables show medians and the ratios TLS/plain of each pair.

    .venv/bin/python bench/tls_cost.py                       # 3 rounds, ~5 min
    .venv/bin/python bench/tls_cost.py --rounds 5 --json /tmp/tls.json
    .venv/bin/python bench/tls_cost.py --scenarios proxy,proxy-tls --loads getset
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from backend_vs_memcached import (
    busy_cpus,
    check_cpus,
    cpu_model,
    fmt_us,
    median_summary,
    server_argv,
)
from loadgen import LoadError, ProgressLine, add_load_arguments, preload
from processes import (
    HOST,
    REPO,
    BenchError,
    Server,
    ask_version,
    free_port,
    run_until_done,
    spawned,
    stop_group,
)
from proxy_bench import (
    LOADS,
    Endpoint,
    Results,
    add_ratios,
    launched,
    load_specs,
    load_title,
    markdown,
    measure,
    memring_argv,
    parse_list,
    table,
)

REPO_ROOT = str(REPO)
if REPO_ROOT not in sys.path:  # the private CA lives in the package (cluster/certificates.py)
    sys.path.insert(0, REPO_ROOT)

from memring.cluster.certificates import CertificateAuthority, Credential  # noqa: E402

SCENARIOS = {
    "memcached": "memcached direct",
    "memcached-tls": "memcached -Z direct (mTLS)",
    "backend": "backend direct",
    "backend-tls": "backend --tls direct (mTLS)",
    "proxy": "proxy -> memcached",
    "proxy-tls": "proxy -TLS-> memcached -Z",
    "proxy-tls-all": "-TLS-> proxy -TLS-> mc -Z",
    "backends": "proxy -> backends",
    "backends-tls": "-TLS-> proxy -TLS-> backends",
}
# (TLS, plain) pairs: the ratios printed
PAIRS = (("memcached-tls", "memcached"), ("backend-tls", "backend"), ("proxy-tls", "proxy"),
         ("proxy-tls-all", "proxy"), ("backends-tls", "backends"))
# the scenarios that need the servers' own TLS listeners (--tls), and whose
CLIENT_TLS = {"backend-tls": ("backend",), "proxy-tls-all": ("proxy",),
              "backends-tls": ("proxy", "backend")}


def tls_probe(client: Credential) -> Callable[[int], str | None]:
    """`version` over mutual TLS: the server's version once it answers."""
    context = ssl.create_default_context(cafile=str(client.ca))
    context.load_cert_chain(client.cert, client.key)

    def ask(port: int) -> str | None:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as raw, \
                    context.wrap_socket(raw, server_hostname=HOST) as s:
                s.sendall(b"version\r\n")
                reply = s.recv(128)
        except OSError:
            return None
        return reply[8:-2].decode() if reply.startswith(b"VERSION ") else None

    return ask


def cpu_us_per_op(run: dict[str, Any], of: str = "server") -> float:
    """CPU per request in µs of the servers and the proxy behind the endpoint (`server`), the
    proxy alone (`proxy`) or the load generator (`load`): what other work on a shared machine
    disturbs least (it takes time slices, not cycles per request)."""
    ops, key = run["ops_per_s"], f"{of}_cpu_pct"
    return run[key] * 1e4 / ops if ops and key in run else math.nan


def cpu_pair(pairs: list[tuple[dict[str, Any], dict[str, Any]]], of: str) -> dict[str, Any]:
    """Median CPU per request of the TLS and the plain runs, and of the paired ratios."""
    cpu = [(cpu_us_per_op(a, of), cpu_us_per_op(b, of)) for a, b in pairs]
    cpu = [(a, b) for a, b in cpu if not (math.isnan(a) or math.isnan(b)) and b]
    if not cpu:
        return {}
    ratio = [a / b for a, b in cpu]
    return {"tls": round(statistics.median(a for a, _ in cpu), 1),
            "plain": round(statistics.median(b for _, b in cpu), 1),
            "ratio": round(statistics.median(ratio), 3),
            "ratio_range": [round(min(ratio), 2), round(max(ratio), 2)]}


def paired_ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per pair, the ratio TLS/plain of each round's two runs (adjacent in the alternated
    order, so they met the same neighbours on the machine), then the median over rounds."""
    out: dict[str, dict[str, Any]] = {}
    for tls, plain in PAIRS:
        pairs = list(zip(runs.get(tls, []), runs.get(plain, []), strict=False))
        if not pairs:
            continue
        ratios = {
            "ops_per_s": [a["ops_per_s"] / b["ops_per_s"] for a, b in pairs if b["ops_per_s"]],
            "p99_us": [a["p99_us"] / b["p99_us"] for a, b in pairs if b["p99_us"]],
        }
        out[f"{tls}/{plain}"] = {
            "rounds": len(pairs),
            **{m: round(statistics.median(v), 3) for m, v in ratios.items() if v},
            **{f"{m}_range": [round(min(v), 2), round(max(v), 2)] for m, v in ratios.items()
               if v},
            # servers + proxy; the proxy alone (proxy scenarios); the load generator
            "cpu_us_per_op": cpu_pair(pairs, "server"),
            "proxy_cpu_us_per_op": cpu_pair(pairs, "proxy"),
            "load_cpu_us_per_op": cpu_pair(pairs, "load"),
        }
    return out


def paired_lines(section: dict[str, Any]) -> list[str]:
    lines = []
    def cpu(c: dict[str, Any]) -> str:
        return f"{c['ratio']:.2f}x ({fmt_us(c['plain'])} -> {fmt_us(c['tls'])} µs)"

    for key, r in section["paired"].items():
        text = (f"  {key:<26} paired over {r['rounds']} rounds (median of each round's "
                f"ratio, range): throughput {r['ops_per_s']:.2f}x "
                f"({r['ops_per_s_range'][0]:.2f}-{r['ops_per_s_range'][1]:.2f}), "
                f"p99 {r['p99_us']:.2f}x ({r['p99_us_range'][0]:.2f}-"
                f"{r['p99_us_range'][1]:.2f})")
        if r["cpu_us_per_op"]:
            text += f", CPU per request {cpu(r['cpu_us_per_op'])}"
        if r["proxy_cpu_us_per_op"]:
            text += f", the proxy's {cpu(r['proxy_cpu_us_per_op'])}"
        if r["load_cpu_us_per_op"]:
            text += f", the load's {cpu(r['load_cpu_us_per_op'])}"
        lines.append(text)
    return lines


def help_text(python: str, program: str) -> str:
    try:
        return subprocess.run([python, "-m", program, "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"`{python} -m {program} --help` failed: {e}") from e


def run(args: argparse.Namespace) -> int:
    scenarios = parse_list(args.scenarios, SCENARIOS, "--scenarios")
    loads = parse_list(args.loads, LOADS, "--loads")
    specs = load_specs(args, loads)
    for spec in specs.values():
        spec.check()
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    check_cpus(args.server_cpu, args.load_cpu)
    os.sched_setaffinity(0, {args.load_cpu})
    with contextlib.suppress(OSError):
        for cpu, busy in busy_cpus({args.server_cpu, args.load_cpu}).items():
            if busy > 0.10:
                print(f"warning: CPU {cpu} is already {busy:.0%} busy with other work; the "
                      "figures will be noisy (alternated rounds and medians help)",
                      file=sys.stderr)
    helptext = help_text(args.python, "memring.proxy")
    if "--backend-tls" not in helptext:
        raise BenchError("this memring proxy has no --backend-tls")
    has_listener = {"proxy": "--tls-cert" in helptext,
                    "backend": "--tls-cert" in help_text(args.python, "memring.backend")}
    for name, needs in CLIENT_TLS.items():
        missing = [f"the {program}" for program in needs if not has_listener[program]]
        if name in scenarios and missing:
            scenarios.remove(name)
            print(f"skipping {name}: {' and '.join(missing)} has no TLS listener (--tls) yet",
                  flush=True)
    cpu = args.server_cpu
    results = Results()
    line = ProgressLine()
    with tempfile.TemporaryDirectory(prefix="memring-tls-cost-") as tmpdir, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        ca = CertificateAuthority.create(tmp / "ca")
        server_cred, proxy_cred, load_cred = (ca.issue(n) for n in ("server", "proxy", "load"))
        tls_o = (f"ssl_chain_cert={server_cred.cert},ssl_key={server_cred.key},"
                 f"ssl_ca_cert={ca.cert},ssl_verify_mode=2")
        load_tls = {"tls_ca": str(ca.cert), "tls_cert": str(load_cred.cert),
                    "tls_key": str(load_cred.key)}

        def memcached(name: str, tls: bool) -> Server:
            port = free_port()
            argv = server_argv("memcached", port, cpu, args.memory, args.python)
            if tls:
                argv += ["-Z", "-o", tls_o]
            probe = tls_probe(load_cred) if tls else ask_version
            server, version = stack.enter_context(spawned(name, argv, port, probe, "`version`"))
            server.version = version
            print(f"started {name} {version} on port {port}", flush=True)
            return server

        listener_tls = ["--tls", "--tls-cert", str(server_cred.cert), "--tls-key",
                        str(server_cred.key), "--tls-ca", str(ca.cert), "--tls-verify",
                        "require"]

        def backend(name: str, tls: bool) -> Server:
            port = free_port()
            argv = server_argv("backend", port, cpu, args.memory, args.python)
            if tls:
                argv += listener_tls
            probe = tls_probe(load_cred) if tls else ask_version
            server, version = stack.enter_context(spawned(name, argv, port, probe, "`version`"))
            server.version = version
            print(f"started {name} {version} on port {port}", flush=True)
            return server

        def proxy(name: str, backends: list[Server], flags: list[str]) -> tuple[int, Server]:
            port = free_port()
            argv = memring_argv(args.python, [b.port for b in backends], port,
                                tmp / f"{name}.toml", cpu, None) + flags
            if "--tls" in flags:  # its clients must show a certificate, the probe too
                server, _ = stack.enter_context(spawned(name, argv, port, tls_probe(load_cred),
                                                        "`version` over TLS"))
                stack.callback(stop_group, server)
                return port, server
            return port, stack.enter_context(launched(name, argv, port))

        needs_plain = {"memcached", "proxy"} & set(scenarios)
        needs_tls = {"memcached-tls", "proxy-tls", "proxy-tls-all"} & set(scenarios)
        plain = [memcached(f"memcached-{i + 1}", False) for i in range(2)] if needs_plain else []
        secure = [memcached(f"memcached-tls-{i + 1}", True) for i in range(2)] if needs_tls \
            else []
        backend_tls = ["--backend-tls", "--backend-tls-ca", str(ca.cert), "--backend-tls-cert",
                       str(proxy_cred.cert), "--backend-tls-key", str(proxy_cred.key)]
        endpoints: list[Endpoint] = []
        load_for: dict[str, dict[str, str]] = {}
        for name in scenarios:
            title = SCENARIOS[name]
            if name == "memcached":
                endpoints.append(Endpoint(name, title, plain[0].port, None, plain[:1]))
            elif name == "memcached-tls":
                endpoints.append(Endpoint(name, title, secure[0].port, None, secure[:1]))
                load_for[name] = load_tls
            elif name in ("backend", "backend-tls"):  # a memring backend alone
                tls = name == "backend-tls"
                node = backend(name, tls)
                endpoints.append(Endpoint(name, title, node.port, None, [node]))
                if tls:
                    load_for[name] = load_tls
            elif name == "proxy":
                port, server = proxy(name, plain, [])
                endpoints.append(Endpoint(name, title, port, server, plain))
            elif name == "proxy-tls":
                port, server = proxy(name, secure, backend_tls)
                endpoints.append(Endpoint(name, title, port, server, secure))
            elif name == "proxy-tls-all":  # the client link too: the proxy's own listener
                port, server = proxy(name, secure, backend_tls + listener_tls)
                endpoints.append(Endpoint(name, title, port, server, secure))
                load_for[name] = load_tls
            else:  # memring backends behind the proxy, plain or TLS on every link
                tls = name == "backends-tls"
                nodes = [backend(f"{name}-{i + 1}", tls) for i in range(2)]
                port, server = proxy(name, nodes, backend_tls + listener_tls if tls else [])
                endpoints.append(Endpoint(name, title, port, server, nodes))
                if tls:
                    load_for[name] = load_tls
        first = next(iter(specs.values()))
        for ep in endpoints:
            print(f"preloading {first.keys:,} keys through {ep.name}", flush=True)
            try:
                preload(HOST, ep.port, replace(first, **load_for.get(ep.name, {})))
            except LoadError as e:
                raise BenchError(f"{ep.name}: {e}") from e

        got: dict[str, dict[str, list[dict[str, Any]]]] = {ld: {} for ld in specs}
        for r in range(args.rounds):
            order = endpoints if r % 2 == 0 else endpoints[::-1]
            for load, spec in specs.items():
                for ep in order:
                    if ep.failed:
                        continue
                    label = f"round {r + 1}/{args.rounds} {load} {ep.name}"
                    summary = measure(ep, load, replace(spec, **load_for.get(ep.name, {})),
                                      label, line, results)
                    if summary is not None:
                        got[load].setdefault(ep.name, []).append(summary)
        sections: dict[str, Any] = {}
        for load, spec in specs.items():
            medians = {ep.name: median_summary(got[load][ep.name]) for ep in endpoints
                       if got[load].get(ep.name) and not ep.failed}
            sections[load] = {"title": load_title(load, spec), "spec": asdict(spec),
                              "keys_per_op": spec.keys_per_op, "median": medians,
                              "paired": paired_ratios(got[load])}
            add_ratios(sections[load], list(PAIRS))
        commands = {p.name: p.argv for ep in endpoints for p in ep.processes()}
        versions = {p.name: p.version for ep in endpoints for p in ep.processes() if p.version}

    print()
    md = []
    for section in sections.values():
        print(f"{section['title']} (median of {args.rounds} round(s)):")
        print("\n".join(table(section, SCENARIOS) + paired_lines(section)))
        print()
        md.append(markdown(section, SCENARIOS) + "\n\n" + "\n".join(paired_lines(section)))
    for p in results.problems:
        print(f"problem: {p}", file=sys.stderr)
    if args.json:
        doc = {
            "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "scenarios": {n: SCENARIOS[n] for n in scenarios},
            "server_cpu": cpu, "load_cpu": args.load_cpu, "rounds": args.rounds,
            "host": {"python": platform.python_version(), "machine": platform.machine(),
                     "cpu_model": cpu_model(), "cpus": os.cpu_count()},
            "versions": versions, "commands": commands, "loads": sections,
            "problems": [str(p) for p in results.problems], "markdown": "\n\n".join(md),
            "runs": results.runs,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    return 1 if results.problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Figures are medians over rounds; ratios are each TLS scenario / its plain twin.")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated scenarios (%(default)s)")
    parser.add_argument("--loads", default=",".join(LOADS),
                        help="comma-separated loads (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, alternating the scenario order (%(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--server-cpu", type=int, default=0,
                        help="CPU the servers and proxies are pinned to (%(default)s)")
    parser.add_argument("--load-cpu", type=int, default=1,
                        help="CPU the load processes are pinned to (%(default)s)")
    parser.add_argument("--memory", type=int, default=1024,
                        help="server memory limit in MB (%(default)s)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs `-m memring.proxy` (%(default)s)")
    add_load_arguments(parser)
    parser.set_defaults(multiget=10, duration=5.0, warmup=1.0)
    # the load's own TLS flags are set per scenario here
    return run_until_done(run, parser.parse_args(argv), "every process started here was stopped")


if __name__ == "__main__":
    sys.exit(main())
