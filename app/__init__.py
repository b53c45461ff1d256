"""The Faust application object, found by ``faust -A app worker``."""

from app.faust_app import AnalyticsApp, create_app

app: AnalyticsApp = create_app()

from app import commands  # noqa: E402  (registers `faust -A app tail`)

__all__ = ["app", "commands"]
