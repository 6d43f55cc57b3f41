"""Runs pylibmc's doctests one example at a time: its installed modules' docstrings and,
given its sdist's docs/ folder as an argument, the examples in its *.rst pages.

pylibmc's own setup ran them with nose's doctest plugin; here each example is one test,
so a failure names the example. Prints one JSON object per example on stdout:
``{"name": ..., "passed": ..., "reason": ...}``. The examples that need a server get it
from ``MEMCACHED_HOST``/``MEMCACHED_PORT`` (``pylibmc.test.make_test_client``); the
pages' ``pylibmc.Client(["127.0.0.1"], ...)`` is given that address instead.
"""

import doctest
import importlib
import json
import os
import pkgutil
import sys
import types
from pathlib import Path
from typing import Any

import pylibmc


class ExampleRecorder(doctest.DocTestRunner):
    """A doctest runner that prints each example's outcome instead of a report."""

    def __init__(self, stream: Any, **options: Any) -> None:
        super().__init__(**options)
        self.stream = stream  # doctest swaps sys.stdout while an example runs

    def _emit(self, test: doctest.DocTest, example: doctest.Example, passed: bool,
              reason: str) -> None:
        source = example.source.strip().splitlines()[0]
        name = f"{test.name}:{(test.lineno or 0) + example.lineno + 1} {source}"
        self.stream.write(json.dumps({"name": name, "passed": passed, "reason": reason}) + "\n")
        self.stream.flush()

    def report_start(self, out: Any, test: doctest.DocTest, example: doctest.Example) -> None:
        pass

    def report_success(self, out: Any, test: doctest.DocTest, example: doctest.Example,
                       got: str) -> None:
        self._emit(test, example, True, "")

    def report_failure(self, out: Any, test: doctest.DocTest, example: doctest.Example,
                       got: str) -> None:
        want = example.want.strip().splitlines()[:1] or [""]
        seen = got.strip().splitlines()[:1] or [""]
        self._emit(test, example, False, f"expected {want[0]!r}, got {seen[0]!r}")

    def report_unexpected_exception(self, out: Any, test: doctest.DocTest,
                                    example: doctest.Example, exc_info: Any) -> None:
        error = exc_info[1]
        self._emit(test, example, False, f"{type(error).__name__}: {error}".splitlines()[0])


def modules() -> list[types.ModuleType]:
    found = [pylibmc]
    for info in pkgutil.walk_packages(pylibmc.__path__, "pylibmc."):
        found.append(importlib.import_module(info.name))
    return found


def page_tests(docs: Path) -> list[doctest.DocTest]:
    server = f'"{os.environ["MEMCACHED_HOST"]}:{os.environ["MEMCACHED_PORT"]}"'
    parser = doctest.DocTestParser()
    found = []
    for page in sorted(docs.glob("*.rst")):
        text = page.read_text().replace('"127.0.0.1"', server)
        test = parser.get_doctest(text, {"__name__": page.stem}, f"docs/{page.name}",
                                  str(page), 0)
        if test.examples:
            found.append(test)
    return found


def main(argv: list[str]) -> int:
    runner = ExampleRecorder(sys.stdout, optionflags=doctest.ELLIPSIS)
    finder = doctest.DocTestFinder()
    tests = [test for module in modules() for test in finder.find(module)]
    for docs in argv:
        tests += page_tests(Path(docs))
    for test in tests:
        runner.run(test, out=lambda text: None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
