"""CLI: ``asa phantom``."""


def phantom() -> None:
    """Write synthetic abdominal phantoms."""
    raise NotImplementedError
