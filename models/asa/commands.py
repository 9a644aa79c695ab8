"""CLI: ``asa pretrain`` and ``asa order-map``."""


def pretrain() -> None:
    """ASA pretraining."""
    raise NotImplementedError


def order_map() -> None:
    """Order-prediction map of a scan."""
    raise NotImplementedError
