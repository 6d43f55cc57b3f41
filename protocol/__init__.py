"""memring's sans-I/O memcached codec: bytes in, events out; no sockets, no trio."""

from memring.protocol.request_parser import NEED_DATA, RequestParser
from memring.protocol.response_parser import ResponseError, ResponseParser

__all__ = ["NEED_DATA", "RequestParser", "ResponseError", "ResponseParser"]
