"""A small Stepline app run by a real worker subprocess in the crash-recovery acceptance tests."""
