"""`memring-backend` / `python -m backend`: run one storage node in the foreground."""

from __future__ import annotations

import logging
import signal
import sys

import trio

from backend.server import BackendServer
from backend.settings import BackendSettings, SettingsError, load_settings
from netio import nonblocking
from netio.nonblocking import PortInUse

log = logging.getLogger("memring.backend")


async def run(settings: BackendSettings) -> None:
    nonblocking.raise_fd_limit(settings.max_connections + 64)
    server = BackendServer(settings)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        log.info("serving memcached protocol on %s:%d (memory %d MB, max item %d bytes)",
                 settings.host, port, settings.memory, settings.max_item_size)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s received: shutting down", signal.Signals(signum).name)
                server.shutdown()
                break


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"memring-backend: error: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(run, settings)
    except PortInUse as exc:
        print(f"memring-backend: error: {exc}; choose another with --listen HOST:PORT",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
