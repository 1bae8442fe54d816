"""Fault tests on PostgreSQL with real worker processes: SIGKILL of a node, a server restart, a rolling restart."""
