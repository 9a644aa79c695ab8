"""CLI: ``asa info`` and ``asa sample-data`` (owned by the CT-reader work)."""


def info() -> None:
    """Show what the reader sees in a scan."""
    raise NotImplementedError


def sample_data() -> None:
    """Fetch the real CT sample."""
    raise NotImplementedError
