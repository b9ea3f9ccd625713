"""Transports the suite can measure, one module per system; see ``base`` for the interface.

``discover()`` imports every module of this package, so that dropping a file such as
``engine_acks.py`` with ``@register``-decorated classes in here is all it takes to add a
transport. A module that fails to import is remembered in ``BROKEN`` and reported.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback

from bench.transports.base import REGISTRY, Transport, register

__all__ = ["BROKEN", "REGISTRY", "Transport", "discover", "register"]

#: Modules of this package that could not be imported: module name -> last traceback line.
BROKEN: dict[str, str] = {}

_NOT_TRANSPORTS = {"base", "harness"}


def discover() -> dict[str, type[Transport]]:
    """Import every transport module; return the registry sorted by ``order`` then name."""
    for module in pkgutil.iter_modules(__path__):
        if module.name in _NOT_TRANSPORTS or module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{__name__}.{module.name}")
        except Exception as error:  # noqa: BLE001 - a broken module must not stop the suite
            lines = traceback.format_exception_only(type(error), error)
            BROKEN[module.name] = lines[-1].strip()
    return dict(sorted(REGISTRY.items(), key=lambda item: (item[1].order, item[0])))
