"""Stand-in for fabric8-analytics-worker's ``f8a_worker`` package (test data; see storages)."""
