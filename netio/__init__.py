"""Non-blocking sockets on trio's low-level readiness waits, shared by backend and proxy.

Kept apart from `protocol` (which does no I/O at all) and from both servers (which must
not import each other): see netio.nonblocking for why not trio streams or trio.socket.
"""
