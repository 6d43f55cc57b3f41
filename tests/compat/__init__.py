"""Differential tests: replay raw client bytes against memcached and memring, compare replies."""
