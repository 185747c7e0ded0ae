"""Errors caused by a user's input; the CLI prints their message without a traceback."""


class UserError(Exception):
    """Bad input: the message names the file, line or option and what to do."""


class ConfigError(UserError, ValueError):
    """An option has a value that cannot work."""


class DataError(UserError, ValueError):
    """A data source cannot be used."""


class ModelLoadError(UserError, OSError):
    """A model or tokenizer path cannot be used."""
