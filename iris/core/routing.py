"""Route an event to the destinations that take it (segment mapping or explicit destination)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from iris.config.model import Destination
from iris.core.events import Event

NO_DESTINATION = "no_destination"
UNKNOWN_DESTINATION = "unknown_destination"
NO_PARTNER_ID = "no_partner_id"
SKIP_REASONS = (NO_DESTINATION, UNKNOWN_DESTINATION, NO_PARTNER_ID)


class RouteTable:
    """Segment → destinations, precomputed so routing costs two dict lookups per event."""

    def __init__(self, destinations: Iterable[Destination]) -> None:
        self._by_id = {d.id: d for d in destinations}
        self._all = [d for d in self._by_id.values() if d.routes_all()]
        mapped: dict[str, list[Destination]] = defaultdict(list)
        for dest in self._by_id.values():
            if not dest.routes_all():
                for segment in dict.fromkeys(dest.segments):
                    mapped[segment].append(dest)
        # every destination of a segment, those that take every segment first
        self._by_segment = {segment: self._all + dests for segment, dests in mapped.items()}

    def route(self, event: Event) -> tuple[list[tuple[Destination, str]], list[str]]:
        """``([(destination, DataPartner_UUID)], [skip reasons])`` for one event.

        An explicit ``destination`` field sends only there; otherwise every destination whose
        ``segments`` match. A destination whose partner id the event lacks is skipped.
        """
        if event.destination is not None:
            dest = self._by_id.get(event.destination)
            if dest is None:
                return [], [UNKNOWN_DESTINATION]
            candidates: list[Destination] = [dest]
        else:
            candidates = self._by_segment.get(event.segment, self._all)
            if not candidates:
                return [], [NO_DESTINATION]
        routes, skips = [], []
        for dest in candidates:
            partner_id = event.partner_id(dest.user_dpid)
            if partner_id is None:
                skips.append(NO_PARTNER_ID)
            else:
                routes.append((dest, partner_id))
        return routes, skips
