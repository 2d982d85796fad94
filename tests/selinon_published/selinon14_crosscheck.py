"""One-off check (docs/selinon.md): Selinon 1.4's own adapters, on the drivers of their time, and this
package's built-ins share one store, record for record, on the same servers.

Selinon's PostgreSQL adapter needs SQLAlchemy 1.4 and SQLAlchemy-Utils, and its Redis adapter a redis-py
that still takes ``charset``: they run in a venv of their own, which this script drives. Make it once::

    python3.11 -m venv /tmp/selinon14
    /tmp/selinon14/bin/pip install selinon==1.4.0 'redis<6' 'SQLAlchemy>=1.4,<2' sqlalchemy-utils \\
        psycopg2-binary pymongo boto3

then, from the project's root, with the test servers running (PostgreSQL, Redis; MongoDB and S3 are
started here)::

    .venv/bin/python -m tests.selinon_published.selinon14_crosscheck /tmp/selinon14/bin/python

The same file is the venv's side (``--selinon-side``): it imports only the standard library, PyYAML and
Selinon.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

FLOW, TASK = "crosscheck_flow", "CrossCheckTask"
NODE_ARGS = {"ecosystem": "pypi", "name": "selinon"}
RESULT = {"values": [1, 2.5, "čaj", None, True, 2**40], "nested": {"list": [], "map": {"k": "v"}}}
NAMES = ("Redis", "MongoDB", "PostgreSQL", "S3", "Filesystem")


def selinon_side(nodes: str, command: str, ids: dict[str, str]) -> dict[str, Any]:
    """In Selinon 1.4's venv: store ``RESULT`` under each id, or read each id back, with Selinon's adapters."""
    import yaml

    found: dict[str, Any] = {}
    for entry in yaml.safe_load(Path(nodes).read_text())["storages"]:
        module = importlib.import_module(entry["import"])
        adapter = getattr(module, entry.get("classname", entry["name"]))(**entry["configuration"])
        adapter.connect()
        task_id = ids[entry["name"]]
        if command == "store":
            found[entry["name"]] = adapter.store(NODE_ARGS, FLOW, TASK, task_id, RESULT)
        else:
            found[entry["name"]] = adapter.retrieve(FLOW, TASK, task_id)
        adapter.disconnect()
    return found


def crosscheck(selinon_python: str) -> list[str]:
    """Run both sides on one store; the report's lines."""
    import psycopg

    from celery_selinon_storage import open_storages
    from tests.servers import mongo_wire_server, s3_server
    from tests.services import POSTGRES_URL

    def selinon(command: str, ids: dict[str, str]) -> dict[str, Any]:
        run = subprocess.run(
            [selinon_python, __file__, "--selinon-side", str(nodes), command, json.dumps(ids)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        answer: dict[str, Any] = json.loads(run.stdout)
        return answer

    report = []
    work = Path(tempfile.mkdtemp(prefix="selinon14-"))
    database = f"css_selinon14_{uuid.uuid4().hex[:8]}"
    with mongo_wire_server(work) as mongo_uri, s3_server(work) as s3_endpoint:
        nodes = work / "nodes.yml"
        mongo_port = mongo_uri.rsplit(":", 1)[1]
        database_url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{database}"  # made by Selinon's adapter
        nodes.write_text(
            f"""storages:
  - {{name: Redis, import: selinon.storages.redis, configuration: {{host: 127.0.0.1, port: 6379, db: 13}}}}
  - {{name: MongoDB, import: selinon.storages.mongodb,
     configuration: {{db_name: css_tests, collection_name: {database}, host: 127.0.0.1, port: {mongo_port}}}}}
  - {{name: PostgreSQL, import: selinon.storages.postgresql, configuration: {{connection_string: '{database_url}'}}}}
  - {{name: S3, import: selinon.storages.s3,
     configuration: {{bucket: {database.replace("_", "-")}, location: eu-central-1, region_name: eu-central-1,
                     endpoint_url: '{s3_endpoint}', use_ssl: false, aws_access_key_id: test,
                     aws_secret_access_key: test, serialize_json: true}}}}
  - {{name: Filesystem, import: selinon.storages.filesystem, configuration: {{path: '{work / "files"}'}}}}
"""
        )
        by_selinon = {name: f"selinon-{uuid.uuid4()}" for name in NAMES}
        by_builtin = {name: f"builtin-{uuid.uuid4()}" for name in NAMES}
        selinon("store", by_selinon)  # Selinon's PostgreSQL adapter makes the database and the table
        with open_storages(nodes) as storages:
            for name in NAMES:
                got = storages.get(name).retrieve(FLOW, TASK, by_selinon[name])
                report.append(f"{name}: the built-in reads Selinon 1.4's record: {got == RESULT}")
                storages.get(name).store(NODE_ARGS, FLOW, TASK, by_builtin[name], RESULT)
        for name, got in selinon("retrieve", by_builtin).items():
            report.append(f"{name}: Selinon 1.4 reads the built-in's record: {got == RESULT}")
        report += side_by_side(work, database, mongo_uri, s3_endpoint, (by_selinon, by_builtin))
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
    return report


def side_by_side(
    work: Path, database: str, mongo_uri: str, s3_endpoint: str, ids: tuple[dict[str, str], dict[str, str]]
) -> list[str]:
    """The record Selinon 1.4 wrote and the built-in's, as the plain drivers see them."""
    import boto3
    import psycopg
    import pymongo
    import redis

    from tests.services import POSTGRES_URL, REDIS_URL

    by_selinon, by_builtin = ids

    def same(name: str, first: Any, second: Any) -> bool:
        """Whether the two are the same, each record's own task id aside."""
        one, other = (json.dumps(x, default=str) for x in (first, second))
        return one.replace(by_selinon[name], "ID") == other.replace(by_builtin[name], "ID")

    report = []
    client = redis.Redis.from_url(REDIS_URL)
    raw = [client.get(ids["Redis"]) for ids in (by_selinon, by_builtin)]
    values = [value.decode() if isinstance(value, bytes) else str(value) for value in raw]
    report.append(f"Redis: the two values are the same bytes (ids aside): {same('Redis', *values)}")
    report.append(f"  {values[1]}")
    client.delete(by_selinon["Redis"], by_builtin["Redis"])
    mongo: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(mongo_uri) as mongo:
        documents = [
            mongo.css_tests[database].find_one({"task_id": ids["MongoDB"]}, {"_id": 0})
            for ids in (by_selinon, by_builtin)
        ]
    report.append(
        f"MongoDB: the documents have the same fields, in the same order: {same('MongoDB', *documents)}"
    )
    report.append(f"  {documents[1]}")
    database_url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{database}"
    with psycopg.connect(database_url, autocommit=True) as sql:
        rows = [
            sql.execute(
                "SELECT flow_name, task_name, task_id, result::text, node_args::text FROM result WHERE task_id = %s",
                (ids["PostgreSQL"],),
            ).fetchone()
            for ids in (by_selinon, by_builtin)
        ]
        table = sql.execute(
            "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_name = 'result' ORDER BY ordinal_position"
        ).fetchall()
    report.append(f"PostgreSQL: the two rows are the same (ids aside): {same('PostgreSQL', *rows)}")
    report.append(f"  table result as Selinon 1.4 made it: {table}")
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=s3_endpoint, region_name="eu-central-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    )  # fmt: skip
    objects = [
        s3.get_object(Bucket=database.replace("_", "-"), Key=ids["S3"]) for ids in (by_selinon, by_builtin)
    ]
    bodies = [found["Body"].read() for found in objects]
    report.append(f"S3: the two objects are the same bytes: {bodies[0] == bodies[1]}: {bodies[1].decode()}")
    report.append(f"  content types: {[found['ContentType'] for found in objects]}")
    files = [work / "files" / FLOW / TASK / f"{ids['Filesystem']}.json" for ids in (by_selinon, by_builtin)]
    report.append(
        f"Filesystem: the two files are the same bytes: {files[0].read_bytes() == files[1].read_bytes()}"
    )
    return report


if __name__ == "__main__":
    if sys.argv[1] == "--selinon-side":
        print(json.dumps(selinon_side(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))))
    else:
        print("\n".join(crosscheck(sys.argv[1])))
