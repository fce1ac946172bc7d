"""The AAM standard payload (seed 000, DESIGN 1.2): dates, envelope, encoding."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import orjson

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
DATE_LEN = len("Wed Jul 27 16:17:42 UTC 2016")


@lru_cache(maxsize=4096)
def aam_date(epoch_second: int) -> str:
    """``Wed Jul 27 16:17:42 UTC 2016``: Java's Date.toString in UTC, locale-independent."""
    t = time.gmtime(epoch_second)
    return (
        f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} UTC {t.tm_year}"
    )


def encode_payload(
    *, destination_id: str, user_dpid: str, client_id: str, users: list[dict[str, Any]],
    process_time: float | None = None,
) -> bytes:
    """One POST body. Every scalar is a string, as partners built for AAM expect."""
    return orjson.dumps(
        {
            "ProcessTime": aam_date(int(time.time() if process_time is None else process_time)),
            "User_DPID": user_dpid,
            "Client_ID": client_id,
            "AAM_Destination_Id": destination_id,
            "User_count": str(len(users)),
            "Users": users,
        }
    )


def envelope_size(destination_id: str, user_dpid: str, client_id: str) -> int:
    """Bytes of the envelope around ``Users`` (with a 6-digit User_count), for size budgeting."""
    return len(encode_payload(destination_id=destination_id, user_dpid=user_dpid,
                              client_id=client_id, users=[])) + 5
