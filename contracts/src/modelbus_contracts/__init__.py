"""modelbus contracts: the events and API models every service shares, nothing else."""

from .cloudevents import BinaryHeaders, ContractError, KafkaRecord, decode, encode
from .columns import Columns, Decoded, decode_batch
from .envelope import Event, Frozen
from .events import *  # noqa: F403
from .events import ALL_EVENTS, EVENTS_BY_TYPE

__all__ = [
    "ALL_EVENTS",
    "EVENTS_BY_TYPE",
    "BinaryHeaders",
    "Columns",
    "ContractError",
    "Decoded",
    "Event",
    "Frozen",
    "KafkaRecord",
    "decode",
    "decode_batch",
    "encode",
]
