"""memring's sans-I/O memcached codec: bytes in, events out; no sockets, no trio."""

from protocol.request_parser import NEED_DATA, RequestParser

__all__ = ["NEED_DATA", "RequestParser"]
