"""memcached's protocol negotiation (-B auto): a connection's first byte chooses its protocol.

A first byte 0x80 (the binary request magic) makes the whole connection binary; anything
else makes it text and meta (memcached.c try_read_command_negotiate). The choice is made
once, on the first byte received, and the chosen parser gets everything from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from memring.protocol.binary_frames import MAGIC_REQUEST, BinaryRequest
from memring.protocol.binary_parser import BinaryReply, BinaryRequestParser
from memring.protocol.requests import Request
from memring.protocol.sentinels import NEED_DATA, NeedData


class TextParser(Protocol):
    """RequestParser, or AuthenticatingParser in front of it."""

    @property
    def buffered(self) -> int: ...

    @property
    def in_data_block(self) -> bool: ...

    @property
    def swallowing(self) -> bool: ...

    @property
    def swallow_left(self) -> int: ...

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> Request | NeedData: ...


class NegotiatingParser:
    """The parser of one server connection: text or binary, by its first byte."""

    __slots__ = ("_binary", "_chosen", "_text", "binary")

    def __init__(self, text: Callable[[], TextParser],
                 binary: Callable[[], BinaryRequestParser]) -> None:
        self._text = text
        self._binary = binary
        self._chosen: TextParser | BinaryRequestParser | None = None
        self.binary = False

    @property
    def chosen(self) -> TextParser | BinaryRequestParser | None:
        """The parser chosen by the first byte (None before any): a server loop may call
        it directly from then on and skip this indirection per event."""
        return self._chosen

    @property
    def buffered(self) -> int:
        return 0 if self._chosen is None else self._chosen.buffered

    def receive_data(self, data: bytes) -> None:
        if self._chosen is None:
            if not data:
                return
            self.binary = data[0] == MAGIC_REQUEST
            self._chosen = self._binary() if self.binary else self._text()
        self._chosen.receive_data(data)

    def next_event(self) -> Request | BinaryRequest | BinaryReply | NeedData:
        if self._chosen is None:
            return NEED_DATA
        return self._chosen.next_event()
