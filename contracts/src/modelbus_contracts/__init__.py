"""modelbus contracts: the events and API models every service shares, and their codecs."""

from .cloudevents import ContractError, KafkaRecord, decode, encode
from .columns import Columns, Decoded, decode_batch
from .envelope import Event, Frozen
from .events import *  # noqa: F403
from .events import ALL_EVENTS, EVENTS_BY_TYPE
from .records import BatchEncoder, DictRows, encode_batch

__all__ = [
    "ALL_EVENTS",
    "EVENTS_BY_TYPE",
    "BatchEncoder",
    "Columns",
    "ContractError",
    "Decoded",
    "DictRows",
    "Event",
    "Frozen",
    "KafkaRecord",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
]
