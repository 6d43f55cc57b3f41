"""memring: a highly available, memcached-compatible cache cluster.

The source folders stay at the top of the repository (`protocol/`, `netio/`, `cluster/`,
`backend/`, `proxy/`, the layout the project is known by); `memring/` holds a link to each,
so that the same files import, type-check and install as `memring.protocol`, `memring.proxy`,
... and only `memring` lands in site-packages (a generic top-level `proxy` would collide).
The extension guard goes in first: a mypyc build that no longer matches its sources (or
MEMRING_PURE_PYTHON=1) leaves the .py files in use (memring/extension_guard.py).
"""

from pathlib import Path

from memring import extension_guard

extension_guard.install(__name__, Path(__file__).resolve().parent)
