"""Background workers: ``python -m workers``."""
