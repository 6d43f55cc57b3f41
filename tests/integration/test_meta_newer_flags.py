"""Meta flags newer than memcached 1.6.18, checked against protocol.txt (not differential).

protocol.txt (memcached HEAD): ms `N` in append mode
vivifies a missing item, `E` sets the new CAS value explicitly (ms, md with I, ma),
md `x` removes the value but keeps the item.
"""

from __future__ import annotations

import socket

import pytest

from tests.helpers.servers import RunningServer

pytestmark = pytest.mark.integration


def exchange(server: RunningServer, data: bytes) -> bytes:
    """Send data plus a no-op sentinel and read until the sentinel's reply."""
    with socket.create_connection(server.address, timeout=3) as sock:
        sock.sendall(data + b"mn\r\n")
        reply = b""
        for _ in range(1000):
            if reply.endswith(b"MN\r\n"):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.endswith(b"MN\r\n"), reply
    return reply[:-4]


def test_ms_append_with_n_vivifies_a_missing_item(backend_server: RunningServer) -> None:
    reply = exchange(backend_server,
                     b"ms k 2 MA\r\nab\r\nms k 2 MA N100\r\nab\r\nms k 2 MA N100\r\ncd\r\n"
                     b"mg k v t\r\n")
    assert reply == b"NS\r\nHD\r\nHD\r\nVA 4 t100\r\nabcd\r\n"


def test_e_sets_the_cas_value(backend_server: RunningServer) -> None:
    reply = exchange(backend_server,
                     b"ms k 1 E12345 c\r\nx\r\nmg k c\r\n"
                     b"md k I E777\r\nmg k c\r\n"
                     b"ms n 1 E50\r\n5\r\nma n E900 c v\r\n")
    assert reply == (b"HD c12345\r\nHD c12345\r\nHD\r\nHD c777 X W\r\nHD\r\n"
                     b"VA 1 c900\r\n6\r\n")


def test_md_x_keeps_the_item_without_its_value(backend_server: RunningServer) -> None:
    reply = exchange(backend_server,
                     b"ms k 5 F3\r\nhello\r\nmd k x\r\nmg k v f\r\nmd k\r\nmg k v\r\n")
    assert reply == b"HD\r\nHD\r\nVA 0 f3\r\n\r\nHD\r\nEN\r\n"
