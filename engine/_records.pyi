# A poll's Record objects in one call (native/records.c).
from collections.abc import Callable
from typing import Any

def build(
    record_type: type,
    data: Any,
    infos_address: int,
    count: int,
    topic: str,
    partition: int,
    decode_headers: Callable[[bytes, int], Any],
) -> list[Any]: ...
