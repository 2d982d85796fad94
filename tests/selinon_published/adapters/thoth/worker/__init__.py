"""Stand-in for ``thoth.worker`` (test data; see storages.py)."""
