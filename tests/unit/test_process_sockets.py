"""The test helpers tell their own server's listening socket from another process's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import servers
from tests.helpers.process_sockets import (
    held_by_other_process,
    listening_inodes,
    process_tree,
)

pytestmark = pytest.mark.unit


def test_a_socket_this_process_listens_on_is_its_own() -> None:
    with socket.socket() as listener:
        listener.bind((servers.HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert listening_inodes(port)
        assert not held_by_other_process(port, os.getpid())


def test_a_socket_another_process_listens_on_is_not_ours() -> None:
    with socket.socket() as listener:
        listener.bind((servers.HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert held_by_other_process(port, other.pid)  # this test's process holds it
            assert other.pid in process_tree(os.getpid())  # a child is in our tree
        finally:
            other.kill()
            other.wait()


def test_no_listener_is_nothing_to_judge() -> None:
    port = servers.free_port()
    assert not listening_inodes(port)
    assert not held_by_other_process(port, os.getpid())


def test_a_server_whose_port_was_taken_is_started_on_another() -> None:
    """A memcached takes the port first; the one `running` starts answers on another port."""
    port = servers.free_port()
    with servers.running("squatter", servers.memcached_argv(), port=port) as squatter:
        taken = iter([port])

        def free_port() -> int:
            return next(taken, None) or servers.etcd_process.free_port()

        original = servers.free_port
        servers.free_port = free_port  # the first pick collides with the squatter
        try:
            with servers.running("memcached", servers.memcached_argv()) as server:
                assert server.port != port
                assert not held_by_other_process(server.port, server.pid)
        finally:
            servers.free_port = original
        assert squatter.process.poll() is None
