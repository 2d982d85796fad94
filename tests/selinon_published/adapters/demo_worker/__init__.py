"""Stand-in for selinon/demo-worker's ``demo_worker`` package (test data; see storages)."""
