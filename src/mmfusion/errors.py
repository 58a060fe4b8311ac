"""One error type for bad input: entry points print its message on one line and exit with status 2."""


class MMFusionError(Exception):
    """Bad input (missing file, wrong key/shape, unknown choice). The message names the file/key and what was
    expected, on one line."""


class DataError(MMFusionError):
    """A data file is missing, malformed, or contradicts the config."""


class ConfigError(MMFusionError):
    """A config value is invalid."""


class DivergenceError(MMFusionError):
    """Training diverged: a non-finite training loss or validation metric. The message names the step, the value
    and the likely cause (learning rate, NaN/inf in the data). Entry points print it on one line and exit 2; in a
    multirun sweep the job (Optuna trial) is recorded as failed and the sweep goes on."""
