"""Example applications: ``bench`` (the benchmark protocol) and, later, ``chat``."""
