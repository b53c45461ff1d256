"""Each library internal app/faust_compat.py relies on, checked for the shape it relies on.

One test per internal, named for it: after an upgrade of faust-streaming, aiokafka or
rocksdict, a failure here says which internal moved (docs/architecture.md, "Library
internals"). Where it is cheap the test also exercises the internal for real, on a
throw-away Faust app whose RocksDB tables live in a temporary directory.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from faust.app.router import Router
from faust.assignor import PartitionAssignor
from faust.exceptions import NotReady
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.manager import TableManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from app import faust_compat

UNREACHABLE = "127.0.0.1:1"


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function, follow_wrapped=True).parameters)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[faust.App, Any]]:
    """A Faust app of its own (not the project's) and a two-partition rocksdict table."""
    app = faust.App(
        f"compat-{uuid.uuid4().hex[:8]}",
        datadir=tmp_path_factory.mktemp("faust-compat"),
        store="rocksdb://",
        autodiscover=False,
    )
    table = app.Table(
        "t", partitions=2, key_type=bytes, value_type=bytes, options={"driver": "rocksdict"}
    )
    yield app, table
    for partition in (0, 1):
        faust_compat.partition_db(table, partition).close()


def changelog(table: Any) -> str:
    return str(table.changelog_topic.get_topic_name())


# --------------------------------------------------------------------------- tables


def test_store_db_for_partition(scratch: tuple[faust.App, Any]) -> None:
    """faust.stores.rocksdb.Store._db_for_partition(partition) -> the partition's Rdict."""
    assert parameters(RocksDBStore._db_for_partition) == ["self", "partition"]
    _, table = scratch
    db = faust_compat.partition_db(table, 0)
    assert type(db).__name__ == "Rdict"
    assert faust_compat.partition_db(table, 0) is db  # opened once, then the same database


def test_store_offset_key(scratch: tuple[faust.App, Any]) -> None:
    """Store.offset_key: recovery reads the offset the hot path writes under it."""
    assert RocksDBStore.offset_key == faust_compat.STORE_OFFSET_KEY == b"__faust\x00offset__"
    _, table = scratch
    tp = TP(changelog(table), 1)
    faust_compat.partition_db(table, 1).put(faust_compat.STORE_OFFSET_KEY, b"41")
    assert table.data.persisted_offset(tp) == 41
    table.data.set_persisted_offset(tp, 42)
    assert faust_compat.partition_db(table, 1).get(faust_compat.STORE_OFFSET_KEY) == b"42"


def test_store_visible_keys(scratch: tuple[faust.App, Any]) -> None:
    """Store._visible_keys(db): a partition database's keys, the offset key left out."""
    assert parameters(RocksDBStore._visible_keys) == ["self", "db"]
    _, table = scratch
    db = faust_compat.partition_db(table, 0)
    db.put(b"user-1", b"{}")
    db.put(faust_compat.STORE_OFFSET_KEY, b"7")
    assert list(faust_compat.visible_keys(table, db)) == [b"user-1"]


def test_store_dbs_for_actives(
    scratch: tuple[faust.App, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store._dbs_for_actives(): the open databases of the assignor's active partitions."""
    assert parameters(RocksDBStore._dbs_for_actives) == ["self"]
    app, table = scratch
    dbs = [faust_compat.partition_db(table, p) for p in (0, 1)]
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: {TP(changelog(table), 1)})
    assert list(faust_compat.active_partition_dbs(table) or []) == [dbs[1]]


def test_memory_store_has_no_partition_databases(tmp_path: Path) -> None:
    """A ``memory://`` table has no ``_dbs_for_actives``: tables.sizes counts it with len()."""
    app = faust.App("compat-memory", datadir=tmp_path, store="memory://", autodiscover=False)
    table = app.Table("m", partitions=2)
    assert faust_compat.active_partition_dbs(table) is None


def test_table_manager_recovery_completed(tmp_path: Path) -> None:
    """TableManager.recovery (a property, not in TableManagerT) has a ``completed`` event."""
    assert isinstance(inspect.getattr_static(TableManager, "recovery"), property)
    app = faust.App("compat-recovery", datadir=tmp_path, autodiscover=False)
    assert faust_compat.tables_recovered(app) is False
    tables: Any = app.tables
    tables.recovery.completed.set()  # what Recovery does once every table is recovered
    assert faust_compat.tables_recovered(app) is True


def test_assignor_assigned_actives(
    scratch: tuple[faust.App, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PartitionAssignor.assigned_actives() -> set of TP, standbys left out."""
    assert parameters(PartitionAssignor.assigned_actives) == ["self"]
    app, _ = scratch
    assert app.assignor.assigned_actives() == set()  # nothing assigned before a rebalance
    actives = {TP("state-changelog", 0), TP("other", 1), TP("state-changelog", 3)}
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: actives)
    assert faust_compat.active_partitions(app, "state-changelog") == {0, 3}


# --------------------------------------------------------------------------- kafka clients


async def test_producer_ensure_producer_client(tmp_path: Path) -> None:
    """faust's aiokafka Producer._ensure_producer() -> AIOKafkaProducer, whose ``client`` is
    an AIOKafkaClient; before the producer starts it raises NotReady."""
    ensure = faust_aiokafka.Producer._ensure_producer
    assert parameters(ensure) == ["self"]
    assert "AIOKafkaProducer" in str(inspect.signature(ensure).return_annotation)
    app = faust.App("compat-producer", datadir=tmp_path, autodiscover=False)
    assert isinstance(app.producer, faust_aiokafka.Producer)
    with pytest.raises(NotReady):
        faust_compat.producer_client(app)
    producer = AIOKafkaProducer(bootstrap_servers=UNREACHABLE)
    try:
        assert isinstance(producer.client, AIOKafkaClient)
    finally:
        await producer.stop()


def test_client_wait_on_metadata() -> None:
    """AIOKafkaClient._wait_on_metadata(topic): a coroutine (web/api.py's table routes)."""
    assert inspect.iscoroutinefunction(AIOKafkaClient._wait_on_metadata)
    assert parameters(AIOKafkaClient._wait_on_metadata) == ["self", "topic"]


async def test_consumer_client_force_metadata_update() -> None:
    """AIOKafkaConsumer._client is its AIOKafkaClient, which has force_metadata_update()."""
    consumer = AIOKafkaConsumer(bootstrap_servers=UNREACHABLE)
    try:
        assert isinstance(consumer._client, AIOKafkaClient)
        assert parameters(AIOKafkaClient.force_metadata_update) == ["self"]
    finally:
        await consumer.stop()


def test_client_metadata_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """AIOKafkaClient._metadata_update(cluster_metadata, topics) -> bool, called with the
    client's own ``cluster`` by its background refresh and with a fresh ClusterMetadata by
    fetch_all_metadata() (app/kafka_backoff.py waits only in the first case)."""
    original = inspect.unwrap(AIOKafkaClient._metadata_update)
    assert inspect.iscoroutinefunction(original)
    assert parameters(original) == ["self", "cluster_metadata", "topics"]
    synchronizer = inspect.getsource(AIOKafkaClient._md_synchronizer)
    assert "self._metadata_update(self.cluster," in synchronizer
    fetch_all = inspect.getsource(AIOKafkaClient.fetch_all_metadata)
    assert "ClusterMetadata(" in fetch_all
    assert "self._metadata_update(cluster_md," in fetch_all

    async def stand_in(self: Any, cluster_metadata: Any, topics: Any) -> bool:
        return True

    monkeypatch.setattr(AIOKafkaClient, "_metadata_update", stand_in)
    wrapped: list[Any] = []

    def wrap(update: faust_compat.MetadataUpdate) -> faust_compat.MetadataUpdate:
        wrapped.append(update)

        async def replacement(self: Any, cluster_metadata: Any, topics: Any) -> bool:
            return await update(self, cluster_metadata, topics)

        return replacement

    faust_compat.wrap_metadata_update(wrap)
    faust_compat.wrap_metadata_update(wrap)  # a second install changes nothing
    assert wrapped == [stand_in]
    assert inspect.unwrap(AIOKafkaClient._metadata_update) is stand_in


def test_credentials_to_aiokafka_auth() -> None:
    """faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth(credentials,
    ssl_context) -> mapping of aiokafka options (outside the driver's ``__all__``)."""
    function = faust_aiokafka.credentials_to_aiokafka_auth
    assert parameters(function) == ["credentials", "ssl_context"]
    assert faust_compat.aiokafka_auth(None) == {"security_protocol": "PLAINTEXT"}
    sasl = faust.SASLCredentials(username="u", password="p", mechanism="PLAIN")
    auth = faust_compat.aiokafka_auth(sasl)
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("u", "p")


# --------------------------------------------------------------------------- web server


def test_aiohttp_web_app(tmp_path: Path) -> None:
    """faust.web.drivers.aiohttp.Web.web_app: the aiohttp Application it serves."""
    app = faust.App("compat-web", datadir=tmp_path, autodiscover=False)
    assert isinstance(app.web, AiohttpWeb)
    application = faust_compat.aiohttp_application(app)
    assert isinstance(application, aiohttp.web.Application)
    assert application is app.web.web_app


def test_router_route_req_forwards_headers() -> None:
    """faust.app.router.Router._route_req sends the request on with its headers, so
    web/access.py's credentials reach the worker that owns the key."""
    source = inspect.getsource(Router._route_req)
    assert "headers=request.headers" in source
