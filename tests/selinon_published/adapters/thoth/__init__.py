"""Stand-in for the ``thoth`` namespace of thoth-station/selinon-worker (test data; see storages.py)."""
