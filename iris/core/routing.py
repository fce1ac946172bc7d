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
        self._by_segment: dict[str, list[Destination]] = defaultdict(list)
        for dest in self._by_id.values():
            if not dest.routes_all():
                for segment in dict.fromkeys(dest.segments):
                    self._by_segment[segment].append(dest)
        # segments that route to exactly one destination, when none takes every segment
        self._only = {} if self._all else {
            segment: dests[0] for segment, dests in self._by_segment.items() if len(dests) == 1}

    def route(self, event: Event) -> tuple[list[tuple[Destination, str]], list[str]]:
        """``([(destination, DataPartner_UUID)], [skip reasons])`` for one event.

        An explicit ``destination`` field sends only there; otherwise every destination whose
        ``segments`` match. A destination whose partner id the event lacks is skipped.
        """
        if event.destination is None and (only := self._only.get(event.segment)) is not None:
            partner_id = event.partner_id(only.user_dpid)  # the usual case, in short
            return ([(only, partner_id)], []) if partner_id is not None else ([], [NO_PARTNER_ID])
        if event.destination is not None:
            dest = self._by_id.get(event.destination)
            if dest is None:
                return [], [UNKNOWN_DESTINATION]
            candidates: list[Destination] = [dest]
        else:
            mapped = self._by_segment.get(event.segment)
            candidates = (self._all + mapped if self._all else mapped) if mapped else self._all
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
