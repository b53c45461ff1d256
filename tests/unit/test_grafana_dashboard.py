"""dashboards/: the Grafana dashboard and its provisioning.

Every panel query must name what the code really produces: a Prometheus query only metrics
that ``app.metrics.registry`` exports (with their ``_total``/``_bucket``/``_sum``/``_count``
series), a SQL query only tables and columns that the migrations create on plain PostgreSQL
(parsed from ``sinks.migrations``, so TimescaleDB-only objects such as ``kpi_hourly`` are not
allowed: the panels must work on both). The parsers are checked on wrong queries too, so a
check that cannot fail does not pass for one that holds.

The last tests (marked ``integration``) also run every SQL query, macros expanded the way
Grafana expands them for plain PostgreSQL, as ``EXPLAIN`` in a database migrated by the
project's own migrations, and the A/B test and cohort tables over rows the sinks wrote.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from sinks import migrations
from sinks.schema import TABLES
from sinks.writers import write_batch
from tests.databases import scratch_database
from tests.missing_services import service_missing
from tests.unit.test_sinks_schema import BUTTON, COHORT, cohort_record, experiment_records
from tests.worker_process import Services

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = REPO_ROOT / "dashboards" / "analytics-dashboard.json"
PROVISIONING = REPO_ROOT / "dashboards" / "provisioning"
PROMETHEUS_TYPE = "prometheus"
POSTGRES_TYPES = {"grafana-postgresql-datasource", "postgres"}

# Panels the issue asks for, by row: (title, allowed panel types).
REQUIRED: dict[str, list[tuple[str, set[str]]]] = {
    "Overview": [
        ("Active users", {"gauge"}),
        ("Conversion rate", {"stat", "gauge"}),
        ("Average session duration", {"stat", "gauge"}),
        ("Engagement score", {"gauge", "stat"}),
    ],
    "Trends": [
        ("Actions over time", {"timeseries"}),
        ("Session activity", {"timeseries"}),
        ("KPI trends against the previous window", {"timeseries"}),
    ],
    "Analytics": [
        ("Top pages", {"barchart"}),
        ("Traffic by device", {"piechart"}),
        ("Geographic distribution", {"geomap"}),
        ("Funnel stages", {"table"}),
        ("A/B tests", {"table"}),
        ("Cohort retention", {"table", "heatmap"}),
    ],
    "Performance": [
        ("Processing latency p50 / p95 / p99", {"timeseries"}),
        ("Throughput", {"timeseries"}),
        ("Event rates", {"timeseries"}),
    ],
}


# --------------------------------------------------------------------------- loading


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    return data


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    """uid -> data source, from every file of provisioning/datasources."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for source in document.get("datasources", []):
            found[source["uid"]] = source
    return found


def grouped_panels(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Panels by the row above them (Grafana's layout: a row owns the panels below it until
    the next row; a collapsed row keeps its panels inside it)."""
    ordered = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    groups: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for panel in ordered:
        if panel["type"] == "row":
            current = groups.setdefault(panel["title"], [])
            current.extend(panel.get("panels", []))
        else:
            assert current is not None, f"panel {panel['title']!r} is above the first row"
            current.append(panel)
    return groups


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panels in grouped_panels(dashboard).values() for panel in panels]


def targets(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of the given data source kind."""
    sources = provisioned_datasources()
    found = []
    for panel in all_panels(load_dashboard()):
        for target in panel.get("targets", []):
            uid = (target.get("datasource") or panel["datasource"])["uid"]
            source_type = sources[uid]["type"]
            is_sql = source_type in POSTGRES_TYPES
            if (kind == "sql") == is_sql:
                found.append((panel["title"], target))
    return found


# --------------------------------------------------------------------------- Prometheus


def exported_series() -> dict[str, set[str] | None]:
    """Every series name ``app.metrics.registry`` exports -> its label names (None when the
    metric has no labelled sample yet, so its labels are unknown)."""
    from app.metrics import registry

    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count"),
        "info": ("_info",),
    }
    series: dict[str, set[str] | None] = {}
    for family in registry.collect():
        labels: set[str] | None = None
        if family.samples:
            labels = {name for sample in family.samples for name in sample.labels} - {"le"}
        for suffix in suffixes.get(family.type, ("",)):
            series[family.name + suffix] = labels
    return series


PROMQL_WORDS = {
    # aggregations, functions and keywords the dashboard may use
    *("sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev"),
    *("by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"),
    *("and", "or", "unless", "rate", "irate", "increase", "delta", "deriv", "histogram_quantile"),
    *("label_values", "clamp_min", "clamp_max", "abs", "vector", "scalar", "time", "absent"),
    *("sum_over_time", "avg_over_time", "max_over_time", "min_over_time", "last_over_time"),
}
#: labels Prometheus adds to every scraped series (docker/prometheus.yml)
TARGET_LABELS = {"instance", "job", "app"}


@dataclass
class PromQuery:
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)


def parse_promql(expr: str, legend: str = "") -> PromQuery:
    """The metric names and label names a PromQL expression (and its legend) uses."""
    found = PromQuery()
    text = re.sub(r"\$\{?\w+\}?", "", expr)  # dashboard variables: $instance, $__rate_interval
    for matchers in re.findall(r"\{([^}]*)\}", text):
        found.labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        found.labels.update(re.findall(r"[A-Za-z_]\w*", grouping))
    text = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", text)
    text = re.sub(r'"[^"]*"', " ", text)
    # label_values(metric, label): the second argument is a label
    for label in re.findall(r"label_values\([^,]*,\s*([A-Za-z_]\w*)\s*\)", text):
        found.labels.add(label)
        text = text.replace(label, " ")
    for word in re.findall(r"[A-Za-z_:][\w:]*", text):
        if word not in PROMQL_WORDS:
            found.metrics.add(word)
    found.labels.update(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    return found


def promql_problems(expr: str, legend: str, exported: dict[str, set[str] | None]) -> list[str]:
    query = parse_promql(expr, legend)
    problems = [f"{name} is not exported by app.metrics" for name in query.metrics - set(exported)]
    if not query.metrics:
        problems.append("names no metric")
    known: set[str] = set(TARGET_LABELS)
    complete = not problems  # labels of an unknown metric are unknown
    for name in query.metrics & set(exported):
        labels = exported[name]
        if labels is None:
            complete = False
        else:
            known |= labels
        if name.endswith("_bucket"):
            known.add("le")
    if complete:
        problems.extend(
            f"label {label!r} is not on {sorted(query.metrics)}"
            for label in sorted(query.labels - known)
        )
    return problems


# --------------------------------------------------------------------------- SQL


def plain_schema() -> dict[str, set[str]]:
    """Table -> columns, as the migrations that run on plain PostgreSQL create them."""
    tables: dict[str, set[str]] = {}
    not_columns = {"PRIMARY", "CHECK", "CONSTRAINT", "UNIQUE", "FOREIGN", "EXCLUDE"}
    for migration in migrations.MIGRATIONS:
        if migration.mode not in (migrations.ANY, migrations.PLAIN):
            continue
        for name, body in re.findall(
            r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)\s*\((.*?)\n\);", migration.sql, re.S
        ):
            columns = tables.setdefault(name, set())
            for line in body.splitlines():
                words = line.strip().split()
                if words and words[0].upper() not in not_columns:
                    columns.add(words[0].strip(",").lower())
        for name, column in re.findall(
            r"ALTER TABLE (?:IF EXISTS )?(\w+)\s+ADD COLUMN (?:IF NOT EXISTS )?(\w+)",
            migration.sql,
        ):
            tables.setdefault(name, set()).add(column.lower())
    return tables


SQL_KEYWORDS = {
    *("select", "from", "where", "group", "by", "order", "asc", "desc", "limit", "offset"),
    *("and", "or", "not", "as", "filter", "case", "when", "then", "else", "end", "null"),
    *("true", "false", "is", "in", "on", "join", "left", "right", "inner", "outer", "cross"),
    *("lateral", "distinct", "over", "partition", "with", "nulls", "first", "last"),
    *("between", "interval", "having", "using", "epoch", "like", "ilike", "any", "all"),
    "ordinality",
}
_TOKEN = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_]\w*|::|\S')


@dataclass
class SqlQuery:
    tables: set[str] = field(default_factory=set)
    #: alias -> table, for ``FROM kpi_metrics k``
    table_aliases: dict[str, str] = field(default_factory=dict)
    #: names a query defines: output aliases and the columns of ``AS t(key, value)``
    aliases: set[str] = field(default_factory=set)
    derived: dict[str, set[str]] = field(default_factory=dict)
    references: set[tuple[str | None, str]] = field(default_factory=set)


def parse_sql(query: str) -> SqlQuery:
    """Tables and column references of a dashboard query (the SQL subset panels use)."""
    text = re.sub(r"\$__\w+|\$\{\w+\}|\$\w+", " ", query)  # Grafana macros keep their arguments
    text = re.sub(r"'(?:[^']|'')*'", " ", text)  # literals, JSON keys included
    tokens = _TOKEN.findall(text)
    found = SqlQuery()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        word = token.lower()
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token == "::":
            i += 2  # the type name
            continue
        if word in ("from", "join"):
            j = i + 1
            while j < len(tokens) and tokens[j].lower() == "lateral":
                j += 1
            if j < len(tokens) and re.fullmatch(r"[A-Za-z_]\w*", tokens[j]):
                name = tokens[j].lower()
                if j + 1 < len(tokens) and tokens[j + 1] == "(":
                    i = j + 1  # a function in FROM (jsonb_each): its arguments are references
                    continue
                found.tables.add(name)
                j += 1
                if j < len(tokens) and tokens[j].lower() == "as":
                    j += 1
                if (
                    j < len(tokens)
                    and re.fullmatch(r"[A-Za-z_]\w*", tokens[j])
                    and tokens[j].lower() not in SQL_KEYWORDS
                ):
                    found.table_aliases[tokens[j].lower()] = name
                    j += 1
                i = j
                continue
            i = j
            continue
        if word == "as":
            alias = after.strip('"').lower()
            found.aliases.add(alias)
            i += 2
            if i < len(tokens) and tokens[i] == "(":
                names = set()
                while i < len(tokens) and tokens[i] != ")":
                    if re.fullmatch(r"[A-Za-z_]\w*", tokens[i]):
                        names.add(tokens[i].lower())
                    i += 1
                found.derived[alias] = names
                found.aliases |= names
            continue
        if re.fullmatch(r"[A-Za-z_]\w*|\"(?:[^\"]|\"\")*\"", token) and word not in SQL_KEYWORDS:
            if after == "(":
                i += 1  # a function name
                continue
            name = token.strip('"').lower()
            if after == "." and i + 2 < len(tokens):
                found.references.add((name, tokens[i + 2].strip('"').lower()))
                i += 3
                continue
            found.references.add((None, name))
        i += 1
    return found


def sql_problems(query: str, schema: dict[str, set[str]]) -> list[str]:
    parsed = parse_sql(query)
    problems = [f"table {t} does not exist" for t in sorted(parsed.tables - set(schema))]
    if not parsed.tables:
        problems.append("reads no table")
    columns: set[str] = set()
    for table in parsed.tables:
        columns |= schema.get(table, set())
    for qualifier, name in sorted(parsed.references, key=str):
        if qualifier is None:
            if name not in columns and name not in parsed.aliases:
                problems.append(f"column {name} is in none of {sorted(parsed.tables)}")
            continue
        table = parsed.table_aliases.get(qualifier, qualifier)
        if table in schema:
            if name not in schema[table]:
                problems.append(f"column {qualifier}.{name} is not in {table}")
        elif qualifier in parsed.derived:
            if name not in parsed.derived[qualifier]:
                problems.append(f"{qualifier}.{name} is not a column of {qualifier}")
        else:
            problems.append(f"unknown table or alias {qualifier} in {qualifier}.{name}")
    return problems


# --------------------------------------------------------------------------- the checkers


def test_schema_parser_reads_the_migrations_tables() -> None:
    schema = plain_schema()
    assert set(schema) == set(TABLES)
    for spec in TABLES.values():  # the sinks' columns, plus what the database adds itself
        assert set(spec.columns) | {"updated_at"} <= schema[spec.name], spec.name
    assert "kpi_hourly" not in schema  # TimescaleDB only: not for portable panels


def test_the_sql_checker_finds_wrong_names() -> None:
    schema = plain_schema()
    good = (
        'SELECT $__timeGroupAlias(window_start, $__interval), sum(views) AS "views" '
        "FROM page_view_stats WHERE $__timeFilter(window_start) GROUP BY 1 ORDER BY views"
    )
    assert sql_problems(good, schema) == []
    assert sql_problems(good.replace("sum(views)", "sum(view_count)"), schema) == [
        "column view_count is in none of ['page_view_stats']"
    ]
    assert "table page_views does not exist" in sql_problems(
        good.replace("page_view_stats", "page_views"), schema
    )
    joined = (
        "SELECT t.key, k.trends ->> 'x' FROM kpi_metrics k "
        "CROSS JOIN LATERAL jsonb_each(k.trends) AS t(key, value)"
    )
    assert sql_problems(joined, schema) == []
    assert sql_problems(joined.replace("k.trends ->>", "k.trend ->>"), schema) == [
        "column k.trend is not in kpi_metrics"
    ]
    assert sql_problems(joined.replace("t.key", "t.name"), schema) == [
        "t.name is not a column of t"
    ]
    assert "table kpi_hourly does not exist" in sql_problems(
        "SELECT bucket FROM kpi_hourly", schema
    )


def test_the_promql_checker_finds_wrong_names() -> None:
    exported: dict[str, set[str] | None] = {
        "analytics_dashboard_x_total": {"table"},
        "analytics_dashboard_h_bucket": set(),
    }
    good = 'sum by (table) (rate(analytics_dashboard_x_total{instance=~"$instance"}[5m]))'
    assert promql_problems(good, "{{table}}", exported) == []
    assert promql_problems(good.replace("_x_total", "_y_total"), "", exported) == [
        "analytics_dashboard_y_total is not exported by app.metrics"
    ]
    assert promql_problems(good, "{{kind}}", exported) == [
        "label 'kind' is not on ['analytics_dashboard_x_total']"
    ]
    quantile = "histogram_quantile(0.9, sum by (le) (rate(analytics_dashboard_h_bucket[1m])))"
    assert promql_problems(quantile, "p90", exported) == []
    assert promql_problems("vector(1)", "", exported) == ["names no metric"]


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_has_the_four_groups_and_their_panels() -> None:
    dashboard = load_dashboard()
    groups = grouped_panels(dashboard)
    assert list(groups) == ["Overview", "Trends", "Analytics", "Performance"]
    for group, required in REQUIRED.items():
        present = {panel["title"]: panel["type"] for panel in groups[group]}
        for title, kinds in required:
            assert title in present, f"{group}: no panel {title!r}"
            assert present[title] in kinds, f"{group}: {title!r} is a {present[title]}"
    assert dashboard["uid"] and dashboard["title"]


#: panels over rows per day or per experiment, and the time range of their own (timeFrom):
#: within the dashboard's default last hour they would show today's rows at most
OWN_RANGE = {"Funnel stages": "7d", "A/B tests": "30d", "Cohort retention": "30d"}


def test_panels_over_days_or_experiments_have_a_range_of_their_own() -> None:
    assert load_dashboard()["time"]["from"] == "now-1h"
    panels = {panel["title"]: panel for panel in all_panels(load_dashboard())}
    assert {title: panels[title].get("timeFrom") for title in OWN_RANGE} == OWN_RANGE
    by_date = {
        title
        for title, target in targets("sql")
        if re.search(r"\$__timeFilter\((day|cohort|updated_at)\)", target["rawSql"])
    }
    assert by_date == set(OWN_RANGE)


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    dashboard = load_dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_query_uses_a_provisioned_data_source_of_both_kinds() -> None:
    sources = provisioned_datasources()
    kinds = {source["type"] for source in sources.values()}
    assert PROMETHEUS_TYPE in kinds and kinds & POSTGRES_TYPES
    used = set()
    for panel in all_panels(load_dashboard()):
        assert panel.get("targets"), f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            reference = target.get("datasource") or panel["datasource"]
            assert reference["uid"] in sources, f"{panel['title']!r}: unknown data source"
            assert reference["type"] == sources[reference["uid"]]["type"], panel["title"]
            used.add(reference["type"])
    assert used == kinds


def test_prometheus_queries_name_exported_metrics() -> None:
    exported = exported_series()
    assert "analytics_dashboard_events_processed_total" in exported  # the suffix rule holds
    assert "analytics_dashboard_processing_latency_seconds_bucket" in exported
    queries = targets("prometheus")
    assert len(queries) >= 10
    problems = []
    for title, target in queries:
        for problem in promql_problems(target["expr"], target.get("legendFormat", ""), exported):
            problems.append(f"{title}: {problem}")
    for variable in load_dashboard()["templating"]["list"]:
        if variable.get("datasource", {}).get("type") == PROMETHEUS_TYPE:
            definition = variable["query"]
            text = definition["query"] if isinstance(definition, dict) else definition
            for problem in promql_problems(text, "", exported):
                problems.append(f"variable {variable['name']}: {problem}")
    assert problems == []


def test_latency_panel_shows_p50_p95_p99() -> None:
    (panel,) = [
        p for p in all_panels(load_dashboard()) if p["title"].startswith("Processing latency")
    ]
    quantiles = set()
    for target in panel["targets"]:
        assert "analytics_dashboard_processing_latency_seconds_bucket" in target["expr"]
        match = re.match(r"histogram_quantile\(\s*([\d.]+)", target["expr"])
        assert match, target["expr"]
        quantiles.add(float(match.group(1)))
    assert quantiles == {0.5, 0.95, 0.99}


def test_sql_queries_name_tables_and_columns_of_the_schema() -> None:
    schema = plain_schema()
    queries = targets("sql")
    assert len(queries) >= 10
    read: set[str] = set()
    problems: list[str] = []
    for title, target in queries:
        query = target["rawSql"]
        read |= parse_sql(query).tables
        problems.extend(f"{title}: {problem}" for problem in sql_problems(query, schema))
        if "$__timeFilter(" not in query:
            problems.append(f"{title}: ignores the dashboard's time range ($__timeFilter)")
        if re.search(r"\btime_bucket\b|\bfirst\(|\blast\(", query):
            problems.append(f"{title}: uses a TimescaleDB function")
        if target.get("format") == "time_series" and not (
            "$__timeGroupAlias(" in query or re.search(r'AS "?time"?\b', query)
        ):
            problems.append(f"{title}: a time series without a time column")
    assert problems == []
    assert read == set(TABLES)  # every sink table is on the dashboard


def test_the_dashboard_provider_and_home_dashboard() -> None:
    documents = [
        yaml.safe_load(path.read_text(encoding="utf-8"))
        for path in sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
    ]
    providers = [p for document in documents for p in document["providers"]]
    assert [p["type"] for p in providers] == ["file"]
    assert providers[0]["options"]["path"].startswith("/")


# --------------------------------------------------------------------------- the real database


def expand_macros(
    query: str, start: str = "2026-01-01T00:00:00Z", end: str = "2026-01-01T01:00:00Z"
) -> str:
    """Grafana's PostgreSQL macros, as rendered without TimescaleDB, over a fixed hour (or
    the range from ``start`` to ``end``)."""
    query = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN '{start}' AND '{end}'", query)
    query = re.sub(
        r"\$__timeGroupAlias\((\w+),\s*\$__interval\)",
        r'floor(extract(epoch from \1) / 60) * 60 AS "time"',
        query,
    )
    assert "$" not in query, f"a macro the test cannot expand: {query}"
    return query


@pytest.mark.integration
async def test_sql_queries_run_on_the_migrated_database(services: Services) -> None:
    server = services.database_url
    if not server:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    with scratch_database(server, "grafana") as url:
        await migrations.migrate_url(url)
        async with await psycopg.AsyncConnection.connect(url) as conn:
            for title, target in targets("sql"):
                try:
                    await conn.execute(("EXPLAIN " + expand_macros(target["rawSql"])).encode())
                except psycopg.Error as exc:
                    pytest.fail(f"{title}: {exc}")


def _panel_sql(title: str) -> str:
    (query,) = [str(t["rawSql"]) for panel_title, t in targets("sql") if panel_title == title]
    return query


@pytest.mark.integration
async def test_the_experiment_and_cohort_panels_show_the_stored_figures(
    services: Services,
) -> None:
    """The 'A/B tests' and 'Cohort retention' tables over rows the sinks' writer stored:
    a row per variant (the control first) and a row per cohort with its day columns, the
    size of its latest cell, and no value for a day without a cell."""
    server = services.database_url
    if not server:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    cells = [
        cohort_record(0, retained=40),
        cohort_record(1, retained=10),
        cohort_record(7, retained=3, is_final=False),
        cohort_record(0, size=8, retained=8, cohort=date(2025, 12, 31)),  # outside the range
    ]
    with scratch_database(server, "grafana") as url:
        await migrations.migrate_url(url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for table, records in (
                ("experiment_stats", experiment_records(BUTTON | {"Blue": (50, 5, 0, 0)})),
                ("cohort_stats", cells),
            ):
                result = await write_batch(conn, TABLES[table], records)
                assert result.rejected == []
            await conn.execute(b"SET TimeZone = 'UTC'")
            now = (await (await conn.execute(b"SELECT now()")).fetchone() or [None])[0]
            assert now is not None
            since = (now - timedelta(minutes=1)).isoformat()
            cursor = await conn.execute(
                expand_macros(_panel_sql("A/B tests"), since, now.isoformat()).encode()
            )
            experiments = await cursor.fetchall()
            cursor = await conn.execute(
                expand_macros(
                    _panel_sql("Cohort retention"), "2026-01-01T00:00:00Z", "2026-01-31T00:00:00Z"
                ).encode()
            )
            names = [column.name for column in cursor.description or []]
            cohorts = await cursor.fetchall()
    assert [(row[0], row[1], row[2]) for row in experiments] == [
        ("checkout_button", "control", 120),
        ("checkout_button", "Blue", 50),
        ("checkout_button", "green", 110),
    ]
    green = experiments[2]
    assert green[3:5] == (22, Decimal("20.00"))  # converted, conversion %
    assert green[5] == Decimal("8.91") and green[8] is True and green[9] == 3
    assert experiments[0][6] is None and experiments[0][7] is None  # the control: no comparison
    assert names[:4] == ["cohort", "users", "day 0", "day 1"] and names[-1] == "day 90"
    (january,) = cohorts
    by_name = dict(zip(names, january, strict=True))
    assert (by_name["cohort"], by_name["users"]) == (COHORT, 40)
    assert [by_name[f"day {d}"] for d in (0, 1, 2, 7, 90)] == [
        Decimal("100.0"),
        Decimal("25.0"),
        None,
        Decimal("7.5"),
        None,
    ]
