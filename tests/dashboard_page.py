"""What the dashboard page (``GET /dashboard``) shows, read from its DOM in headless Chromium,
and how it formats figures: shared by the browser tests (tests/e2e/test_*_browser.py).

Debian's Chromium (scripts/browser.sh installs it) is driven by Python playwright, whose wheel
carries its own driver: no browser is downloaded.
"""

from __future__ import annotations

import os
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Fail (not skip) without Debian's Chromium, naming the command that installs it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/browser.sh (apt-get install chromium)")


def shown_text(value: Any, kind: str) -> str:
    """What the page shows for a figure: JavaScript's toFixed rounds the exact binary value
    half up, as Decimal does here."""
    if value is None:
        return "—"
    exact = Decimal(value)
    if kind == "money":
        return f"{exact.quantize(Decimal('0.01'), ROUND_HALF_UP):,}"
    if kind == "percent":
        return f"{exact.quantize(Decimal('0.1'), ROUND_HALF_UP)}%"
    if kind == "seconds":
        return f"{exact.quantize(Decimal('0.1'), ROUND_HALF_UP)} s"
    return f"{round(value):,}"


def p_value_text(p_value: float | None) -> str:
    """Four decimals (toFixed rounds the exact value half up), or "< 0.0001"."""
    if p_value is None:
        return "—"
    if p_value < 0.0001:
        return "< 0.0001"
    return str(Decimal(p_value).quantize(Decimal("0.0001"), ROUND_HALF_UP))


def variant_cells(record: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """An experiment-stats record's cells in the A/B tests panel: field -> (raw value, text)."""
    p_value, beats, significant = (
        record["p_value"],
        record["probability_to_beat_control"],
        record["significant"],
    )
    return {
        "users": (record["users"], shown_text(record["users"], "int")),
        "conversion_rate_percent": (
            record["conversion_rate_percent"],
            shown_text(record["conversion_rate_percent"], "percent"),
        ),
        "revenue_per_user": (
            record["revenue_per_user"],
            shown_text(record["revenue_per_user"], "money"),
        ),
        "p_value": (p_value, p_value_text(p_value)),
        "probability_to_beat_control": (
            beats,
            "—" if beats is None else shown_text(100 * beats, "percent"),
        ),
        "significant": (
            significant,
            "—" if p_value is None else ("yes" if significant else "no"),
        ),
    }


# --------------------------------------------------------------------------- the panels


def panel(page: Page, card: str) -> tuple[str, str]:
    """A panel's data-state and its text."""
    state, text = page.eval_on_selector(f"#{card}", "c => [c.dataset.state, c.textContent]")
    return state, text


def funnel_stages(page: Page) -> list[dict[str, Any]]:
    """The funnel chart's stages: name, raw figures, and the texts shown."""
    stages: list[dict[str, Any]] = page.eval_on_selector_all(
        "#funnel li.stage",
        """items => items.map(i => ({
            stage: i.dataset.stage,
            reached: JSON.parse(i.dataset.reached),
            drop_off_percent: JSON.parse(i.dataset.dropOff),
            reached_text: i.querySelector('.reached').textContent,
            drop_text: i.querySelector('.drop')?.textContent ?? null}))""",
    )
    return stages


def heat_map(page: Page) -> dict[str, Any]:
    """The heat map: per cohort its size text and {offset: (rate, text, live, colour)}."""
    found: dict[str, Any] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#cohorts tbody tr')].map(r => [
            r.dataset.cohort,
            {size: r.querySelector('[data-field=cohort_size]').textContent,
             columns: r.querySelectorAll('td.cell').length,
             cells: Object.fromEntries([...r.querySelectorAll('td.cell[data-offset]')].map(c => [
                c.dataset.offset,
                [JSON.parse(c.dataset.rate), c.textContent, c.classList.contains('live'),
                 getComputedStyle(c).backgroundColor]]))}]))"""
    )
    for row in found.values():
        row["cells"] = {offset: tuple(cell) for offset, cell in row["cells"].items()}
    return found


def experiment_rows(page: Page) -> dict[tuple[str, str], dict[str, tuple[Any, str]]]:
    """(experiment, variant) -> field -> (raw value, text shown)."""
    found = page.eval_on_selector_all(
        "#experiments tr.variant",
        """rows => rows.map(r => [r.dataset.experiment, r.dataset.variant,
            [...r.querySelectorAll('[data-field]')].map(c =>
                [c.dataset.field, JSON.parse(c.dataset.value), c.textContent])])""",
    )
    return {
        (experiment, variant): {field: (value, text) for field, value, text in cells}
        for experiment, variant, cells in found
    }
