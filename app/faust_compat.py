"""The one module that reaches into faust-streaming, aiokafka and Faust's rocksdict store.

The project needs a few things these libraries do not offer publicly: the RocksDB database
of one table partition, the aiokafka client under a producer or consumer, a pause in
aiokafka's metadata refresh. Each such use is a function here, named for what the project
wants, with the internal it relies on in its docstring; nothing else in the product imports a
private name. pyproject.toml pins faust-streaming, aiokafka, mode-streaming and rocksdict to
the tested minor versions, and tests/unit/test_faust_compat.py checks each internal's shape,
so an upgrade that moves one fails there, by name, before anything runs
(docs/architecture.md, "Library internals", has the upgrade procedure).

Relied on without being called: Faust's table routing forwards a request to the key's owner
with the original headers (``faust.app.router.Router._route_req`` passes
``request.headers``), so web/access.py checks the credentials again on the owner.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, cast

from aiohttp import web as aiohttp_web
from aiokafka.client import AIOKafkaClient
from faust.stores.rocksdb import Store as RocksDBStore
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.web.drivers.aiohttp import Web as AiohttpWeb

#: ``AIOKafkaClient._metadata_update(self, cluster_metadata, topics) -> bool``
MetadataUpdate = Callable[[Any, Any, Any], Awaitable[bool]]

_WRAPPED_BY = "_analytics_wrapped_by"

STORE_OFFSET_KEY: bytes = RocksDBStore.offset_key
"""The key under which Faust's RocksDB store keeps a partition database's changelog offset
(``Store.offset_key``; recovery reads the changelog from there). The hot path writes it
with its own batches (tables/rocksdb_store.py)."""


# --------------------------------------------------------------------------- tables


def partition_db(table: Any, partition: int) -> Any:
    """The rocksdict database of ``table``'s ``partition``, opened by Faust's store if it is
    not open yet (``Store._db_for_partition``): the hot path reads and writes it directly
    instead of through Faust's per-event buffered table."""
    return table.data._db_for_partition(partition)


def active_partition_dbs(table: Any) -> Iterator[Any] | None:
    """The databases of the partitions this worker holds as active, standbys left out
    (``Store._dbs_for_actives``); None when ``table`` is not RocksDB-backed (``memory://``)."""
    store = table.data
    if not hasattr(store, "_dbs_for_actives"):
        return None
    return cast(Iterator[Any], store._dbs_for_actives())


def visible_keys(table: Any, db: Any) -> Iterator[bytes]:
    """The keys of one partition database of ``table`` without Faust's offset key
    (``Store._visible_keys``)."""
    return cast(Iterator[bytes], table.data._visible_keys(db))


def tables_recovered(app: Any) -> bool:
    """Whether Faust has finished recovering the tables after the latest rebalance
    (``TableManager.recovery.completed``, an event the TableManager interface lacks): a
    service started after that signal (``on_rebalance_complete``) checks it instead."""
    return bool(app.tables.recovery.completed.is_set())


def active_partitions(app: Any, topic: str) -> set[int]:
    """The partitions of ``topic`` that Faust's assignor made active on this worker; for a
    table's changelog topic, the partitions whose state this worker owns (standbys left out).
    ``PartitionAssignor.assigned_actives()`` is typed but undocumented."""
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}


# --------------------------------------------------------------------------- kafka clients


def producer_client(app: Any) -> Any:
    """The aiokafka client (an ``AIOKafkaClient``) under Faust's producer: its cluster
    metadata and connections (``Producer._ensure_producer()``, then aiokafka's
    ``AIOKafkaProducer.client``). Raises Faust's ``NotReady`` before the producer starts."""
    return app.producer._ensure_producer().client


async def wait_on_metadata(client: Any, topic: str) -> set[int]:
    """Make ``client`` (an ``AIOKafkaClient``) track ``topic`` and wait until its metadata
    has the topic's partitions, within its ``request_timeout_ms``
    (``AIOKafkaClient._wait_on_metadata``, what ``AIOKafkaProducer.send`` calls); raises
    a ``KafkaError`` when it does not come."""
    return cast(set[int], await client._wait_on_metadata(topic))


async def refresh_consumer_metadata(consumer: Any) -> None:
    """Refresh the cluster metadata of an ``AIOKafkaConsumer`` now, so that
    ``partitions_for_topic`` sees a topic created since (``AIOKafkaConsumer._client``; the
    consumer has no public refresh)."""
    await consumer._client.force_metadata_update()


def wrap_metadata_update(wrap: Callable[[MetadataUpdate], MetadataUpdate]) -> None:
    """Replace ``AIOKafkaClient._metadata_update`` with ``wrap(original)`` for every client
    of the process, once per ``wrap`` (app/kafka_backoff.py). The client's background refresh
    calls it with its own ``client.cluster``, ``fetch_all_metadata()`` with a fresh
    ``ClusterMetadata``; it returns whether the metadata was updated."""
    original: MetadataUpdate = AIOKafkaClient._metadata_update
    if getattr(original, _WRAPPED_BY, None) is wrap:
        return
    wrapped = wrap(original)
    functools.update_wrapper(wrapped, original)  # inspect.unwrap finds aiokafka's own
    setattr(wrapped, _WRAPPED_BY, wrap)
    AIOKafkaClient._metadata_update = wrapped


def aiokafka_auth(credentials: Any) -> dict[str, Any]:
    """The aiokafka security options (``security_protocol``, ``ssl_context``, ``sasl_*``)
    Faust derives from its ``broker_credentials`` for its own clients
    (``faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth``, outside the driver's
    ``__all__``), so the project's clients and Faust's always agree."""
    auth: Mapping[str, Any] = credentials_to_aiokafka_auth(credentials)
    return dict(auth)


# --------------------------------------------------------------------------- web server


def aiohttp_application(app: Any) -> aiohttp_web.Application:
    """The aiohttp application under Faust's web server, for middlewares and shutdown hooks
    (``faust.web.drivers.aiohttp.Web.web_app``; Faust's web interface has neither)."""
    return cast(AiohttpWeb, app.web).web_app
