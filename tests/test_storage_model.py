"""Every storage against a model (a dict, id -> result), step by step on its real server, interruptions included.

Hypothesis drives a ``ManagedStorage`` as tasks use it: store, retrieve, delete and store_error over four
task ids that collide under careless comparison ('abc', 'ABC', 'abc ', 'ábc'), with JSON results and results
that must be refused, and with calls interrupted at their Nth low-level send or receive (tests/interrupt.py).
After every step each id must read back exactly as the model says, and never as another id's record.
"""

from __future__ import annotations

import gc
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pymongo
import pytest
import redis
import redis.utils
import sqlalchemy as sa
from celery.exceptions import SoftTimeLimitExceeded
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from celery_selinon_storage import (
    ConfigurationError,
    MissingResultError,
    ResultNotSerializableError,
    ResultTooLargeError,
    StorageError,
)
from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.retry import FullJitterBackoff, RetryPolicy
from celery_selinon_storage.storages.base import JsonStorage, error_record
from celery_selinon_storage.storages.mongo import MongoStorage
from celery_selinon_storage.storages.redis import RedisStorage
from celery_selinon_storage.storages.s3 import S3Storage
from celery_selinon_storage.storages.sql import SqlStorage
from tests.green_queries import with_driver
from tests.hypothesis_profiles import server_settings
from tests.interrupt import (
    Injector,
    Interrupted,
    InterruptibleMemoryStorage,
    Shot,
    When,
    socket_hook,
    sqlite_connection_class,
)
from tests.services import S3_KEYS

pytestmark = [
    pytest.mark.service,
    # An interrupted driver's socket is closed when the garbage collector frees the exception whose frames
    # hold its stream, not at disconnect; Python then warns of an unclosed socket.
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
    ),
]

#: Distinct task ids that a case-, pad- or accent-insensitive comparison would take for one.
IDS = ("abc", "ABC", "abc ", "ábc")
FLOW, TASK, NODE_ARGS = "flow", "task", {"arg": 1}
#: Retries as the worker's default policy makes them, without its pauses.
QUICK_RETRY = RetryPolicy(attempts=3, backoff=FullJitterBackoff(base=0.001, cap=0.01))
#: Seconds a driver waits for its server: a connection out of step fails the call instead of hanging it.
TIMEOUT = 2


class Absent:
    """The model's value of an id with no record."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = Absent()


class Deep(list[Any]):
    """A list nested too deep for any JSON encoder, with a repr that says so."""

    def __repr__(self) -> str:
        return "<a list nested 100000 deep>"


def _deep() -> Deep:
    inner: list[Any] = []
    for _ in range(100_000):
        inner = [inner]
    return Deep(inner)


DEEP = _deep()

#: The interruptions an armed call may suffer (each a new exception per shot).
INTERRUPTIONS: dict[str, Callable[[], BaseException]] = {
    "ConnectionResetError": lambda: ConnectionResetError(104, "injected: connection reset by peer"),
    "UnicodeEncodeError": lambda: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "injected"),
    "SoftTimeLimitExceeded": lambda: SoftTimeLimitExceeded("injected"),
    "Interrupted(BaseException)": lambda: Interrupted("injected"),
}


# -- results ---------------------------------------------------------------------------------


def _results(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([2**63, -(2**63) - 1, 2**64, 2**70, -(2**70)]),
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(text, children, max_size=3)
        ),
        max_leaves=8,
    )


#: JSON results, U+0000 included (PostgreSQL's JSONB refuses it).
results = _results(st.text(max_size=8))
#: JSON results every backend stores.
clean_results = _results(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8)
)
lone_surrogates = st.tuples(
    st.text(max_size=2), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.text(max_size=2)
).map("".join)
bad_leaves = st.one_of(lone_surrogates, st.sampled_from([math.nan, math.inf, -math.inf]))
#: Results no backend may store: ResultNotSerializableError, nothing written.
bad_results = st.one_of(
    bad_leaves,
    st.tuples(clean_results, bad_leaves).map(list),
    st.builds(lambda key, value: {key: value}, lone_surrogates, clean_results),
    st.just(DEEP),
)


def refusal(result: Any, refuses_nul: bool) -> str | None:
    """Why ``result`` must be refused (None when it must be stored)."""
    if result is DEEP:
        return "is nested too deep"
    pending = [result]
    while pending:
        value = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return "holds a float that is not finite"
        if isinstance(value, str):
            if any(0xD800 <= ord(char) <= 0xDFFF for char in value):
                return "holds a lone surrogate"
            if refuses_nul and "\x00" in value:
                return "holds U+0000"
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return None


def same(left: Any, right: Any) -> bool:
    """Equal as JSON, types included (True is not 1, 1.0 is not 1)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[key], right[key]) for key in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    return bool(left == right)


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def error_info(message: str) -> Any:
    """``sys.exc_info()`` of a raised ValueError, as store_error gets it."""
    try:
        raise ValueError(message)
    except ValueError:
        return sys.exc_info()


def allowed(error: BaseException, injected: BaseException) -> bool:
    """Whether an interrupted call may end with ``error``: the interruption, or an error of ours saying so."""
    if error is injected:
        return True
    record_errors = (ResultNotSerializableError, ResultTooLargeError, ConfigurationError, MissingResultError)
    return isinstance(error, StorageError) and not isinstance(error, record_errors)


#: Which send or receive of the call to interrupt: any of those the backend's calls make.
NTH = st.runner().flatmap(lambda machine: st.integers(1, machine.backend.events))
#: Before it, after half of it went out (a send), or after it.
WHEN: st.SearchStrategy[When] = st.sampled_from(["before", "midway", "after"])


# -- the backends ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """How to make a fresh adapter for one backend, and what the injector sees of its driver."""

    name: str
    make: Callable[[], JsonStorage]
    injector: Injector
    #: modules whose sends and receives the injector interrupts
    drivers: frozenset[str]
    #: the most sends and receives one store, retrieve or delete makes (an interruption picks one of them)
    events: int
    refuses_nul: bool = False
    #: share of the profile's examples this backend runs (its calls are slower than the others')
    share: float = 1.0
    #: storages left connected and in step by earlier examples, for the next ones
    spares: list[ManagedStorage] = field(default_factory=list)

    def take_storage(self) -> ManagedStorage:
        """A spare storage, else a new one, connected."""
        if self.spares:
            return self.spares.pop()
        storage = ManagedStorage(f"model-{self.name}", self.make(), GuardKind.THREAD, QUICK_RETRY)
        storage.connect()
        return storage


@dataclass
class Outcome:
    """What a call returned, or raised."""

    value: Any = None
    error: BaseException | None = None


def run(call: Callable[[], Any]) -> Outcome:
    try:
        return Outcome(value=call())
    except (Exception, Interrupted) as error:  # noqa: BLE001 - the caller judges every outcome
        return Outcome(error=error)


def unexpected(what: str, outcome: Outcome) -> AssertionError:
    failure = AssertionError(f"{what} raised {outcome.error!r}")
    failure.__cause__ = outcome.error
    return failure


class StorageModel(RuleBasedStateMachine):
    """A ``ManagedStorage`` (thread guard, the worker's retries) against a dict of id -> possible values.

    Subclassed per backend by ``model_for``.
    """

    backend: ClassVar[Backend]

    def __init__(self) -> None:
        super().__init__()
        self.injector = self.backend.injector
        self.storage = self.backend.take_storage()
        #: whether every call so far behaved and none was interrupted (the storage may serve the next example)
        self.settled = True
        self.interrupted = False
        for task_id in IDS:  # what the last example left
            self.call(partial(self.storage.delete, FLOW, TASK, task_id))
        #: per id, every value it may hold now (one once a read has settled it)
        self.model: dict[str, list[Any]] = {task_id: [ABSENT] for task_id in IDS}

    def teardown(self) -> None:
        if self.settled:
            self.backend.spares.append(self.storage)
        else:
            self.storage.shut_down()

    def call(self, do: Callable[[], Any], shot: Shot | None = None) -> Outcome:
        """``do()``'s outcome, under ``shot`` if given; the storage is unsettled until the invariant holds."""
        self.settled = False
        if shot is None:
            return run(do)
        with self.injector.armed(shot):
            outcome = run(do)
        self.interrupted = self.interrupted or shot.fired is not None
        return outcome

    # -- rules ---------------------------------------------------------------------------------

    @rule(task_id=st.sampled_from(IDS), result=st.one_of(results, bad_results))
    def store(self, task_id: str, result: Any) -> None:
        outcome = self.call(lambda: self.storage.store(NODE_ARGS, FLOW, TASK, task_id, result))
        why = refusal(result, self.backend.refuses_nul)
        if why is None:
            if outcome.error is not None:
                raise unexpected(f"store({task_id!r}, {short(result)})", outcome)
            self.model[task_id] = [result]
        elif not isinstance(outcome.error, ResultNotSerializableError):
            got = f"raised {outcome.error!r}" if outcome.error else "stored it"
            raise AssertionError(
                f"store({task_id!r}) of a result that {why} {got}; expected ResultNotSerializableError"
            ) from outcome.error

    @rule(
        task_id=st.sampled_from(IDS), message=st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]))
    )
    def store_error(self, task_id: str, message: str) -> None:
        exc_info = error_info(message)
        outcome = self.call(lambda: self.storage.store_error(NODE_ARGS, FLOW, TASK, task_id, exc_info))
        if outcome.error is not None:
            raise unexpected(f"store_error({task_id!r})", outcome)
        self.model[task_id] = [{"error": error_record(exc_info)}]

    @rule(task_id=st.sampled_from(IDS))
    def retrieve(self, task_id: str) -> None:
        self.check_read(task_id, self.call(lambda: self.storage.retrieve(FLOW, TASK, task_id)))

    @rule(task_id=st.sampled_from(IDS))
    def delete(self, task_id: str) -> None:
        self.check_delete(task_id, self.call(lambda: self.storage.delete(FLOW, TASK, task_id)), None)

    @rule(
        task_id=st.sampled_from(IDS),
        result=clean_results,
        nth=NTH,
        interruption=st.sampled_from(sorted(INTERRUPTIONS)),
        when=WHEN,
    )
    def interrupted_store(self, task_id: str, result: Any, nth: int, interruption: str, when: When) -> None:
        shot = Shot(nth, INTERRUPTIONS[interruption], when)
        outcome = self.call(lambda: self.storage.store(NODE_ARGS, FLOW, TASK, task_id, result), shot)
        if outcome.error is None:
            self.model[task_id] = [result]
        elif shot.fired is not None and allowed(outcome.error, shot.fired):
            self.model[task_id] = [*self.model[task_id], result]  # the old record or the new one
        else:
            raise unexpected(f"store({task_id!r}) interrupted by {shot.fired!r}", outcome)

    @rule(
        task_id=st.sampled_from(IDS),
        nth=NTH,
        interruption=st.sampled_from(sorted(INTERRUPTIONS)),
        when=WHEN,
    )
    def interrupted_retrieve(self, task_id: str, nth: int, interruption: str, when: When) -> None:
        shot = Shot(nth, INTERRUPTIONS[interruption], when)
        outcome = self.call(lambda: self.storage.retrieve(FLOW, TASK, task_id), shot)
        error = outcome.error
        if error is None or isinstance(error, MissingResultError) or shot.fired is None:
            self.check_read(task_id, outcome)  # an answer: it must be right
        elif not allowed(error, shot.fired):
            raise unexpected(f"retrieve({task_id!r}) interrupted by {shot.fired!r}", outcome)

    @rule(
        task_id=st.sampled_from(IDS),
        nth=NTH,
        interruption=st.sampled_from(sorted(INTERRUPTIONS)),
        when=WHEN,
    )
    def interrupted_delete(self, task_id: str, nth: int, interruption: str, when: When) -> None:
        shot = Shot(nth, INTERRUPTIONS[interruption], when)
        outcome = self.call(lambda: self.storage.delete(FLOW, TASK, task_id), shot)
        self.check_delete(task_id, outcome, shot.fired)

    # -- invariant -----------------------------------------------------------------------------

    @invariant()
    def every_id_reads_back_as_modelled(self) -> None:
        for task_id in IDS:
            self.check_read(task_id, self.call(partial(self.storage.retrieve, FLOW, TASK, task_id)))
        self.settled = not self.interrupted

    # -- checks --------------------------------------------------------------------------------

    def check_read(self, task_id: str, outcome: Outcome) -> None:
        """A retrieve's outcome must be one of the id's possible values; it then settles the id."""
        if isinstance(outcome.error, MissingResultError):
            assert outcome.error.task_id == task_id, f"retrieve({task_id!r}) raised {outcome.error!r}"
            found: Any = ABSENT
        elif outcome.error is not None:
            raise unexpected(f"retrieve({task_id!r})", outcome)
        else:
            found = outcome.value
        possible = self.model[task_id]
        if not any(same(found, value) for value in possible):
            owners = [
                other
                for other in IDS
                if other != task_id and found is not ABSENT and any(same(found, v) for v in self.model[other])
            ]
            whose = f" - the record of {owners[0]!r}" if owners else ""
            raise AssertionError(
                f"retrieve({task_id!r}) gave {short(found)}{whose}; the model holds {short(possible)}"
            )
        self.model[task_id] = [found]

    def check_delete(self, task_id: str, outcome: Outcome, injected: BaseException | None) -> None:
        """A delete removes a record that exists, says MissingResultError for one that does not."""
        possible = self.model[task_id]
        if outcome.error is None:
            assert any(value is not ABSENT for value in possible), (
                f"delete({task_id!r}) of no record succeeded"
            )
            self.model[task_id] = [ABSENT]
        elif isinstance(outcome.error, MissingResultError):
            # after an interruption the first try may have deleted it, and the retry found nothing
            if injected is None:
                assert ABSENT in possible, (
                    f"delete({task_id!r}) said {outcome.error!r}; the model holds {short(possible)}"
                )
            self.model[task_id] = [ABSENT]
        elif injected is not None and allowed(outcome.error, injected):
            self.model[task_id] = [*possible, ABSENT]  # deleted or not
        else:
            raise unexpected(f"delete({task_id!r}) interrupted by {injected!r}", outcome)


def model_for(backend: Backend) -> type[StorageModel]:
    """The model's class for ``backend`` (its name shows in failure reports)."""
    return type(f"{backend.name.capitalize()}Model", (StorageModel,), {"backend": backend})


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def injector() -> Iterator[Injector]:
    """The injector, its hook in every socket of this process (it interrupts only the thread that arms it)."""
    injector = Injector()
    with socket_hook(injector):
        yield injector


def _drop_table(url: str, table: str) -> None:
    engine = sa.create_engine(SqlStorage(url).url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def _sql(
    url: str, request: pytest.FixtureRequest, unique: str, **connect_args: Any
) -> Callable[[], JsonStorage]:
    request.addfinalizer(lambda: _drop_table(url, unique))
    return lambda: SqlStorage(url, table_name=unique, engine_options={"connect_args": connect_args})


def _redis(url: str, request: pytest.FixtureRequest, unique: str) -> Callable[[], JsonStorage]:
    def drop() -> None:
        client = redis.Redis.from_url(url)
        keys = client.keys(f"{unique}:*")
        if keys:
            client.delete(*keys)
        client.close()

    request.addfinalizer(drop)
    parts = urlsplit(url)
    return lambda: RedisStorage(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        db=int(parts.path.strip("/") or 0),
        key_prefix=f"{unique}:",
        ttl=600,
        socket_timeout=TIMEOUT,
    )


def _mongo(uri: str, request: pytest.FixtureRequest, unique: str) -> Callable[[], JsonStorage]:
    def drop() -> None:
        client: Any = pymongo.MongoClient(uri)
        client["css_tests"].drop_collection(unique)
        client.close()

    request.addfinalizer(drop)
    return lambda: MongoStorage(
        db_name="css_tests", collection_name=unique, uri=f"{uri}/?socketTimeoutMS={TIMEOUT * 1000}"
    )


def _s3(endpoint: str, unique: str) -> Callable[[], JsonStorage]:
    return lambda: S3Storage(
        bucket=unique,
        endpoint_url=endpoint,
        region_name="eu-central-1",
        use_ssl=False,
        read_timeout=TIMEOUT,
        **S3_KEYS,
    )


BACKENDS = ["memory", "sqlite", "postgresql", "mariadb", "redis", "mongo", "s3"]


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, injector: Injector, tmp_path: Path, unique: str
) -> Iterator[Backend]:
    made = _backend(str(request.param), request, injector, tmp_path, unique)
    yield made
    for storage in made.spares:
        storage.shut_down()
    gc.collect()  # sockets of interrupted drivers warn now, under this module's filter


def _backend(
    name: str, request: pytest.FixtureRequest, injector: Injector, tmp_path: Path, unique: str
) -> Backend:
    if name == "memory":
        return Backend(name, lambda: InterruptibleMemoryStorage(injector), injector,
                       frozenset({"celery_selinon_storage.storages.memory"}), events=1)  # fmt: skip
    if name == "sqlite":
        url = f"sqlite:///{tmp_path / 'model.sqlite3'}"
        make = _sql(url, request, unique, factory=sqlite_connection_class(injector))
        return Backend(name, make, injector, frozenset({"celery_selinon_storage.storages.sql"}), events=2)
    if name == "postgresql":
        # pg8000: its I/O is Python's, so the injector reaches it (psycopg's is libpq's, in C)
        url = with_driver(request.getfixturevalue("postgres_url"), "pg8000")
        make = _sql(url, request, unique, timeout=TIMEOUT)
        # pg8000: three round trips a statement (parse, describe, bind and execute), a read per header and body
        return Backend(name, make, injector, frozenset({"pg8000.core"}), events=32, refuses_nul=True)
    if name == "mariadb":
        url = request.getfixturevalue("mariadb_url")
        make = _sql(url, request, unique, read_timeout=TIMEOUT, write_timeout=TIMEOUT)
        return Backend(name, make, injector, frozenset({"pymysql.connections"}), events=11)
    if name == "redis":
        make = _redis(request.getfixturevalue("redis_url"), request, unique)
        # hiredis (the [redis] extra) reads a reply in one receive; redis-py's own parser in two
        drivers = frozenset({"redis.connection", "redis._parsers.socket", "redis._parsers.hiredis"})
        return Backend(name, make, injector, drivers, events=2 if redis.utils.HIREDIS_AVAILABLE else 3)
    if name == "mongo":
        make = _mongo(request.getfixturevalue("mongo_uri"), request, unique)
        # after a reset connection pymongo waits for its monitor (half a second) before the next call
        return Backend(name, make, injector, frozenset({"pymongo.network_layer"}), events=3, share=0.25)
    make = _s3(request.getfixturevalue("s3_endpoint"), unique)
    # botocore reads the "100 Continue" of a PUT itself; moto_server takes about 20 ms a request (a new
    # connection each: it answers HTTP/1.0)
    drivers = frozenset({"http.client", "botocore.awsrequest"})
    return Backend(name, make, injector, drivers, events=27, share=0.2)


# -- tests -----------------------------------------------------------------------------------


def test_the_injector_sees_the_drivers_own_sends_and_receives(backend: Backend) -> None:
    storage = ManagedStorage("probe", backend.make(), GuardKind.THREAD, QUICK_RETRY)
    storage.connect()
    calls: list[Callable[[], Any]] = [
        lambda: storage.store(NODE_ARGS, FLOW, TASK, "probe", {"n": 1}),
        lambda: storage.retrieve(FLOW, TASK, "probe"),
        lambda: storage.delete(FLOW, TASK, "probe"),
    ]
    seen: list[list[tuple[str, str]]] = []
    try:
        for call in calls:
            with backend.injector.recording() as events:
                call()
            seen.append(list(events))
    finally:
        storage.shut_down()
    every = [event for events in seen for event in events]
    assert {kind for kind, _ in every} == {"send", "receive"}, seen
    assert {module for _, module in every} <= backend.drivers, seen
    assert max(map(len, seen)) == backend.events, seen


def test_each_storage_keeps_to_the_model(backend: Backend) -> None:
    run_state_machine_as_test(model_for(backend), settings=server_settings(backend.share))
