"""A module whose driver is missing, to check the install hint."""

from celery_selinon_storage.storages import require

require("no_such_driver_xyz", "sql")
