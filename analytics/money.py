"""Money as published: integer cents inside, currency units with 2 decimals outside.

Every figure that shows money goes through here, so a reader finds the one rounding rule:
sums are kept in exact integer cents (SPEC 1 rounds ``metadata.amount`` to cents) and shown
as ``round(cents / 100, 2)``, the nearest float to the exact decimal amount.
"""

from __future__ import annotations

from decimal import Decimal


def currency(cents: int) -> float:
    """Cents as currency units (``1234`` -> ``12.34``)."""
    return round(cents / 100, 2)


def currency_per(cents: int, count: int) -> float:
    """An amount per purchase, user or session in currency units, rounded to cents (0 when
    there is none: SPEC 4's rule for ratios)."""
    return round(cents / (100 * count), 2) if count else 0.0


def cents_of(amount: Decimal | None) -> int:
    """A stored ``numeric(20, 2)`` amount (None: 0) as exact integer cents."""
    return int((amount or Decimal(0)) * 100)
