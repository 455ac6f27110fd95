"""`pyanom serve`: fitted detectors behind an HTTP API and an operator page (extra ``pyanom[serve]``).

This package holds only the settings here (the CLI reads their defaults); the submodules that need
FastAPI are imported by ``pyanom serve`` and by callers of :func:`create_app`, so the core
never needs the extra.
"""

from __future__ import annotations

from pyanom.serve.config import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from pyanom.serve.app import create_app

        return create_app
    raise AttributeError(name)
