"""How a server's CLI runs it: one `trio.run`, its outcome as the process's exit status.

Both servers bind inside nurseries, so a port already in use arrives wrapped in exception
groups; the user should see one line naming the port (exit 1), not a traceback. A clean
stop (SIGTERM or SIGINT handled by the server) is 0.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from memring.netio.nonblocking import PortInUse


def run_server(program: str, serve: Callable[..., Awaitable[Any]], *args: Any) -> int:
    """`trio.run(serve, *args)`; the exit status, with a one-line error when a port is taken."""
    try:
        trio.run(serve, *args)
    except (PortInUse, BaseExceptionGroup) as exc:
        in_use = PortInUse.alone_in(exc)
        if in_use is None:
            raise
        print(f"{program}: error: {in_use}; choose another port", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
