"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

The paths, parameters and envelopes are written here next to the views (web/views.py,
web/api.py): Faust's views carry no schema. The records' components (KPI window, session,
page, traffic value, funnel day, experiment variant, cohort cell, ...) are derived from their
one definition in models/records.py, whose field descriptions state the SPEC rules clients rely
on; tests/integration/test_openapi_answers.py checks real answers against this document.
"""

from __future__ import annotations

from typing import Any

from faust import web

from analytics.traffic import DIMENSIONS
from analytics.validation import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES
from app import app
from models.schemas import component_schemas
from web.api_params import (
    DEFAULT_LIMIT,
    DEFAULT_MINUTES,
    MAX_LIMIT,
    MAX_MINUTES,
    MAX_USER_ID_CHARS,
)
from web.history_params import (
    DEFAULT_EXPERIMENTS,
    DEFAULT_SESSIONS,
    MAX_BUCKETS,
    MAX_COHORT_DAYS,
    MAX_EXPERIMENTS,
    MAX_FUNNEL_DAYS,
    MAX_SESSIONS,
)
from web.views import INGEST_PATH

#: cohorts.max_day_offset: no cohort cell beyond it is published
MAX_DAY_OFFSET = app.analytics_settings.cohorts.max_day_offset


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


INTEGER: dict[str, Any] = {"type": "integer"}
NUMBER: dict[str, Any] = {"type": "number"}
STRING: dict[str, Any] = {"type": "string"}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
TIMESTAMP: dict[str, Any] = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339, UTC, milliseconds, e.g. 2026-01-01T00:00:00.000Z",
}
NULLABLE_TIMESTAMP: dict[str, Any] = {**TIMESTAMP, "type": ["string", "null"]}

BAD_PARAMETER = _json(
    _ref("Error"), "A parameter is wrong; `error` starts with its name and says why."
)
UNAVAILABLE = _json(
    _ref("Error"), "The worker group is rebalancing and nobody owns the state yet; retry."
)
UNKNOWN_USER = _json(_ref("Error"), "No event of this user has been processed.")
#: the refusals of access control (web/access.py) and of the Kafka gate (web/broker_gate.py)
RETRY_AFTER = {"Retry-After": {"schema": INTEGER, "description": "seconds to wait"}}
INGEST_REFUSALS = {
    "401": _json(_ref("Error"), "An ingest key is configured and none (or a wrong one) was sent."),
    "403": _json(_ref("Error"), "A read or admin token was sent: ingestion needs an ingest key."),
    "429": {
        **_json(_ref("Error"), "The key is over its rate limit (`access.ingest_rate_limit`)."),
        "headers": RETRY_AFTER,
    },
    "503": {
        **_json(
            _obj(
                {
                    "error": STRING,
                    "stored": {"enum": ["no", "unknown"]},
                    "event_ids": {"type": "array", "items": STRING},
                },
                ["error", "stored"],
            ),
            "Kafka did not take the events within `sources.http.publish_timeout`: `stored` "
            "says whether they may still arrive; a retry with these `event_ids` counts once.",
        ),
        "headers": RETRY_AFTER,
    },
}
#: who may call what (web/access.py): ingest keys for ingestion, the read token for the rest
INGEST_SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"Bearer": []}]
MINUTES = {
    "name": "minutes",
    "in": "query",
    "description": "Final windows overlapping the last `minutes` minutes before `as_of`.",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES, "default": DEFAULT_MINUTES},
}
USER_ID = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "description": "The user_id of the events (URL-encoded).",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_CHARS},
}

DATABASE_UNAVAILABLE = _json(
    _ref("Error"),
    "The database cannot answer (down, unreachable, no answer within 5 s); `error` says why. "
    "The body also has `source: database`.",
)
SOURCE_LIVE = {"type": "string", "const": "live", "description": "answered from the live state"}
SOURCE_DATABASE = {
    "type": "string",
    "const": "database",
    "description": "answered from the sink tables (any worker answers, no routing)",
}


def _time_parameter(name: str, role: str, note: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": f"{role}; RFC 3339, no offset means UTC; {note}",
        "schema": {"type": "string", "format": "date-time"},
    }


def _day_range(what: str, most: int) -> list[dict[str, Any]]:
    """``from`` and ``to``: required dates, both included, at most ``most`` days apart."""
    return [
        {
            "name": name,
            "in": "query",
            "required": True,
            "description": f"{role} {what}, YYYY-MM-DD; at most {most} days from `from` to `to`",
            "schema": {"type": "string", "format": "date"},
        }
        for name, role in (("from", "first"), ("to", "last"))
    ]


LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}

RANGE_HEAD: dict[str, Any] = {
    "as_of": {
        **NULLABLE_TIMESTAMP,
        "description": "the stream's watermark (event time; follows the wall clock when the "
        "stream is quiet); null before any window is final",
    },
    "from": {**NULLABLE_TIMESTAMP, "description": "as_of minus `minutes`"},
    "minutes": INTEGER,
    "windows": {
        "type": "array",
        "items": TIMESTAMP,
        "description": "starts of the final windows added up",
    },
}

FUNNEL = _obj(
    {
        "name": {**STRING, "description": "the funnel-stats key's first part and the path segment"},
        "window": {**STRING, "description": "the conversion window, as the settings write it"},
        "window_ms": INTEGER,
        "stages": {
            "type": "array",
            "items": STRING,
            "description": "2 to 10, in order: `action` or `action:page-prefix`",
        },
    }
)

EXPERIMENT = _obj(
    {
        "experiment": STRING,
        "users": {**INTEGER, "description": "its variants' users added up (a user is in one)"},
        "variant_conflicts": INTEGER,
        "updated_at": {**TIMESTAMP, "description": "when a variant of it was last stored"},
        "variants": {
            "type": "array",
            "items": _ref("ExperimentVariant"),
            "description": "the control first, then the others by name; figures over all "
            "events so far, as last published on experiment-stats",
        },
    }
)

COHORT = _obj(
    {
        "cohort": {**STRING, "format": "date"},
        "cohort_size": {**INTEGER, "description": "the size its latest stored cell says"},
        "days": {
            "type": "array",
            "items": _ref("CohortCell"),
            "description": "its stored cells from day offset 0 up to `days`, as published on "
            "cohort-stats (live or final); a day not yet begun, or begun without a cell "
            "published yet, has none",
        },
    }
)

EVENT = {
    "type": "object",
    "description": "SPEC section 1. Unknown fields are rejected.",
    "additionalProperties": False,
    "required": ["user_id", "action"],
    "properties": {
        "event_id": {**STRING, "minLength": 1, "maxLength": 64},
        "user_id": {**STRING, "minLength": 1, "maxLength": 128},
        "session_id": {**STRING, "maxLength": 128},
        "action": {**STRING, "minLength": 1, "maxLength": 64, "pattern": "^[a-z0-9_.:-]+$"},
        "page": {
            **STRING,
            "maxLength": 2048,
            "description": "required, non-empty, for page_view",
        },
        "timestamp": {
            **STRING,
            "format": "date-time",
            "description": "RFC 3339; absent means the time of ingestion; no offset means UTC",
        },
        "duration": {"type": "integer", "minimum": 0, "maximum": 86_400_000},
        "metadata": {
            "type": "object",
            "description": "at most 32 KiB; metadata.amount is the revenue of a purchase",
        },
        "ip_address": {**STRING, "description": "IPv4 or IPv6"},
        "user_agent": {**STRING, "maxLength": 1024},
        "country": {**STRING, "description": "ISO 3166-1 alpha-2, any case"},
        "device": {"type": "string", "enum": ["mobile", "desktop", "tablet", "bot", "other"]},
    },
}

FIELD_ERROR = _obj({"field": STRING, "message": STRING})
REJECTED = _obj(
    {
        "error": {**STRING, "description": "every problem as 'field: message', joined by '; '"},
        "errors": {"type": "array", "items": _ref("FieldError")},
    }
)

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Real-time analytics API",
        "version": "1.0.0",
        "description": (
            "Event ingestion and queries over the live state of the Faust workers and over the "
            "database the sinks write. Any worker answers every request: it forwards live "
            "queries to the worker that holds the state (Faust table routing) and answers "
            "database queries itself; answers with two sources say which (`source`). KPI, "
            "page and traffic figures follow SPEC sections 4-5, funnels, cohorts and A/B tests "
            "sections 7-9; live windows are kept for `engine.history_retention` (event time, "
            "default 24 h)."
        ),
    },
    "paths": {
        INGEST_PATH: {
            "post": {
                "summary": "Ingest one event",
                "requestBody": {
                    "required": True,
                    "description": f"at most {MAX_EVENT_BYTES} bytes",
                    "content": {"application/json": {"schema": _ref("Event")}},
                },
                "responses": {
                    "202": _json(
                        _obj({"event_id": STRING}), "Accepted; the event_id, assigned if absent."
                    ),
                    "400": _json(_ref("Rejected"), "Invalid; sent to the dead-letter topic."),
                    "413": _json(_ref("Rejected"), "Body too large; dead-lettered."),
                    **INGEST_REFUSALS,
                },
                "security": INGEST_SECURITY,
            }
        },
        INGEST_PATH + "/batch": {
            "post": {
                "summary": "Ingest a batch of events, checked one by one",
                "requestBody": {
                    "required": True,
                    "description": f"at most {MAX_BATCH_BYTES} bytes and {MAX_BATCH_EVENTS} events",
                    "content": {
                        "application/json": {
                            "schema": _obj({"events": {"type": "array", "items": _ref("Event")}})
                        }
                    },
                },
                "responses": {
                    "202": _json(_ref("BatchResult"), "At least one event accepted."),
                    "400": _json(
                        {"oneOf": [_ref("BatchResult"), _ref("Rejected")]},
                        "No event accepted, or the body is not a batch.",
                    ),
                    "413": _json(_ref("Rejected"), "Body or batch too large; dead-lettered."),
                    **INGEST_REFUSALS,
                },
                "security": INGEST_SECURITY,
            }
        },
        "/health": {
            "get": {
                "security": [],
                "summary": "Liveness, Kafka connectivity and database sinks of this worker",
                "description": (
                    "503 only when Kafka does not answer. A degraded database sink (database "
                    "down or refusing writes) gives 200 with status `degraded`: the worker is "
                    "waiting correctly (nothing is lost or acknowledged) and restarting it would "
                    "not help; `sinks` has each sink's state and last error."
                ),
                "responses": {
                    "200": _json(_ref("Health"), "Kafka answers (status degraded: a sink is)."),
                    "503": _json(_ref("Health"), "Kafka does not answer."),
                },
            }
        },
        "/api/kpis/current": {
            "get": {
                "summary": "The newest window's KPIs, live or final",
                "responses": {
                    "200": _json(
                        _obj({"kpi": {"oneOf": [_ref("KpiRecord"), {"type": "null"}]}}),
                        (
                            "kpi is null before the first window has events. A live record "
                            "(is_final false) has provisional trends: trends_provisional, "
                            "trends_elapsed_seconds."
                        ),
                    ),
                    "400": BAD_PARAMETER,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/api/kpis": {
            "get": {
                "summary": "KPI windows in [from, to): live state, or bucketed from the database",
                "description": (
                    "Without `bucket`: KPI records from the live state, final windows plus the "
                    "newest window while it is still live (is_final false); windows without "
                    "events are absent (SPEC 4). With `bucket`: sums of the final windows "
                    "starting in [from, to) per bucket, from the kpi_metrics table (time_bucket "
                    "on TimescaleDB, date_bin otherwise; buckets lie on the UTC grid, the first "
                    "and last may be partial). Live rows are not included: the live answer "
                    "shows the open window. `revenue_per_user` is left out of buckets (it needs "
                    "distinct users across windows)."
                ),
                "parameters": [
                    _time_parameter(
                        "from", "inclusive start", "absent: open; required with bucket"
                    ),
                    _time_parameter("to", "exclusive end", "absent: open; required with bucket"),
                    {
                        "name": "bucket",
                        "in": "query",
                        "description": (
                            "given: the database answers; at most "
                            f"{MAX_BUCKETS} buckets between from and to"
                        ),
                        "schema": {"type": "string", "enum": ["1m", "1h", "1d"]},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "oneOf": [
                                _obj(
                                    {
                                        "source": SOURCE_LIVE,
                                        "from": NULLABLE_TIMESTAMP,
                                        "to": NULLABLE_TIMESTAMP,
                                        "windows": {"type": "array", "items": _ref("KpiRecord")},
                                    }
                                ),
                                _obj(
                                    {
                                        "source": SOURCE_DATABASE,
                                        "from": TIMESTAMP,
                                        "to": TIMESTAMP,
                                        "bucket": {"type": "string", "enum": ["1m", "1h", "1d"]},
                                        "buckets": {"type": "array", "items": _ref("KpiBucket")},
                                    }
                                ),
                            ]
                        },
                        "Windows (live) or buckets (database) in start order; buckets without "
                        "final windows are absent.",
                    ),
                    "400": BAD_PARAMETER,
                    "503": _json(
                        _ref("Error"),
                        "Live: the group is rebalancing. Database: it cannot answer; `error` "
                        "says why.",
                    ),
                },
            }
        },
        "/api/pages/top": {
            "get": {
                "summary": "Most viewed pages: views descending, then page ascending",
                "description": (
                    "With `minutes` (or no range): the final windows of the last minutes, from "
                    "the live state. With `from`/`to` (both required then): the windows "
                    "starting in [from, to), from the page_view_stats table. `minutes` "
                    "together with `from`/`to` is a 400."
                ),
                "parameters": [
                    MINUTES,
                    _time_parameter("from", "inclusive start", "given: the database answers"),
                    _time_parameter("to", "exclusive end", "given: the database answers"),
                    LIMIT,
                ],
                "responses": {
                    "200": _json(
                        {
                            "oneOf": [
                                _obj(
                                    {
                                        "source": SOURCE_LIVE,
                                        **RANGE_HEAD,
                                        "limit": INTEGER,
                                        "pages": {"type": "array", "items": _ref("Page")},
                                    }
                                ),
                                _obj(
                                    {
                                        "source": SOURCE_DATABASE,
                                        "from": TIMESTAMP,
                                        "to": TIMESTAMP,
                                        "limit": INTEGER,
                                        "pages": {"type": "array", "items": _ref("Page")},
                                    }
                                ),
                            ]
                        },
                        "Pages over the final windows of the range.",
                    ),
                    "400": BAD_PARAMETER,
                    "503": _json(
                        _ref("Error"),
                        "Live: the group is rebalancing. Database: it cannot answer; `error` "
                        "says why.",
                    ),
                },
            }
        },
        "/api/traffic": {
            "get": {
                "summary": "Traffic by device, country or browser: events descending, then value",
                "parameters": [
                    {
                        "name": "dimension",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "enum": list(DIMENSIONS)},
                    },
                    MINUTES,
                ],
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                **RANGE_HEAD,
                                "dimension": {"type": "string", "enum": list(DIMENSIONS)},
                                "values": {"type": "array", "items": _ref("TrafficValue")},
                            }
                        ),
                        "The dimension's values over the final windows of the range.",
                    ),
                    "400": BAD_PARAMETER,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/api/users/{user_id}": {
            "get": {
                "summary": "A user's profile counters",
                "parameters": [USER_ID],
                "responses": {
                    "200": _json(_ref("UserProfile"), "The user's figures so far."),
                    "400": BAD_PARAMETER,
                    "404": UNKNOWN_USER,
                    "503": UNAVAILABLE,
                },
            },
            "delete": {
                "summary": "Erase a user (needs the admin token)",
                "description": (
                    "Removes the user's live state, dedup records and profile, writes "
                    "tombstones to the topics keyed by user_id, and has the session sink "
                    "delete the user's session_metrics rows; figures of final windows and "
                    "the anonymous SPEC 7-9 counters stay (README, Erasure). Idempotent: "
                    "erasing again answers 200 with nothing removed."
                ),
                "parameters": [USER_ID],
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                "user_id": {"type": "string"},
                                "erased": {"type": "boolean"},
                                "removed": _obj(
                                    {
                                        "profile": {"type": "boolean"},
                                        "events": {"type": "integer"},
                                        "open_sessions": {"type": "integer"},
                                        "state_keys": {"type": "integer"},
                                        "dedup_records": {"type": "integer"},
                                    }
                                ),
                            }
                        ),
                        "Done: what was removed (all zero when there was nothing left).",
                    ),
                    "202": _json(
                        _obj({"user_id": {"type": "string"}, "queued": {"type": "object"}}),
                        "Queued: the tracker has not done it within erasure.wait; it will.",
                    ),
                    "400": BAD_PARAMETER,
                    "401": _json(_ref("Error"), "No admin token (or a wrong one) was sent."),
                    "403": _json(_ref("Error"), "Not the admin token, or none is configured."),
                    "503": UNAVAILABLE,
                },
            },
        },
        "/api/sessions": {
            "get": {
                "summary": "A user's closed sessions, from the database",
                "description": (
                    "Sessions of the session_metrics table (closed, SPEC 3) whose start is in "
                    "[from, to), oldest first, at most `limit`; `truncated` says more exist "
                    "(ask again with `from` after the last start). Open sessions are on "
                    "/api/sessions/{user_id}. Any worker answers."
                ),
                "parameters": [
                    {**USER_ID, "in": "query"},
                    _time_parameter("from", "inclusive start of window_start", "absent: open"),
                    _time_parameter("to", "exclusive end of window_start", "absent: open"),
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_SESSIONS,
                            "default": DEFAULT_SESSIONS,
                        },
                    },
                ],
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                "source": SOURCE_DATABASE,
                                "user_id": STRING,
                                "from": NULLABLE_TIMESTAMP,
                                "to": NULLABLE_TIMESTAMP,
                                "limit": INTEGER,
                                "truncated": BOOLEAN,
                                "sessions": {"type": "array", "items": _ref("ClosedSession")},
                            }
                        ),
                        "Closed sessions, oldest first (an unknown user has none).",
                    ),
                    "400": BAD_PARAMETER,
                    "503": DATABASE_UNAVAILABLE,
                },
            }
        },
        "/api/alerts": {
            "get": {
                "summary": "Alert rules, the firing alerts and the recent transitions (SPEC 10)",
                "description": (
                    "The `alerts.rules` of the configuration; `firing`: for each rule whose "
                    "last transition on kpi-alerts is `firing`, that transition; `recent`: the "
                    "last transitions, newest first. Read from kpi-alerts by every worker "
                    "(committed records), so any worker answers; `caught_up` is false while "
                    "the worker is still reading the topic's earlier records."
                ),
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                "rules": {"type": "array", "items": _ref("AlertRule")},
                                "firing": {"type": "array", "items": _ref("AlertTransition")},
                                "recent": {"type": "array", "items": _ref("AlertTransition")},
                                "caught_up": BOOLEAN,
                            }
                        ),
                        "The rules and their state (no rules: empty lists).",
                    ),
                    "400": BAD_PARAMETER,
                },
            }
        },
        "/api/funnels": {
            "get": {
                "summary": "The configured funnels (SPEC 7)",
                "description": "The `funnels:` of the configuration, in order. Any worker answers.",
                "responses": {
                    "200": _json(
                        _obj({"funnels": {"type": "array", "items": _ref("Funnel")}}),
                        "Every configured funnel (none: an empty list).",
                    ),
                    "400": BAD_PARAMETER,
                },
            }
        },
        "/api/funnels/{name}": {
            "get": {
                "summary": "A funnel per day and over a range of days, from the database",
                "description": (
                    "The days of the funnel_stats table from `from` to `to` (both included), "
                    "as published on funnel-stats (live or final), and their total: users "
                    "reached added up per stage, drop-off from those sums, medians from the "
                    "days' merged durations (exact). A day without attempts has no row. A day "
                    "stored with other stages than the configured funnel's is listed but left "
                    "out of the total (`excluded_from_total`). Any worker answers."
                ),
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": "a configured funnel (GET /api/funnels)",
                        "schema": STRING,
                    },
                    *_day_range("UTC day", MAX_FUNNEL_DAYS),
                ],
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                "source": SOURCE_DATABASE,
                                "funnel": STRING,
                                "from": {"type": "string", "format": "date"},
                                "to": {"type": "string", "format": "date"},
                                "is_final": {
                                    **BOOLEAN,
                                    "description": "every day of the range is final: a final "
                                    "day at or after `to` is stored, and every stored day of "
                                    "the range is final",
                                },
                                "days": {"type": "array", "items": _ref("FunnelDay")},
                                "total": _obj(
                                    {"stages": {"type": "array", "items": _ref("FunnelStage")}}
                                ),
                                "excluded_from_total": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "date"},
                                },
                            }
                        ),
                        "The stored days, oldest first, and their total.",
                    ),
                    "400": BAD_PARAMETER,
                    "404": _json(_ref("Error"), "No funnel of this name is configured."),
                    "503": DATABASE_UNAVAILABLE,
                },
            }
        },
        "/api/experiments": {
            "get": {
                "summary": "The A/B tests and their variants' figures, from the database (SPEC 9)",
                "description": (
                    "Every experiment the experiment_stats table holds (the `metadata.experiment` "
                    "values of the exposures so far), by name in code point order, each with its "
                    "variants' current figures as last published on experiment-stats. Any "
                    "worker answers."
                ),
                "parameters": [
                    {
                        **LIMIT,
                        "description": "at most this many experiments",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_EXPERIMENTS,
                            "default": DEFAULT_EXPERIMENTS,
                        },
                    }
                ],
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                "source": SOURCE_DATABASE,
                                "control_variant": {
                                    **STRING,
                                    "description": "experiments.control_variant",
                                },
                                "limit": INTEGER,
                                "truncated": {
                                    **BOOLEAN,
                                    "description": "more experiments are stored than `limit`",
                                },
                                "experiments": {"type": "array", "items": _ref("Experiment")},
                            }
                        ),
                        "The stored experiments (none: an empty list).",
                    ),
                    "400": BAD_PARAMETER,
                    "503": DATABASE_UNAVAILABLE,
                },
            }
        },
        "/api/experiments/{name}": {
            "get": {
                "summary": "One A/B test and its variants' figures, from the database (SPEC 9)",
                "description": "The experiment's variants, the control first. Any worker answers.",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": "the experiment (`metadata.experiment`), URL-encoded",
                        "schema": STRING,
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            **EXPERIMENT,
                            "properties": {
                                "source": SOURCE_DATABASE,
                                "control_variant": STRING,
                                **EXPERIMENT["properties"],
                            },
                            "required": ["source", "control_variant", *EXPERIMENT["required"]],
                        },
                        "The experiment.",
                    ),
                    "400": BAD_PARAMETER,
                    "404": _json(
                        _ref("Error"),
                        "No row of this experiment is stored (no exposure to it yet); the body "
                        "also has `source: database`.",
                    ),
                    "503": DATABASE_UNAVAILABLE,
                },
            }
        },
        "/api/cohorts": {
            "get": {
                "summary": "Cohorts and retention as a triangle, from the database (SPEC 8)",
                "description": (
                    "The cohorts (UTC dates of users' first events) from `from` to `to` that "
                    "have users, oldest first, each with its cells of the cohort_stats table "
                    "for day offsets 0 to `days`, as published on cohort-stats (live or final). "
                    "Any worker answers."
                ),
                "parameters": [
                    *_day_range("cohort (UTC day)", MAX_COHORT_DAYS),
                    {
                        "name": "days",
                        "in": "query",
                        "description": "the last day offset shown; at most (and by default) "
                        "cohorts.max_day_offset",
                        "schema": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": MAX_DAY_OFFSET,
                            "default": MAX_DAY_OFFSET,
                        },
                    },
                ],
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                "source": SOURCE_DATABASE,
                                "from": {"type": "string", "format": "date"},
                                "to": {"type": "string", "format": "date"},
                                "days": INTEGER,
                                "cohorts": {"type": "array", "items": _ref("Cohort")},
                            }
                        ),
                        "The stored cohorts of the range with their cells.",
                    ),
                    "400": BAD_PARAMETER,
                    "503": DATABASE_UNAVAILABLE,
                },
            }
        },
        "/api/sessions/{user_id}": {
            "get": {
                "summary": "A user's open and recent sessions and profile counters",
                "description": (
                    "Open sessions are those not yet closed by the watermark (SPEC 3), with "
                    "their live figures. `recent` holds the user's last 10 closed sessions, "
                    "newest first, without their action and page counts; every closed session "
                    "is in the session-metrics topic and the session_metrics table, and the "
                    "profile counts them all (closed_sessions)."
                ),
                "parameters": [USER_ID],
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                "user_id": STRING,
                                "sessions": {"type": "array", "items": _ref("Session")},
                                "recent": {"type": "array", "items": _ref("RecentSession")},
                                "profile": _ref("UserProfile"),
                            }
                        ),
                        "Open sessions, oldest first.",
                    ),
                    "400": BAD_PARAMETER,
                    "404": UNKNOWN_USER,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "security": [],
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document.")},
            }
        },
        "/dashboard": {
            "get": {
                "summary": "The built-in live dashboard (docs/dashboard.md)",
                "responses": {
                    "200": {
                        "description": "The page; its script and style are served under "
                        "/dashboard/static/.",
                        "content": {"text/html": {"schema": STRING}},
                    }
                },
            }
        },
        "/dashboard/stream": {
            "get": {
                "summary": "The dashboard's data as Server-Sent Events",
                "description": (
                    "`snapshot` first ({current, windows, breakdowns}: the newest KPI record, "
                    "the last hour's KPI records, top pages and device/country traffic as "
                    "/api/pages/top and /api/traffic answer them), then `kpi` (a KPI record, "
                    "live or final, as published to live-kpis) and `breakdowns` (after each "
                    "final window); a comment every 15 s keeps the connection open."
                ),
                "responses": {
                    "200": {
                        "description": "An endless event stream.",
                        "content": {"text/event-stream": {"schema": STRING}},
                    }
                },
            }
        },
    },
    "security": [{"Bearer": []}, {"Basic": []}],
    "components": {
        "securitySchemes": {
            "ApiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "an ingest key (`access.ingest_keys`), when any is configured",
            },
            "Bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "an ingest key for ingestion; the read token (or the admin "
                "token) for everything else, when `access.read_token` is set",
            },
            "Basic": {
                "type": "http",
                "scheme": "basic",
                "description": "any user name, the read token as the password: what a browser "
                "sends for the dashboard and its event stream",
            },
        },
        "schemas": {
            "Error": _obj({"error": STRING}),
            "Event": EVENT,
            "FieldError": FIELD_ERROR,
            "Rejected": REJECTED,
            "BatchResult": _obj(
                {
                    "accepted": {
                        "type": "array",
                        "items": STRING,
                        "description": "event_ids of the accepted events, in batch order",
                    },
                    "rejected": {
                        "type": "array",
                        "items": _obj(
                            {
                                "index": INTEGER,
                                "errors": {"type": "array", "items": _ref("FieldError")},
                            }
                        ),
                    },
                }
            ),
            "Health": _obj(
                {
                    "status": {"type": "string", "enum": ["ok", "degraded"]},
                    "application": _obj(
                        {"name": STRING, "environment": STRING}, ["name", "environment"]
                    ),
                    "kafka": _obj(
                        {"connected": BOOLEAN, "brokers": INTEGER, "error": STRING},
                        ["connected"],
                    ),
                    "worker": _obj(
                        {
                            "rebalancing": BOOLEAN,
                            "user_events_partitions": {"type": "array", "items": INTEGER},
                        }
                    ),
                    "ingest": _obj(
                        {
                            "accepting": BOOLEAN,
                            "pending_bytes": INTEGER,
                            "max_pending_bytes": INTEGER,
                            "unavailable_since": NULLABLE_TIMESTAMP,
                            "error": {"type": ["string", "null"]},
                            "refused_since_down": INTEGER,
                        }
                    ),
                    "sinks": _ref("SinkHealth"),
                    "metrics": _obj(
                        {
                            "enabled": BOOLEAN,
                            "port": {"type": ["integer", "null"]},
                            "url": {"type": ["string", "null"]},
                        }
                    ),
                },
                ["status", "application", "kafka", "worker", "sinks"],
            ),
            "SinkHealth": _obj(
                {
                    "status": {
                        "type": "string",
                        "enum": ["starting", "ok", "degraded"],
                        "description": "the worst of the sinks' (starting: nothing written yet)",
                    },
                    "database": _obj(
                        {
                            "url": {"type": ["string", "null"], "description": "no password"},
                            "mode": {
                                "type": ["string", "null"],
                                "enum": ["postgresql", "timescaledb", None],
                            },
                        }
                    ),
                    "sinks": {"type": "object", "additionalProperties": _ref("Sink")},
                }
            ),
            "Sink": _obj(
                {
                    "table": STRING,
                    "topic": STRING,
                    "status": {"type": "string", "enum": ["starting", "ok", "degraded"]},
                    "rows_written": INTEGER,
                    "rows_dead_lettered": INTEGER,
                    "rows_waiting": INTEGER,
                    "failed_attempts": {**INTEGER, "description": "since the last success"},
                    "last_error": {"type": ["string", "null"]},
                    "degraded_since": NULLABLE_TIMESTAMP,
                    "last_write": NULLABLE_TIMESTAMP,
                }
            ),
            **component_schemas(),  # the records (models/records.py)
            "Funnel": FUNNEL,
            "Experiment": EXPERIMENT,
            "Cohort": COHORT,
            "AlertRule": _obj(
                {
                    "name": STRING,
                    "metric": {
                        **STRING,
                        "description": "a KPI figure of a live-kpis record, or custom.<name>",
                    },
                    "comparator": {"type": "string", "enum": [">", ">=", "<", "<="]},
                    "threshold": NUMBER,
                    "for": {**INTEGER, "description": "consecutive final windows"},
                }
            ),
            "AlertTransition": _obj(
                {
                    "rule": STRING,
                    "state": {"type": "string", "enum": ["firing", "resolved"]},
                    "window_start": {
                        **TIMESTAMP,
                        "description": "the final window the rule fired or resolved at",
                    },
                    "value": {
                        "type": ["number", "null"],
                        "description": "the metric in that window (null: the record lacked it)",
                    },
                    "threshold": NUMBER,
                    "metric": STRING,
                    "comparator": STRING,
                }
            ),
        },
    },
}


@app.page("/openapi.json")
class OpenApiView(web.View):
    """The API description; every worker serves the same one."""

    async def get(self, request: web.Request) -> web.Response:
        return self.json(OPENAPI)
