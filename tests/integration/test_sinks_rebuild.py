"""``faust -A app sinks rebuild`` against the real Kafka and PostgreSQL: after a normal run,
a rebuild into a second, empty database ends with the same rows as the live sinks wrote,
and a rebuild into tables that hold rows is refused unless ``--force`` truncates them.

The traffic and its waits are tests/integration/test_sinks.py's."""

from __future__ import annotations

import pytest

from sinks.schema import TABLES
from tests.databases import fresh_database
from tests.integration.test_sinks import (
    PARTITIONS,
    _expected,
    _topic_values,
    _traffic,
    _values,
    _wait_for_pipeline,
    snapshot,
    wait_for_tables,
)
from tests.kafka_helpers import produce
from tests.missing_services import service_missing
from tests.sink_tables import SINK_TOPICS, differences, latest_rows, table_rows
from tests.worker_process import Services, WorkerPool, faust_command

pytestmark = pytest.mark.integration


async def test_a_rebuild_into_an_empty_database_ends_with_the_live_sinks_rows(
    worker_factory: WorkerPool, services: Services, topic_prefix: str, group_id: str
) -> None:
    if not services.database_url:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    bootstrap = services.kafka_bootstrap
    async with (
        fresh_database(services.database_url, "live") as live,
        fresh_database(services.database_url, "rebuilt") as rebuilt,
    ):
        worker = worker_factory.start(topic_prefix, group_id, {"DATABASE_URL": live})
        await worker.await_ready(PARTITIONS, timeout=120)
        traffic, closing = _traffic()
        await produce(bootstrap, f"{topic_prefix}user-events", traffic, linger_ms=20)
        await produce(bootstrap, f"{topic_prefix}user-events", closing)
        await _wait_for_pipeline(bootstrap, topic_prefix)
        await wait_for_tables(live, await _expected(bootstrap, topic_prefix), timeout=60)
        worker.stop()  # the topics stay as they are from here on
        written = await snapshot(live)

        def rebuild(*flags: str) -> tuple[int, str]:
            result = faust_command(
                ["sinks", "rebuild", *flags],
                services,
                topic_prefix,
                group_id,
                DATABASE_URL=rebuilt,
            )
            return result.returncode, result.stdout + result.stderr

        code, output = rebuild()
        assert code == 0, output
        assert "kpi_metrics" in output and "records" in output, output
        again = await snapshot(rebuilt)
        for table in SINK_TOPICS:
            assert written[table], f"no {table} rows: the comparison would hold vacuously"
            assert _values(again[table]) == _values(written[table]), table
        # every row, not only the settled ones: exactly the latest record of each key
        for table, topic in SINK_TOPICS.items():
            spec = TABLES[table]
            want = latest_rows(spec, await _topic_values(bootstrap, f"{topic_prefix}{topic}"))
            assert not differences(spec, await table_rows(rebuilt, table), want)

        code, output = rebuild()
        assert code == 1, output
        assert "not empty" in output and "--force" in output, output
        code, output = rebuild("--force")
        assert code == 0, output
        forced = await snapshot(rebuilt)
        for table in SINK_TOPICS:
            assert _values(forced[table]) == _values(written[table]), table
