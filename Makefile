# memring's entry points. `make run` and `make test` do all the set-up they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES ?= memcached nutcracker etcd-server openssl libmemcached-tools $(BUILD_PACKAGES)
# What the mypyc build needs: a C compiler, and Debian's headers for a Debian Python that lacks
# them (a pyenv or python.org Python ships its own). Evaluated only when debian-deps runs.
BUILD_PACKAGES = gcc $(shell $(PYTHON) -c 'import os, sys, sysconfig; \
  headers = os.path.join(sysconfig.get_paths()["include"], "Python.h"); \
  print("" if os.path.exists(headers) or not sys.base_prefix.startswith("/usr") \
        else "python%d.%d-dev" % sys.version_info[:2])')

.PHONY: run test compose-test lint unit bench bench-cluster tls-cost hostile failover fuzz jepsen client-suites memory idle-cost proxy-topology many-failovers debian-deps venv clean compiled

# The hot modules compiled with mypyc (issue 16) unless COMPILE=no; the build is redone when a
# listed source is newer than the last one (memring/extension_guard.py keeps a stale build from
# shadowing an edited .py in between; MEMRING_PURE_PYTHON=1 ignores the build at run time).
COMPILE ?= yes
HOT_MODULES := $(shell sed -e '/^\#/d' -e '/^$$/d' build_support/hot_modules.txt)
COMPILED_STAMP := $(VENV)/.compiled

venv: $(STAMP) $(if $(filter yes,$(COMPILE)),$(COMPILED_STAMP))

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The modules in build_support/hot_modules.txt compiled in place with mypyc (~20-60 s; skipped
# when memring/mypyc_build.json still matches every source). No compiler, no Python headers or
# a failed build: one line on stderr, the pure-Python modules stay, exit 0. `make clean` removes it.
$(COMPILED_STAMP): $(STAMP) build_support/hot_modules.txt build_support/compile_hot_modules.py $(HOT_MODULES)
	$(BIN)/python build_support/compile_hot_modules.py
	@touch $@

# The same now, whatever the stamp says (a no-op while the manifest matches every source).
compiled: $(STAMP)
	$(BIN)/python build_support/compile_hot_modules.py
	@touch $(COMPILED_STAMP)

# Debian packages the tests and benchmarks use as oracles. Installed without
# starting their services (policy-rc.d exits 101); tests start their own.
debian-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing; run 'make debian-deps' as root" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; rc=$$?; \
	  rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

# A local cluster: etcd, 3 shards x 2 replicas, a proxy on 127.0.0.1:11211; Ctrl-C stops all.
run: debian-deps venv
	$(BIN)/memring up --port 11211

lint: venv
	$(BIN)/ruff check memring protocol netio cluster backend proxy tests bench compose build_support
	$(BIN)/mypy
	$(BIN)/mypy --strict compose/healthcheck.py compose/secure_init.py compose/rolling_restart.py build_support/compile_hot_modules.py
	$(if $(filter yes,$(COMPILE)),$(BIN)/python build_support/compile_hot_modules.py --verify)

test: debian-deps venv lint
	$(BIN)/python -m pytest -q --durations=15 --ignore=tests/compose
	$(MAKE) compose-test

# The compose cluster under a real Docker engine (tests/compose, ~3.5 minutes warm; the first
# run also installs docker.io, docker-compose and debootstrap and makes the offline base
# images, ~1 minute more). Starts dockerd if none runs and stops that one at the end.
compose-test: venv
	$(BIN)/python -m pytest -q -s -p no:cacheprovider -m compose tests/compose

unit: venv
	$(BIN)/python -m pytest -q -m unit

# Every benchmark under the shared lock (two never overlap on this machine); the load
# generators are both the Python one and libmemcached's memaslap (--loadgen both).
BENCH_LOCK = flock /tmp/memring-bench.lock

bench: venv debian-deps
	$(BENCH_LOCK) $(BIN)/python bench/backend_vs_memcached.py --loadgen both
	$(BENCH_LOCK) $(BIN)/python bench/proxy_bench.py --loadgen both
	$(BENCH_LOCK) $(BIN)/python bench/binary_vs_text.py
	$(BENCH_LOCK) $(BIN)/python bench/cluster_e2e.py
	$(BENCH_LOCK) $(BIN)/python bench/replication_cost.py
	$(BENCH_LOCK) $(BIN)/python bench/memory.py

# The whole cluster end to end (issue 16): memring up (3 shards x 2, sync and async) beside
# twemproxy -> 3 memcached, all servers on CPU 0, the load on CPU 1 (~2.5 min; --quick ~1 min).
bench-cluster: venv debian-deps
	$(BENCH_LOCK) $(BIN)/python bench/cluster_e2e.py $(BENCH_CLUSTER_ARGS)

# Memory per item and a full cache's RSS, memring backend beside memcached -t 1 (issue 17; ~3 min).
memory: venv debian-deps
	$(BIN)/python bench/memory.py

# What TLS costs beside the plain path in one run: memcached -Z vs memcached, the proxy with
# TLS to its backends vs plain (and TLS on the client link too, once the proxy has a TLS
# listener); alternated rounds, medians, ratios (~5 minutes). TLS_COST_ARGS adds flags.
tls-cost: venv debian-deps
	$(BIN)/python bench/tls_cost.py $(TLS_COST_ARGS)

# What an idle `memring up` cluster costs: time to ready, CPU per process class over 10 s of
# idleness, and (--strace follower) one follower's syscalls; under the bench lock (~1 minute).
IDLE_COST_ARGS ?= --shards 24 --replicas 2 --strace follower
idle-cost: venv debian-deps
	flock /tmp/memring-bench.lock $(BIN)/python bench/idle_cost.py $(IDLE_COST_ARGS)

# Hostile clients (repeated-key gets, clients that never read, half-sent lines, idle
# connections) against memcached and the proxy: peak RSS and others' latency (a few minutes).
hostile: venv debian-deps
	$(BIN)/python bench/hostile_clients.py

# Failover and a rolling restart under load (real etcd, backends and a proxy; a few minutes).
failover: venv debian-deps
	$(BIN)/python bench/failover.py --fault kill
	$(BIN)/python bench/failover.py --fault stop
	$(BIN)/python bench/rolling_restart.py

# The proxy at size (issue 18): a 256 shards x 3 topology from a static file and from etcd:
# load, change and lookup costs, and proxy processes of this tree beside BASE (a checkout of
# the code before, e.g. `git worktree add --detach ../base main`) when given (~1 min).
BASE ?=
proxy-topology: venv debian-deps
	flock /tmp/memring-bench.lock $(BIN)/python bench/proxy_topology.py $(if $(BASE),--base $(BASE)) \
	  --json docs/bench/proxy-topology.json

# Many failovers at once (issue 18): 24 shards x 2, a quarter of the leaders killed together
# with etcd's leader paused; per-shard time to the first write, 0 lost; etcd's request rates
# (~2 min; MANY_FAILOVERS_ARGS="--quick" for 8 shards).
many-failovers: venv debian-deps
	flock /tmp/memring-bench.lock $(BIN)/python bench/many_failovers.py $(MANY_FAILOVERS_ARGS)

# The fuzzer: 100,000 grammar-made cases against memcached, differential then isolation
# (stops by itself after FUZZ_SECONDS). FUZZ_ARGS adds flags, e.g. FUZZ_ARGS="--seed 7".
FUZZ_CASES ?= 100000
FUZZ_SECONDS ?= 1800
fuzz: venv debian-deps
	$(BIN)/python bench/fuzz.py --cases $(FUZZ_CASES) --max-seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

# Jepsen-style runs: every fault type (and all mixed) JEPSEN_RUNS times for JEPSEN_SECONDS each
# against 3 etcd members + 2 shards x 3 sync replicas + 2 proxies; prints the table of lost
# writes, dirty reads, linearizability violations and unclean elections (~40 minutes).
JEPSEN_RUNS ?= 2
JEPSEN_SECONDS ?= 120
jepsen: venv debian-deps
	$(BIN)/python bench/jepsen.py --runs $(JEPSEN_RUNS) --seconds $(JEPSEN_SECONDS) $(JEPSEN_ARGS)

# Client libraries' own test suites (pylibmc ASCII and binary, its doctests, python-memcached,
# aiomcache, libmemcached's memccapable and CLI tools) against memcached 1.6.18, a backend and a
# proxy over two backends: passed/total per suite and why each memring failure failed. Not part
# of `make test`: it downloads the suites' sdists from PyPI into .cache/ (~3 min the first time).
client-suites: venv debian-deps
	@$(MAKE) --no-print-directory debian-deps DEBIAN_PACKAGES=libmemcached-dev
	$(BIN)/python bench/client_suites.py $(CLIENT_SUITES_ARGS)

clean:
	@test ! -x $(BIN)/python || $(BIN)/python build_support/compile_hot_modules.py --clean
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
