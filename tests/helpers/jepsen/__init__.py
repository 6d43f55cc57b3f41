"""A Jepsen-style check of memring owned by the project: clients, a nemesis, a history, and a
linearizability checker over it (see tests/chaos/test_jepsen.py and bench/jepsen.py)."""
