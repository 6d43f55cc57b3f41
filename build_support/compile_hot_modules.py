"""Compile memring's hot modules in place with mypyc (issue 16), or remove them.

Theory of operation: mypyc turns each strictly typed module listed in hot_modules.txt into a
C extension that sits beside its .py file (protocol/request_parser.cpython-311-x86_64-linux-gnu.so
imports as memring.protocol.request_parser, since memring/protocol links to protocol/), with
one shared runtime library for the group (memring/hot__mypyc...so). Python prefers an extension
to its .py, so the build also writes memring/mypyc_build.json, the sha256 of every source it
compiled: memring/extension_guard.py loads the .py files instead as soon as one no longer
matches. `make venv` runs this when a listed source is newer than the last run; a build whose
manifest still matches its sources is skipped. Nothing is fetched: mypyc ships with the dev
dependency mypy. A missing compiler or a failed build prints one line and exits 0, leaving the
.py modules in use, so `make venv` never fails because of it. `--clean` removes it all.

The codec and the store are synchronous; the backend's request path (the ReadyLoop, the
Conversation) has coroutines too, which mypyc compiles into objects trio runs as any
coroutine (docs/benchmarks.md "Round three: backend"); the profile that chose
them is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

from memring.extension_guard import (
    MANIFEST_NAME,
    BuildManifest,
    module_source,
    source_digest,
    stale_reason,
)

REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGE = "memring"
PACKAGE_FOLDER = REPOSITORY / PACKAGE
MODULE_LIST = Path(__file__).resolve().parent / "hot_modules.txt"
# mypyc's shared library for the group, inside the package (memring/hot__mypyc...so): its
# default name is a hash at the top level, which no installed path reaches.
GROUP_NAME = f"{PACKAGE}.hot"
EXTENSION_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
RUNTIME_LIBRARY = f"hot__mypyc{EXTENSION_SUFFIX}"

# Where the build leaves its C sources and objects (git-ignored, removed by --clean).
BUILD_FOLDER = REPOSITORY / "build" / "mypyc"


def hot_modules() -> list[str]:
    """The listed modules' dotted names (memring.protocol.request_parser, ...)."""
    lines = (line.strip() for line in MODULE_LIST.read_text().splitlines())
    paths = [line for line in lines if line and not line.startswith("#")]
    return [path.removesuffix(".py").replace("/", ".") for path in paths]


def compiled_extensions() -> list[Path]:
    """The extension files in the package's source folders (and mypyc's shared runtime)."""
    folders = [PACKAGE_FOLDER, *(PACKAGE_FOLDER / name for name in
                                 ("protocol", "netio", "cluster", "backend", "proxy"))]
    return [path for folder in folders for path in sorted(folder.glob(f"*{EXTENSION_SUFFIX}"))]


def clean() -> None:
    (PACKAGE_FOLDER / MANIFEST_NAME).unlink(missing_ok=True)
    for path in compiled_extensions():
        path.unlink()
    shutil.rmtree(BUILD_FOLDER, ignore_errors=True)


def up_to_date(modules: list[str]) -> bool:
    """The manifest lists exactly these modules, each source unchanged and its extension there."""
    manifest = BuildManifest.read(PACKAGE_FOLDER / MANIFEST_NAME)
    return (manifest is not None and sorted(manifest.sources) == sorted(modules)
            and stale_reason(manifest, PACKAGE_FOLDER, PACKAGE) is None
            and all(module_source(PACKAGE_FOLDER, PACKAGE, module)
                    .with_suffix(EXTENSION_SUFFIX).is_file() for module in modules))


def cannot_compile() -> str | None:
    """Why this machine cannot build the extensions (no compiler, headers or mypyc), or None."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return f"no Python headers ({headers})"
    try:
        import mypyc.build  # noqa: F401
        import setuptools  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as error:
        return f"mypyc unavailable ({error})"
    return None


def build(modules: list[str]) -> bool:
    """Compile `modules` in place and write the manifest; False (one line on stderr) when it cannot."""
    reason = cannot_compile()
    if reason is not None:
        print(f"memring: {reason}; the hot modules stay pure Python", file=sys.stderr)
        return False
    from mypyc.build import mypycify
    from setuptools import Distribution
    clean()  # no extension of an earlier build outlives this one
    sources = {module: module_source(PACKAGE_FOLDER, PACKAGE, module) for module in modules}
    # Hashed before compiling: an edit made during the build leaves the manifest stale, not wrong.
    manifest = BuildManifest(RUNTIME_LIBRARY, {module: source_digest(path) for module, path in sources.items()})
    try:
        extensions = mypycify([str(path) for path in sources.values()],
                              target_dir=str(BUILD_FOLDER), group_name=GROUP_NAME)
        # A bare Distribution: setup() would read pyproject.toml, which this step does not need.
        distribution = Distribution({"ext_modules": extensions, "name": "memring-hot-modules"})
        distribution.script_args = ["build_ext", "--inplace", "--build-temp", str(BUILD_FOLDER / "temp"),
                                    "--build-lib", str(BUILD_FOLDER / "lib")]
        distribution.parse_command_line()
        distribution.run_commands()
    except (Exception, SystemExit) as error:  # a failed build leaves the pure-Python modules
        clean()
        print(f"memring: mypyc build failed ({error!r}); the hot modules stay pure Python", file=sys.stderr)
        return False
    manifest.write(PACKAGE_FOLDER / MANIFEST_NAME)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled extensions")
    parser.add_argument("--force", action="store_true", help="rebuild even if the build is up to date")
    parser.add_argument("--verify", action="store_true",
                        help="exit 1 if this machine can compile but the build is missing or stale")
    arguments = parser.parse_args()
    if arguments.clean:
        clean()
        return
    modules = hot_modules()
    if arguments.verify:
        sys.exit(verify(modules))
    if not arguments.force and up_to_date(modules):
        print(f"memring: the {len(modules)} compiled modules are up to date")
        return
    started = time.monotonic()
    if build(modules):
        print(f"memring: {len(modules)} modules compiled with mypyc in {time.monotonic() - started:.0f} s")


def verify(modules: list[str]) -> int:
    """`make lint`: a build that mypyc refused falls back to pure Python without failing `make
    venv` (by design, for machines without a compiler), so a module edit mypyc cannot compile
    would otherwise pass every test uncompiled and slow (round seven: one did, unnoticed)."""
    reason = cannot_compile()
    if reason is not None:
        print(f"memring: {reason}: the hot modules run as pure Python here")
        return 0
    if up_to_date(modules):
        print(f"memring: the {len(modules)} compiled modules are up to date")
        return 0
    print("memring: the hot modules are not compiled although this machine can compile them: "
          "run `make venv` and read mypyc's error above its 'mypyc build failed' line", file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
