"""The ``stepline`` command line: run workers, send events, inspect and cancel runs."""
