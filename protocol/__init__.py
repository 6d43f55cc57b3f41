"""memring's sans-I/O memcached codec: bytes in, events out; no sockets, no trio."""

from memring.protocol.request_parser import RequestParser
from memring.protocol.response_parser import ResponseError, ResponseParser
from memring.protocol.sentinels import NEED_DATA

__all__ = ["NEED_DATA", "RequestParser", "ResponseError", "ResponseParser"]
