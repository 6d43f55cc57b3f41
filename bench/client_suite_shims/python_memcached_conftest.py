"""Points python-memcached's own tests at the server under test.

Its tests hard-code ``127.0.0.1:11211``; bench/client_suites.py sets
``CLIENT_SUITES_SERVER`` to the address of the server it started.
"""

import os
from typing import Any

import memcache

_HARD_CODED = "127.0.0.1:11211"
_SERVER = os.environ["CLIENT_SUITES_SERVER"]
_client_init = memcache.Client.__init__


def _init_with_server(self: Any, servers: list[Any], *args: Any, **kwargs: Any) -> None:
    servers = [_SERVER if server == _HARD_CODED else server for server in servers]
    _client_init(self, servers, *args, **kwargs)


memcache.Client.__init__ = _init_with_server  # type: ignore[method-assign]
