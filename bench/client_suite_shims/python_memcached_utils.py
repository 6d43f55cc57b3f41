"""``tests/utils.py`` of python-memcached, which its sdist leaves out: stderr captured."""

import contextlib
import io
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def captured_stderr() -> Iterator[io.StringIO]:
    """Everything written to sys.stderr inside the block, as a StringIO."""
    saved = sys.stderr
    sys.stderr = io.StringIO()
    try:
        yield sys.stderr
    finally:
        sys.stderr = saved
