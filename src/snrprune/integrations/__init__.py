"""Integrations with training frameworks; each module imports its framework, the package itself none."""
