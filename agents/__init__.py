"""Faust agents: each moves data between topics, tables and the pure functions in analytics/."""
