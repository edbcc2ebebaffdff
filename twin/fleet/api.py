"""The fleet's one control API: the single twin's server (twin.control_api.ControlApi: the
same aiohttp app, the same middleware, limits, Host/Origin/token checks and JSON errors),
with a fleet route table.

- ``GET /api/stations``: every member, its registration, link and connector statuses;
- ``/api/stations/{station}/...``: the single-station routes (state, plug, unplug, rfid,
  connector faults, EV, network, tamper, fault rules, trace, the event stream), answered by the single
  twin's own handlers run against that member's Runtime, so the validation is the same;
- ``POST /api/fleet/reboot`` (rolling, or all at once: a boot storm), ``POST /api/fleet/network``
  (a blackout and the recovery), ``POST /api/fleet/traffic`` (the automatic sessions);
- ``GET /metrics``: every member in one registry; ``GET /api/openapi.json``;
- ``GET /``: the dashboard, which lists the members and opens one station's page.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from aiohttp import web

from twin.control_api import (
    _TWIN, ApiError, ControlApi, _boolean, _integer, _json_object, _number, _query, _query_integer, _required,
    _Route,
)
from twin.fleet import traffic as fleet_traffic

# The single-station routes a member serves under /api/stations/{station}, the event stream
# included (one subscription per client, to the one member it names). Not here: the debug
# route (it blocks the loop every member shares), /metrics and the OpenAPI document (the
# fleet's own).
MEMBER_PATHS = frozenset({
    "/api/state", "/api/connectors/{id}/plug", "/api/connectors/{id}/unplug", "/api/rfid",
    "/api/connectors/{id}/fault", "/api/connectors/{id}/ev", "/api/network", "/api/tamper",
    "/api/faults", "/api/faults/{id}", "/api/trace", "/api/events",
})
# Served as they are: the dashboard's page and files (the page finds /api/stations and shows
# the fleet's list), the metrics and the fleet's own OpenAPI document.
FLEET_PATHS = frozenset({"/", "/dashboard/{name}", "/metrics", "/api/openapi.json"})
MEMBER_EVENTS_RE = re.compile(r"/api/stations/[^/]+/events")
STATION_PARAM = {"name": "station", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "the member's chargePointId, e.g. P0001"}
REBOOT_INTERVAL_MAX_S = 3600.0
MAX_PAGE = 10_000  # GET /api/stations?limit=
MAX_OFFSET = 10**9
MAX_QUERY_CHARS = 200
TRAFFIC_SEED_MAX = 2**63 - 1


class _MemberView(ControlApi):
    """The single twin's handlers bound to one member. Never started: the fleet's app routes
    to its handlers after the fleet's middleware has checked the request."""

    def _route_table(self) -> list[_Route]:
        return []  # its routes are the fleet's; nothing to build per request

    def _connector(self, request: web.Request, *, station_ok: bool = False) -> int:
        # /api/stations/{station}/connectors/{id}/...: the connector id is the 6th segment.
        raw_id = request[_TWIN].path.split("/")[5]
        count = self.backend.connector_count
        lowest = 0 if station_ok else 1
        if not (raw_id.isascii() and raw_id.isdigit() and lowest <= int(raw_id) <= count):
            raise ApiError(404, f"no connector {raw_id!r}: connector ids are integers {lowest}..{count}")
        return int(raw_id)


class FleetApi(ControlApi):
    """``backend`` is a :class:`twin.fleet.fleet.Fleet`."""

    @classmethod
    def from_blueprint(cls, fleet: Any, cfg: Any, host: str | None = None, port: int | None = None) -> "FleetApi":
        """The blueprint's [control] table (token, allowed origins, debug off) at ``host:port``."""
        return cls(fleet, host or cfg.control_host, cfg.control_port if port is None else port,
                   token=cfg.control_token, allowed_origins=cfg.control_allowed_origins)

    def _route_table(self) -> list[_Route]:
        obj = {"type": "object", "additionalProperties": False}
        single = ControlApi._route_table(self)  # the single twin's table: paths, schemas, summaries
        routes = [
            _Route("GET", "/api/stations", self._stations,
                   "Every member (or one page of those that match q): registration, link, connector statuses",
                   tag="fleet", result={"type": "object", "additionalProperties": True},
                   params=({"name": "offset", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                            "description": "skip this many of the matching members"},
                           {"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                            "description": "at most this many members (default: all)"},
                           {"name": "q", "in": "query", "required": False,
                            "schema": {"type": "string", "maxLength": MAX_QUERY_CHARS},
                            "description": "words that must all match: in the id, or the start of a "
                                           "registration, link, connector status or errorCode"})),
            _Route("POST", "/api/fleet/reboot", self._fleet_reboot,
                   "Reboot every member: rolling (batch every interval_s) or all at once (a boot storm)",
                   tag="fleet", body_required=True, errors=(409,), result={"type": "object"},
                   body={**obj, "required": ["rolling"], "properties": {
                       "rolling": {"type": "boolean"}, "batch": {"type": "integer", "minimum": 1},
                       "interval_s": {"type": "number", "minimum": 0, "maximum": REBOOT_INTERVAL_MAX_S}}}),
            _Route("POST", "/api/fleet/network", self._fleet_network, "Every member's CSMS link: blackout or recovery",
                   tag="fleet", body_required=True, result={"type": "object"},
                   body={**obj, "required": ["online"], "properties": {"online": {"type": "boolean"}}}),
            _Route("POST", "/api/fleet/traffic", self._fleet_traffic,
                   "Automatic seeded sessions on every member at sessions_per_hour per station (0: stop)",
                   tag="fleet", body_required=True, errors=(409,), result={"type": "object"},
                   body={**obj, "required": ["sessions_per_hour"], "properties": {
                       "sessions_per_hour": {"type": "number", "minimum": 0,
                                             "maximum": fleet_traffic.MAX_SESSIONS_PER_HOUR},
                       "seed": {"type": "integer", "minimum": 0, "maximum": TRAFFIC_SEED_MAX},
                       "mean_duration_s": {"type": "number", "minimum": fleet_traffic.MEAN_DURATION_RANGE_S[0],
                                           "maximum": fleet_traffic.MEAN_DURATION_RANGE_S[1]},
                       "tags": {"type": "array", "minItems": 1, "maxItems": fleet_traffic.MAX_TAGS,
                                "uniqueItems": True, "items": {"type": "string", "minLength": 1,
                                                               "maxLength": fleet_traffic.ID_TAG_MAX_LEN}}}}),
        ]
        for route in single:
            if route.path in MEMBER_PATHS:
                routes.append(dataclasses.replace(
                    route, path="/api/stations/{station}" + route.path[len("/api"):],
                    handler=self._delegate(route.handler.__name__), params=(STATION_PARAM, *route.params)))
            elif route.path in FLEET_PATHS:
                routes.append(route)
        return routes

    def _delegate(self, name: str):
        async def handler(request: web.Request) -> Any:
            view = _MemberView(self._member(request), request_timeout=self.request_timeout,
                               backend_timeout=self.backend_timeout, sse_keepalive_s=self.sse_keepalive_s)
            view._streams = self._streams  # the fleet API's stop() ends a member's event streams too
            return await getattr(view, name)(request)

        handler.__name__ = "station" + name  # the OpenAPI operationId: station-plug, station-rfid...
        return handler

    def _is_event_stream(self, path: str) -> bool:
        return MEMBER_EVENTS_RE.fullmatch(path) is not None

    def _member(self, request: web.Request) -> Any:
        cp_id = request.match_info["station"]
        rt = self.backend.member(cp_id)
        if rt is not None:
            return rt
        if cp_id in self.backend.slots:
            raise ApiError(503, f"station {cp_id!r} is starting or rebooting; ask again shortly",
                           headers={"Retry-After": "1"})
        raise ApiError(404, f"no station {cp_id[:40]!r} in this fleet")

    # -- fleet handlers

    async def _stations(self, request: web.Request) -> dict:
        req = request[_TWIN]
        _json_object(req, set(), body_required=False)
        params = _query(req, ("offset", "limit", "q"))
        offset = _query_integer(params, "offset", 0, MAX_OFFSET)
        limit = _query_integer(params, "limit", 1, MAX_PAGE)
        query = params.get("q", "")
        if len(query) > MAX_QUERY_CHARS:
            raise ApiError(400, f"'q' is longer than {MAX_QUERY_CHARS} characters")
        return self.backend.stations(offset=offset or 0, limit=limit, query=query)

    async def _fleet_reboot(self, request: web.Request) -> dict:
        data = _json_object(request[_TWIN], {"rolling", "batch", "interval_s"}, body_required=True)
        rolling = _boolean("rolling", _required(data, "rolling"))
        if not rolling and ("batch" in data or "interval_s" in data):
            raise ApiError(400, "'batch' and 'interval_s' are for a rolling reboot; a boot storm reboots all at once")
        batch = _integer("batch", data["batch"], minimum=1, maximum=len(self.backend.slots)) if "batch" in data else 1
        interval = (_number("interval_s", data["interval_s"], minimum=0.0, maximum=REBOOT_INTERVAL_MAX_S)
                    if "interval_s" in data else 0.0)
        try:
            return self.backend.reboot(rolling=rolling, batch=batch, interval_s=interval)
        except RuntimeError as e:
            raise ApiError(409, str(e)) from None

    async def _fleet_traffic(self, request: web.Request) -> dict:
        data = _json_object(request[_TWIN], {"sessions_per_hour", "seed", "mean_duration_s", "tags"},
                            body_required=True)
        rate = _number("sessions_per_hour", _required(data, "sessions_per_hour"), minimum=0.0,
                       maximum=fleet_traffic.MAX_SESSIONS_PER_HOUR)
        seed = _integer("seed", data["seed"], minimum=0, maximum=TRAFFIC_SEED_MAX) if "seed" in data else None
        low, high = fleet_traffic.MEAN_DURATION_RANGE_S
        mean = _number("mean_duration_s", data["mean_duration_s"], minimum=low, maximum=high) \
            if "mean_duration_s" in data else None
        tags = data.get("tags")
        if tags is not None and not isinstance(tags, list):
            raise ApiError(400, f"'tags' must be an array of idTags, got {type(tags).__name__}")
        try:
            return self.backend.traffic.configure(rate, seed=seed, mean_duration_s=mean, tags=tags)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        except RuntimeError as e:  # the fleet is stopping (this API answers until its members stopped)
            raise ApiError(409, str(e)) from None

    async def _fleet_network(self, request: web.Request) -> dict:
        data = _json_object(request[_TWIN], {"online"}, body_required=True)
        return self.backend.set_network(_boolean("online", _required(data, "online")))

