"""Points pylibmc's own tests at the server under test, in ASCII or binary.

``pylibmc.test.make_test_client`` reads ``MEMCACHED_HOST``/``MEMCACHED_PORT``, but the
autoconf tests read the address from ``PylibmcTestCase``'s class attributes; both are set
here. With ``CLIENT_SUITES_BINARY=1`` every test client speaks the binary protocol unless
the test asks for ``binary=False`` itself.
"""

import functools
import os
from typing import Any

import pylibmc.autoconf
import pylibmc.test

import tests

tests.PylibmcTestCase.memcached_host = os.environ["MEMCACHED_HOST"]
tests.PylibmcTestCase.memcached_port = os.environ["MEMCACHED_PORT"]

if os.environ.get("CLIENT_SUITES_BINARY") == "1":
    _make_test_client = pylibmc.test.make_test_client

    @functools.wraps(_make_test_client)
    def _binary_test_client(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("binary", True)
        return _make_test_client(*args, **kwargs)

    pylibmc.test.make_test_client = _binary_test_client
    tests.make_test_client = _binary_test_client  # type: ignore[attr-defined]

# test_no_autoconf calls autoconf.elasticache() without an address: 127.0.0.1:11211.
_address, *_other_defaults = pylibmc.autoconf.elasticache.__defaults__ or ("",)
pylibmc.autoconf.elasticache.__defaults__ = (
    f"{tests.PylibmcTestCase.memcached_host}:{tests.PylibmcTestCase.memcached_port}",
    *_other_defaults)
