"""Where applications are registered, so that config, planner and engine never name one.

An application is a class with a ``name`` (the value of ``app:``) and, optionally, a
``Config`` dataclass holding its own top-level config keys. Every module of the
:mod:`gigasid.apps` package is imported when the registry is first read (discovered, not
listed: a new application is a new module there and nothing else), and registers its class
on import; third-party packages can add theirs through the ``gigasid.apps`` entry-point
group.
"""

from __future__ import annotations

_APPS: dict[str, type] = {}
_LOADED = False


def register(cls: type) -> type:
    """Class decorator: make ``cls`` available as ``app: cls.name``."""
    _APPS[cls.name] = cls
    return cls


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib.util  # binds importlib too
    import pkgutil

    # the package is found by name, not imported here: its modules import this one
    spec = importlib.util.find_spec("gigasid.apps")
    for mod in sorted(pkgutil.iter_modules(spec.submodule_search_locations),
                      key=lambda m: m.name):
        importlib.import_module(f"gigasid.apps.{mod.name}")  # registers its application

    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="gigasid.apps"):
            register(ep.load())
    except Exception:  # pragma: no cover - a broken plugin must not break the built-ins
        pass


def apps() -> dict[str, type]:
    """Every registered application class by name."""
    _load()
    return dict(_APPS)


def get(name: str) -> type:
    _load()
    return _APPS[name]
