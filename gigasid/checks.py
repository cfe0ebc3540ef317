"""Checks of config values shared by the config and the applications' own sections: one
message format everywhere (the key, what it accepts, what it got, the closest choice).
"""

from __future__ import annotations

import difflib

from gigasid.errors import ConfigError


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse a config value that is not one of ``choices``, suggesting the closest one.

    >>> check_choice("eta", "ddim", ("ddim", "ddpm"))
    >>> try:
    ...     check_choice("eta", "dim", ("ddim", "ddpm"))
    ... except ConfigError as exc:
    ...     print(exc)
    config key 'eta' must be one of ddim, ddpm; got 'dim' (did you mean 'ddim'?)
    """
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}; "
                          f"got {value!r}{hint}")


def check_range(key: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> None:
    """Refuse a config value outside ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and value > hi)
    if bad:
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else f"<= {hi}"
        rng = " and ".join(s for s in (lo_s, hi_s) if s)
        raise ConfigError(f"config key '{key}' must be {rng}; got {value}")
