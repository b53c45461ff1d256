"""Pure functions that implement ../shared/SPEC.md, one module per section."""
