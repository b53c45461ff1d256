"""An open KPI window of a partition (SPEC 4-5): its members, its running event counters (live
figures, custom KPI counts) and the page and dimension tally its final partial reads."""

from __future__ import annotations

from typing import Any

from analytics.rows import Row

LIVE_COUNTERS = ("events", "page_views", "conversions", "revenue_cents", "purchases")
"""The event counters of an open window that need no user: its live figures."""


class WindowState:
    """An open window of this partition: its users, and running event counters for live
    figures (the final figures are computed from the users' rows)."""

    __slots__ = (
        "applied",
        "custom",
        "dirty",
        "live",
        "live_changed",
        "live_users_total",
        "new_users",
        "newcomers",
        "persisted",
        "session_sums",
        "sessions",
        "start",
        "tally",
        "touched",
        "users",
    )

    def __init__(self, start: int) -> None:
        self.start = start
        self.users: set[str] = set()
        self.live = [0] * len(LIVE_COUNTERS)  # running counters, in LIVE_COUNTERS order
        self.custom: dict[str, int] = {}  # custom KPI counters (analytics.custom_kpis)
        self.applied = -1
        self.new_users: list[str] = []  # members added since the last write
        self.dirty = False  # live counters changed since the last write
        self.persisted = False  # its value was written (or loaded)
        self.live_changed = True  # an event came since its last live partial
        self.live_users_total = 0  # users_total of its last live partial
        # Figures worked out from the users' rows when first needed, then kept up to date
        # as rows come (PartitionState.row_added), so the next partial costs what changed,
        # not the window's rows. Not stored. Users read back after a crash may hold rows of
        # a window that was not stored, so even a new window starts from their rows.
        self.tally: PageTally | None = None
        self.newcomers: set[str] | None = None  # users first seen in the window
        self.sessions: dict[tuple[str, str], tuple[int, int, int, int]] | None = None
        """Per (user, session_id): the sessions active in the window as of its end, their
        summed duration, bounces and engagement (x10,000)."""
        self.session_sums = [0, 0, 0, 0]
        self.touched: set[tuple[str, str]] = set()  # session keys to figure out again

    def forget_figures(self) -> None:
        self.tally = self.newcomers = self.sessions = None
        self.touched = set()

    def count(self, user_id: str, row: Row) -> None:
        if user_id not in self.users:
            self.users.add(user_id)
            self.new_users.append(user_id)
        live = self.live
        live[0] += 1
        live[1] += row.action == "page_view"
        live[2] += row.conversion
        live[3] += row.revenue_cents
        live[4] += row.action == "purchase"
        self.dirty = True
        self.live_changed = True

    def count_custom(self, counters: list[str]) -> None:
        custom = self.custom
        for name in counters:
            custom[name] = custom.get(name, 0) + 1

    def live_figures(self) -> dict[str, int]:
        figures = dict(zip(LIVE_COUNTERS, self.live, strict=True))
        if self.custom:
            figures.update(self.custom)
        return figures


class PageTally:
    """A window's page and dimension figures, with the distinct users of each (SPEC 5)."""

    __slots__ = ("by_dim", "pages")

    def __init__(self) -> None:
        self.pages: dict[str, list[Any]] = {}  # views, time on page, visitors
        self.by_dim: tuple[dict[str, list[Any]], ...] = ({}, {}, {})  # device, country, browser

    def add(self, user_id: str, row: Row) -> None:
        is_view = row.action == "page_view"
        if is_view:
            stats = self.pages.get(row.page)
            if stats is None:
                stats = self.pages[row.page] = [0, 0, set()]
            stats[0] += 1
            stats[1] += row.duration
            stats[2].add(user_id)
        cents = row.revenue_cents
        for cells, value in zip(self.by_dim, (row.device, row.country, row.browser), strict=True):
            value = value or "unknown"
            cell = cells.get(value)
            if cell is None:
                cell = cells[value] = [0, 0, 0, set()]  # events, page views, revenue, users
            cell[0] += 1
            cell[1] += is_view
            cell[2] += cents
            cell[3].add(user_id)

    def figures(self) -> tuple[dict[str, list[int]], dict[str, dict[str, list[int]]]]:
        """Pages as [views, visitors, time on page]; dimension values as [events, users,
        page views, revenue] (the partial message's layout)."""
        pages = {page: [s[0], len(s[2]), s[1]] for page, s in self.pages.items()}
        dims = {
            name: {value: [c[0], len(c[3]), c[1], c[2]] for value, c in cells.items()}
            for name, cells in zip(("device", "country", "browser"), self.by_dim, strict=True)
        }
        return pages, dims
