"""SPEC section 5: page and traffic statistics of a window from summed partition partials."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from analytics.kpis import ratio
from analytics.money import currency
from analytics.timeutil import format_ts

DIMENSIONS = ("device", "country", "browser")


def add_pages(total: dict[str, list[int]], part: Mapping[str, list[int]]) -> None:
    """Add {page: [views, visitors, time_ms]} of one partition (users are disjoint by
    partition) or of one window (the web API's visitor_windows)."""
    for page, (views, visitors, time_ms) in part.items():
        cell = total.setdefault(page, [0, 0, 0])
        cell[0] += views
        cell[1] += visitors
        cell[2] += time_ms


def add_dimensions(
    total: dict[str, dict[str, list[int]]], part: Mapping[str, Mapping[str, list[int]]]
) -> None:
    """Add one partition's {dimension: {value: [events, users, page_views, revenue_cents]}}."""
    for dimension, values in part.items():
        target = total.setdefault(dimension, {})
        for value, cells in values.items():
            cell = target.setdefault(value, [0, 0, 0, 0])
            for index, amount in enumerate(cells):
                cell[index] += amount


def page_rows(start: int, window_ms: int, pages: Mapping[str, list[int]]) -> list[dict[str, Any]]:
    """One row per page, top pages first: views descending, then page ascending."""
    rows = [
        {
            "window_start": format_ts(start),
            "window_end": format_ts(start + window_ms),
            "page": page,
            "views": views,
            "unique_visitors": visitors,
            "total_time_on_page_ms": time_ms,
            "avg_time_on_page_ms": avg_time_on_page_ms(time_ms, views),
        }
        for page, (views, visitors, time_ms) in pages.items()
    ]
    return sorted(rows, key=top_page_order)


def page_rank(page: str, views: int) -> tuple[int, str]:
    """SPEC 5's order of pages, the one ranking rule: views descending, then the page in code
    point order (sinks/queries.TOP_PAGES orders the same in SQL: ``views DESC, page COLLATE
    "C"``)."""
    return (-views, page)


def top_page_order(row: Mapping[str, Any]) -> tuple[int, str]:
    return page_rank(row["page"], row["views"])


def avg_time_on_page_ms(time_ms: int, views: int) -> float:
    """SPEC 5: the page's time on page over its views (0 without views)."""
    return ratio(time_ms, views)


def dimension_rows(
    start: int, window_ms: int, dims: Mapping[str, Mapping[str, list[int]]]
) -> Iterable[dict[str, Any]]:
    """One row per (dimension, value); a missing value is reported as ``unknown``."""
    for dimension in DIMENSIONS:
        for value, (events, users, page_views, cents) in sorted(dims.get(dimension, {}).items()):
            yield {
                "window_start": format_ts(start),
                "window_end": format_ts(start + window_ms),
                "dimension": dimension,
                "value": value,
                "events": events,
                "users": users,
                "page_views": page_views,
                "revenue": currency(cents),
                "revenue_cents": cents,
            }
