"""The auth file of memcached's `-Y` on disk: read at start, read again on SIGHUP.

The backend checks its clients against it, the proxy its clients (and takes its own
credentials for the backends from one), and a backend or `memring status` asking nodes for
`stats` sends its first user. Parsing and the check are sans-I/O (protocol.ascii_auth); this
module reads the file and keeps the old table when a reload fails, as memcached does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from memring.protocol.ascii_auth import (
    MAX_ENTRIES,
    Authenticator,
    AuthFileError,
    Credentials,
)

log = logging.getLogger("memring.auth")


def load_credentials(path: str) -> Credentials:
    """The file's users; AuthFileError (naming the file) if it cannot be read or parsed."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc.strerror}") from None
    try:
        credentials = Credentials.parse(data)
    except AuthFileError as exc:
        raise AuthFileError(f"auth file {path}: {exc}") from None
    if credentials.ignored:
        # memcached drops them silently ("FIXME: no silent truncation"); we say so
        log.warning("auth file %s: only the first %d users are read, %d line(s) ignored",
                    path, MAX_ENTRIES, credentials.ignored)
    return credentials


def reload_credentials(auth: Authenticator, path: str, reason: str = "SIGHUP") -> bool:
    """Swap in the file's users; a file that cannot be loaded keeps the table in use."""
    try:
        credentials = load_credentials(path)
    except AuthFileError as exc:
        log.error("%s: keeping the %d user(s) loaded before: %s", reason,
                  len(auth.credentials.entries), exc)
        return False
    auth.credentials = credentials
    log.info("%s: %d user(s) loaded from %s", reason, len(credentials.entries), path)
    return True
