"""Argument checks shared by the package's public functions."""


def check_positive_int(name, value):
    """Raises ValueError unless `value` is an int >= 1 (booleans rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
