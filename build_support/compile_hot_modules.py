"""Compile memring's hot synchronous modules in place with mypyc (issue 16), or remove them.

Theory of operation: mypyc turns each strictly typed module below into a C extension that
sits beside its .py file (protocol/request_parser.cpython-311-x86_64-linux-gnu.so imports
as memring.protocol.request_parser, since memring/protocol links to protocol/). Python
prefers the extension when both exist; deleting the .so files (`--clean`) brings back the
pure-Python modules unchanged. Nothing is fetched: mypyc ships with the dev dependency
mypy. A missing compiler or a failed build prints one line and exits 0, leaving the .py
modules in use, so `make venv` never fails because of it.

Only synchronous modules are listed (trio code stays interpreted); the profile that chose
them is in docs/benchmarks.md "Compiled hot modules (mypyc)".
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

# Paths under memring/ so mypyc names them memring.protocol.X, memring.backend.X.
HOT_MODULES = (
    "memring/protocol/request_parser.py",
    "memring/protocol/meta_flags.py",
    "memring/protocol/numeric.py",
    "memring/protocol/receive_buffer.py",
    "memring/protocol/requests.py",
    "memring/protocol/sentinels.py",
    "memring/protocol/sizes.py",
    "memring/backend/item_record.py",
    "memring/backend/store.py",
)

# Where the build leaves its C sources and objects (git-ignored, removed by --clean).
BUILD_FOLDER = REPOSITORY / "build" / "mypyc"


def compiled_extensions() -> list[Path]:
    """The extension files a build left in the source folders (and mypyc's shared runtime)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    found: list[Path] = []
    for folder in (REPOSITORY / name for name in ("memring", "protocol", "backend")):
        found.extend(sorted(folder.glob(f"*{suffix}")))
    return found


def clean() -> None:
    for path in compiled_extensions():
        path.unlink()
    shutil.rmtree(BUILD_FOLDER, ignore_errors=True)


def build() -> bool:
    """Compile HOT_MODULES in place; False (with one line on stderr) when it cannot."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        print(f"memring: no C compiler ({compiler}); the hot modules stay pure Python", file=sys.stderr)
        return False
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution  # type: ignore[import-untyped]
    except ImportError as error:
        print(f"memring: mypyc unavailable ({error}); the hot modules stay pure Python", file=sys.stderr)
        return False
    # A bare Distribution: setup() would read pyproject.toml, which this step does not need.
    try:
        extensions = mypycify(
            [str(REPOSITORY / path) for path in HOT_MODULES],
            target_dir=str(BUILD_FOLDER),
            # One shared library for the group, inside the package (memring/hot__mypyc.so):
            # mypyc's default name is a hash at the top level, which no installed path reaches.
            group_name="memring.hot",
        )
        distribution = Distribution({"ext_modules": extensions, "name": "memring-hot-modules"})
        distribution.script_args = ["build_ext", "--inplace", "--build-temp", str(BUILD_FOLDER / "temp"),
                                    "--build-lib", str(BUILD_FOLDER / "lib")]
        distribution.parse_command_line()
        distribution.run_commands()
    except (Exception, SystemExit) as error:  # a failed build leaves the pure-Python modules
        clean()
        print(f"memring: mypyc build failed ({error!r}); the hot modules stay pure Python", file=sys.stderr)
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled extensions")
    arguments = parser.parse_args()
    if arguments.clean:
        clean()
        return
    if build():
        print(f"memring: {len(compiled_extensions())} compiled extensions built with mypyc")


if __name__ == "__main__":
    main()
