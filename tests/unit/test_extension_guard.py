"""The stale-build guard (memring/extension_guard.py): an extension loads only while the build
manifest vouches for every source it was compiled from.

Each case imports in a fresh interpreter (a subprocess), since an import is once per process.
The first cases need no compiler: a "fake extension" of garbage bytes fails to load if the
import system ever picks it, so the outcome shows which file was chosen. The last ones use the
real mypyc build of this tree, and skip when there is none (no compiler, or COMPILE=no).
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memring.extension_guard import (
    MANIFEST_NAME,
    PURE_PYTHON_VARIABLE,
    BuildManifest,
    source_digest,
    stale_reason,
)

pytestmark = pytest.mark.unit

EXTENSION_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
PACKAGE_FOLDER = Path(__file__).resolve().parents[2] / "memring"
GUARDED_INIT = """\
from pathlib import Path
from memring import extension_guard
extension_guard.install(__name__, Path(__file__).resolve().parent)
"""


def run_python(code: str, path: Path, pure: bool = False) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != PURE_PYTHON_VARIABLE}
    environment["PYTHONPATH"] = str(path)
    if pure:
        environment[PURE_PYTHON_VARIABLE] = "1"
    return subprocess.run([sys.executable, "-c", code], cwd=path, env=environment,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def fake_build(tmp_path: Path) -> Path:
    """A package `guarded` with value.py beside a garbage "extension", and a manifest vouching for it."""
    package = tmp_path / "guarded"
    package.mkdir()
    (package / "__init__.py").write_text(GUARDED_INIT)
    (package / "value.py").write_text('ORIGIN = "source"\n')
    (package / f"value{EXTENSION_SUFFIX}").write_bytes(b"not an ELF object")
    (package / f"hot__mypyc{EXTENSION_SUFFIX}").write_bytes(b"not an ELF object either")
    BuildManifest(f"hot__mypyc{EXTENSION_SUFFIX}",
                  {"guarded.value": source_digest(package / "value.py")}).write(package / MANIFEST_NAME)
    return tmp_path


IMPORT_VALUE = "import guarded.value as v; print(v.ORIGIN)"


def test_a_vouched_extension_is_what_imports(fake_build: Path) -> None:
    result = run_python(IMPORT_VALUE, fake_build)
    assert result.returncode != 0
    assert "ImportError" in result.stderr and f"value{EXTENSION_SUFFIX}" in result.stderr


def test_an_edited_source_is_imported_instead_of_its_stale_extension(fake_build: Path) -> None:
    (fake_build / "guarded" / "value.py").write_text('ORIGIN = "edited source"\n')
    result = run_python(IMPORT_VALUE + "; import guarded.value", fake_build)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "edited source\n"
    # Said once, naming the file that changed.
    assert result.stderr.count("compiled modules not used") == 1
    assert "value.py changed since the build" in result.stderr


@pytest.mark.parametrize("damage", ["no manifest", "no runtime", "unlisted module"])
def test_an_extension_the_manifest_does_not_vouch_for_never_imports(fake_build: Path, damage: str) -> None:
    package = fake_build / "guarded"
    if damage == "no manifest":
        (package / MANIFEST_NAME).unlink()
    elif damage == "no runtime":
        (package / f"hot__mypyc{EXTENSION_SUFFIX}").unlink()
    else:
        BuildManifest(f"hot__mypyc{EXTENSION_SUFFIX}", {}).write(package / MANIFEST_NAME)
    result = run_python(IMPORT_VALUE, fake_build)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "source\n"
    said = ("guarded.value: an extension the build manifest does not list" if damage == "unlisted module"
            else "compiled modules not used")
    assert said in result.stderr


def test_pure_python_variable_ignores_a_fresh_build_silently(fake_build: Path) -> None:
    result = run_python(IMPORT_VALUE, fake_build, pure=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "source\n", "")


def test_one_stale_module_turns_off_the_whole_group(fake_build: Path) -> None:
    """mypyc's modules of a group call each other natively: one edit means none may load."""
    package = fake_build / "guarded"
    (package / "other.py").write_text('ORIGIN = "other source"\n')
    (package / f"other{EXTENSION_SUFFIX}").write_bytes(b"garbage")
    manifest = BuildManifest.read(package / MANIFEST_NAME)
    assert manifest is not None
    BuildManifest(manifest.runtime, {**manifest.sources,
                                     "guarded.other": source_digest(package / "other.py")}
                  ).write(package / MANIFEST_NAME)
    assert run_python("import guarded.other", fake_build).returncode != 0  # fresh: the extension
    (package / "value.py").write_text('ORIGIN = "edited source"\n')
    result = run_python("import guarded.other as o; print(o.ORIGIN)", fake_build)
    assert (result.returncode, result.stdout) == (0, "other source\n"), result.stderr


# The real build of this tree (make venv / make compiled).
BUILT = stale_reason(BuildManifest.read(PACKAGE_FOLDER / MANIFEST_NAME), PACKAGE_FOLDER, "memring")
needs_build = pytest.mark.skipif(BUILT is not None, reason=f"no fresh mypyc build ({BUILT}): make compiled")
WHERE_FROM = ("import memring.protocol.request_parser as p, memring.backend.store as s;"
              " print(p.__file__); print(s.__file__)")


@needs_build
def test_a_fresh_build_is_what_imports(tmp_path: Path) -> None:
    compiled = run_python(WHERE_FROM, tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    assert [Path(line).name for line in compiled.stdout.split()] == [
        f"request_parser{EXTENSION_SUFFIX}", f"store{EXTENSION_SUFFIX}"]
    assert compiled.stderr == ""
    pure = run_python(WHERE_FROM, tmp_path, pure=True)
    assert [Path(line).name for line in pure.stdout.split()] == ["request_parser.py", "store.py"]


@needs_build
def test_an_edit_to_a_copy_of_the_real_build_loads_every_module_from_source(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE_FOLDER, tmp_path / "memring", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    store = tmp_path / "memring" / "backend" / "store.py"
    store.write_text(store.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    code = (WHERE_FROM + "; print(s.EDITED_AFTER_THE_BUILD);"
            " from memring.protocol import RequestParser; r = RequestParser();"
            " r.receive_data(b'get k\\r\\n'); print(type(r.next_event()).__name__)")
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert [Path(line).name for line in lines[:2]] == ["request_parser.py", "store.py"]
    assert Path(lines[0]).is_relative_to(tmp_path)
    assert lines[2:] == ["True", "Get"]
    assert "backend/store.py changed since the build" in result.stderr
