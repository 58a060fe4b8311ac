"""One error type for bad input: entry points print its message on one line and exit with status 2."""


class MMFusionError(Exception):
    """Bad input (missing file, wrong key/shape, unknown choice). The message names the file/key and what was
    expected, on one line."""


class DataError(MMFusionError):
    """A data file is missing, malformed, or contradicts the config."""


class ConfigError(MMFusionError):
    """A config value is invalid."""
