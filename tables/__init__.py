"""Changelog-backed Faust tables: the pipeline's state, one module per kind of state."""
