"""Where applications are registered, so that config, planner and engine never name one.

An application is a class with a ``name`` (the value of ``app:``) and, optionally, a
``Config`` dataclass holding its own top-level config keys. The built-in applications in
:mod:`gigasid.apps` register themselves on import; third-party packages can add theirs
through the ``gigasid.apps`` entry-point group.
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
    import gigasid.apps  # noqa: F401  (registers the built-in applications)

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
