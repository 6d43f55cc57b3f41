"""The guard that keeps a stale mypyc build from shadowing edited source (issue 16).

Theory of operation: `make venv` compiles memring's hot modules in place
(build_support/compile_hot_modules.py), leaving `x.cpython-311-...so` beside `x.py`, and
Python's path finder prefers the extension: without a guard, a .so built before an edit
would run instead of the edited .py. The build writes a manifest (BuildManifest, beside this
file) naming each compiled module with the sha256 of the source it was compiled from, and
mypyc's shared runtime library. ExtensionGuard, first on sys.meta_path (memring/__init__.py
installs it), lets the extensions load only while every listed source still hashes as built;
otherwise it hands the import system the .py, and says why once on stderr. All or none: the
modules of one mypyc group call each other natively, and importing one compiled module brings
in its group's compiled siblings even where their .so files are gone (measured: a compiled
request_parser with numeric's .so deleted still ran the compiled numeric), so one edited module
turns the whole build off. An extension the manifest does not vouch for (no manifest, an older
build) never loads either. MEMRING_PURE_PYTHON=1 turns them all off without a word (tests run
both ways; subprocesses inherit it).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PURE_PYTHON_VARIABLE = "MEMRING_PURE_PYTHON"
MANIFEST_NAME = "mypyc_build.json"


def source_digest(source: Path) -> str:
    """The sha256 (hex) of a module's source bytes, what the manifest records and checks."""
    import hashlib  # here: OpenSSL's load is paid only where an extension is there to check

    return hashlib.sha256(source.read_bytes()).hexdigest()


@dataclass(frozen=True)
class BuildManifest:
    """What one mypyc build compiled: module name -> sha256 of its .py, and the runtime library."""

    runtime: str  # mypyc's shared library for the group, a file name beside the manifest
    sources: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> BuildManifest | None:
        """The manifest at `path`, or None when it is missing or not one this guard wrote."""
        try:
            document = json.loads(path.read_text())
            runtime, sources = document["runtime"], document["sources"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(runtime, str) or not isinstance(sources, dict):
            return None
        return cls(runtime, {str(name): str(digest) for name, digest in sources.items()})

    def write(self, path: Path) -> None:
        document = {"runtime": self.runtime, "sources": dict(sorted(self.sources.items()))}
        path.write_text(json.dumps(document, indent=1) + "\n")


def module_source(package_folder: Path, package: str, module: str) -> Path:
    """Where `package.a.b`'s .py lives under the package's folder (links followed by the OS)."""
    relative = module.removeprefix(package + ".").split(".")
    return package_folder.joinpath(*relative).with_suffix(".py")


def stale_reason(manifest: BuildManifest | None, package_folder: Path, package: str) -> str | None:
    """Why the package's compiled modules must not load (None: the build matches its sources)."""
    if manifest is None:
        return f"no build manifest ({MANIFEST_NAME})"
    if not (package_folder / manifest.runtime).is_file():
        return f"mypyc's runtime library {manifest.runtime} is missing"
    for module, digest in manifest.sources.items():
        source = module_source(package_folder, package, module)
        try:
            if source_digest(source) != digest:
                return f"{source.relative_to(package_folder)} changed since the build"
        except OSError:
            return f"{source.relative_to(package_folder)} is unreadable"
    return None


class ExtensionGuard:
    """Loads a package's module from its .py whenever the extension beside it is not vouched for
    (a meta path finder: sys.meta_path asks it before the path finders)."""

    def __init__(self, package: str, package_folder: Path) -> None:
        self.package = package
        self._folder = package_folder
        self._verdict: tuple[str | None, frozenset[str]] | None = None  # (stale reason, vouched)
        self._told = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is None or not fullname.startswith(self.package + "."):
            return None
        leaf = fullname.rpartition(".")[2]
        for folder in map(Path, path):
            source = folder / f"{leaf}.py"
            if not source.is_file():
                continue
            if not any((folder / f"{leaf}{suffix}").exists()
                       for suffix in importlib.machinery.EXTENSION_SUFFIXES):
                return None  # nothing compiled here: the ordinary finders take it
            if self._extension_allowed(fullname):
                return None
            return importlib.util.spec_from_file_location(fullname, source)
        return None

    def _extension_allowed(self, module: str) -> bool:
        if self._verdict is None:
            self._verdict = self._judge()
        reason, vouched = self._verdict
        if reason is None and module in vouched:
            return True
        if reason is None:  # a leftover of another build: only this module is affected
            self._tell(f"{module}: an extension the build manifest does not list, its .py instead"
                       " (`make clean` removes it)")
        elif reason != PURE_PYTHON_VARIABLE:
            self._tell(f"compiled modules not used, pure Python instead ({reason};"
                       " `make compiled` rebuilds)")
        return False

    def _tell(self, message: str) -> None:
        if not self._told:  # once per process
            self._told = True
            print(f"{self.package}: {message}", file=sys.stderr)

    def _judge(self) -> tuple[str | None, frozenset[str]]:
        if os.environ.get(PURE_PYTHON_VARIABLE, "") not in ("", "0"):
            return PURE_PYTHON_VARIABLE, frozenset()
        manifest = BuildManifest.read(self._folder / MANIFEST_NAME)
        return stale_reason(manifest, self._folder, self.package), frozenset(manifest.sources if manifest is not None else ())


def install(package: str, package_folder: Path) -> None:
    """Put the package's guard first on sys.meta_path (once), before any of its modules import."""
    if not any(isinstance(finder, ExtensionGuard) and finder.package == package
               for finder in sys.meta_path):
        sys.meta_path.insert(0, ExtensionGuard(package, package_folder))
