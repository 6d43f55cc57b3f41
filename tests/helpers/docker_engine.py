"""A Docker engine for the compose test, and the images it runs, made without a registry.

`docker_engine()` installs Debian's docker.io, docker-compose and debootstrap when missing (as
root), starts `dockerd` when none answers and stops that one, by its PID, when the block ends
(also on failure); `base_images()` makes the offline python and etcd images once
(compose/offline/base-images.sh; the stamp is a label on the images, the hash of the
script that made them: images present with the current hash are kept); `memring_image()` builds memring's image from a wheelhouse built on the host (pip
inside a container reaches no package index here). Each step prints how long it took.
Debian's `/usr/bin/docker` is called by path: a newer CLI in /usr/local/bin shadows it and
lacks the classic builder's BuildKit switch of 20.10.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Debian's docker.io, which install_packages() installs when missing. Not looked up on PATH:
# this module is imported before the install, and on a fresh machine PATH then found only the
# newer CLI, whose BuildKit needs buildx (every compose test failed at `docker build`).
DOCKER = "/usr/bin/docker"
PACKAGES = ("docker.io", "docker-compose", "debootstrap")
PYTHON_IMAGE = "memring-offline/python:bookworm"
ETCD_IMAGE = "memring-offline/etcd:bookworm"
MEMRING_IMAGE = "memring:compose-test"
BASE_SCRIPT = ROOT / "compose" / "offline" / "base-images.sh"
STAMP_LABEL = "org.memring.base-images"
WHEELHOUSE = ROOT / "compose" / "wheelhouse"
DOCKERD_READY = 60.0  # seconds for a started dockerd to answer
DOCKERD_STOP = 30.0  # seconds for it to stop on SIGTERM before SIGKILL


class EngineError(Exception):
    """Docker could not be installed, started or made to build; the message says why."""


def step(name: str, started: float) -> None:
    print(f"[compose-test] {name}: {time.monotonic() - started:.1f}s", flush=True)


def run(argv: list[str], timeout: float = 600.0, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
    if done.returncode != 0:
        raise EngineError(f"{' '.join(argv)} exited {done.returncode}:\n"
                          f"{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return done


def install_packages() -> None:
    missing = [p for p in PACKAGES
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineError(f"missing Debian packages {missing}: run `make compose-test` as root")
    started = time.monotonic()
    policy = Path("/usr/sbin/policy-rc.d")  # install without starting the services
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", *missing],
            env={"DEBIAN_FRONTEND": "noninteractive"})
    finally:
        policy.unlink()
    step(f"installed {' '.join(missing)}", started)


def engine_answers() -> bool:
    return subprocess.run([DOCKER, "info"], capture_output=True, timeout=30).returncode == 0


@contextmanager
def docker_engine() -> Iterator[None]:
    """A running Docker engine; one this started is stopped (by PID) at the end."""
    install_packages()
    if engine_answers():
        yield
        return
    started = time.monotonic()
    log = open("/tmp/memring-compose-test-dockerd.log", "ab")  # noqa: SIM115 (closed below)
    dockerd = subprocess.Popen(["/usr/sbin/dockerd"], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + DOCKERD_READY
        while not engine_answers():
            if dockerd.poll() is not None or time.monotonic() > deadline:
                raise EngineError("dockerd did not start: see "
                                  "/tmp/memring-compose-test-dockerd.log")
            time.sleep(0.5)
        step(f"started dockerd (pid {dockerd.pid})", started)
        yield
    finally:
        stopping = time.monotonic()
        dockerd.send_signal(signal.SIGTERM)
        try:
            dockerd.wait(DOCKERD_STOP)
        except subprocess.TimeoutExpired:
            dockerd.kill()
            dockerd.wait(10)
        log.close()
        step(f"stopped dockerd (pid {dockerd.pid})", stopping)


def image_stamp(tag: str) -> str | None:
    """The image's stamp label; None when the image is missing."""
    done = subprocess.run([DOCKER, "image", "inspect", "--format",
                           f'{{{{index .Config.Labels "{STAMP_LABEL}"}}}}', tag],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


def base_images() -> None:
    """The offline python and etcd images, remade when the script changed or one is gone."""
    digest = hashlib.sha256(BASE_SCRIPT.read_bytes()).hexdigest()
    if image_stamp(PYTHON_IMAGE) == digest and image_stamp(ETCD_IMAGE) == digest:
        print("[compose-test] base images: cached (stamp)", flush=True)
        return
    started = time.monotonic()
    run(["sh", str(BASE_SCRIPT), PYTHON_IMAGE, ETCD_IMAGE], env={"DOCKER": DOCKER})
    assert image_stamp(PYTHON_IMAGE) == digest, "the base images carry no stamp"
    step("base images (debootstrap + docker import)", started)


def memring_image() -> None:
    """memring's image from compose/Dockerfile with wheels built here (no index inside)."""
    started = time.monotonic()
    for old in WHEELHOUSE.glob("*.whl"):
        old.unlink()
    run([sys.executable, "-m", "pip", "wheel", "--quiet", str(ROOT), "-w", str(WHEELHOUSE)])
    step("wheelhouse (pip wheel on the host)", started)
    started = time.monotonic()
    run([DOCKER, "build", "--quiet", "-f", "compose/Dockerfile", "--build-arg",
         f"PYTHON_IMAGE={PYTHON_IMAGE}", "-t", MEMRING_IMAGE, str(ROOT)],
        env={"DOCKER_BUILDKIT": "1"})
    step("memring image (docker build)", started)


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`) where the CLI has it, else Debian's docker-compose 1.29."""
    for candidate in (["docker", "compose"], [DOCKER, "compose"]):
        if shutil.which(candidate[0]) and subprocess.run(
                [*candidate, "version"], capture_output=True, timeout=30).returncode == 0:
            return candidate
    found = shutil.which("docker-compose")
    if found is None:
        raise EngineError("neither `docker compose` nor docker-compose is installed")
    return [found]
