"""What the tests share: server processes on free ports (servers), raw-socket conversations
(wire), the proxy in front of memcached and the backend (proxy_fixtures), ... Test modules
import from here, never from one another."""
