"""A backend's settings: command-line flags, a TOML file, and MEMRING_* variables.

Precedence: a flag on the command line, then the environment (`MEMRING_<FLAG>`, e.g.
MEMRING_LISTEN), then the `[backend]` table of `--config FILE`, then the default.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_VERSION = "1.6.18"


class SettingsError(Exception):
    """Bad usage or configuration; the message names the problem (exit code 2)."""


@dataclass(frozen=True)
class BackendSettings:
    listen: str = "127.0.0.1:11211"
    memory: int = 64                 # MB, as memcached's -m
    max_item_size: int = 1 << 20     # bytes, as memcached's -I
    max_connections: int = 1024      # as memcached's -c
    max_line: int = 1 << 20          # longest get/gets line accepted
    version: str = DEFAULT_VERSION   # what `version` answers; clients gate features on it
    reap_interval: float = 1.0       # seconds between expiry sweeps

    @property
    def host(self) -> str:
        return split_address(self.listen)[0]

    @property
    def port(self) -> int:
        return split_address(self.listen)[1]


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"bad address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:11211")
    return host.strip("[]") or "0.0.0.0", int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memring-backend",
        description="A memring storage node: an in-memory, memcached-compatible server.")
    parser.add_argument("--config", help="TOML file with a [backend] table")
    parser.add_argument("--listen", help="HOST:PORT to serve clients on (default 127.0.0.1:11211)")
    parser.add_argument("--memory", type=int, help="memory limit for items in MB (default 64)")
    parser.add_argument("--max-item-size", type=int, help="largest item in bytes (default 1 MiB)")
    parser.add_argument("--max-connections", type=int, help="client connections (default 1024)")
    parser.add_argument("--max-line", type=int, help="longest get line in bytes (default 1 MiB)")
    parser.add_argument("--version-string", dest="version",
                        help=f"version reported to clients (default {DEFAULT_VERSION})")
    return parser


def _coerce(name: str, value: object, kind: type) -> object:
    if kind is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {value!r}") from None
    if kind is float and isinstance(value, (str, int)):
        try:
            return float(value)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if not isinstance(value, kind):
        raise SettingsError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def load_settings(argv: list[str] | None = None) -> BackendSettings:
    args = _parser().parse_args(argv)
    values: dict[str, object] = {}
    if args.config:
        try:
            table = tomllib.loads(Path(args.config).read_text()).get("backend", {})
        except OSError as exc:
            raise SettingsError(f"cannot read config {args.config}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"bad TOML in {args.config}: {exc}") from None
        values.update({k.replace("-", "_"): v for k, v in table.items()})
    kinds = {f.name: type(f.default) for f in fields(BackendSettings)}
    for name in kinds:
        env = os.environ.get("MEMRING_" + name.upper())
        if env is not None:
            values[name] = env
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    unknown = set(values) - set(kinds)
    if unknown:
        raise SettingsError(f"unknown backend setting(s): {', '.join(sorted(unknown))}")
    coerced: dict[str, Any] = {k: _coerce(k, v, kinds[k]) for k, v in values.items()}
    settings = BackendSettings(**coerced)
    split_address(settings.listen)
    if settings.memory <= 0:
        raise SettingsError("--memory must be a positive number of MB")
    if settings.max_item_size < 1024:
        raise SettingsError("--max-item-size must be at least 1024 bytes")
    if settings.max_connections <= 0:
        raise SettingsError("--max-connections must be positive")
    return settings
