"""The Faust application object, found by ``faust -A app worker``."""

from app.faust_app import AnalyticsApp, create_app

app: AnalyticsApp = create_app()

__all__ = ["app"]
