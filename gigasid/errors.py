"""Errors a user can cause. The CLI maps them to exit code 2 without a traceback."""


class GigasidError(Exception):
    """Base class for user-facing errors: the message says what, where and how to fix."""


class ConfigError(GigasidError):
    """The job configuration is invalid (unknown key, wrong type, out of range)."""


class InputError(GigasidError):
    """An input image is missing, unreadable or unsuitable (e.g. smaller than the patch)."""


class RunDirError(GigasidError):
    """The run directory cannot be used (changed config on resume, not writable, ...)."""


class ModelError(GigasidError):
    """Model weights (a VAE, CLIP) are missing, gated, corrupt or of an unsupported kind."""
