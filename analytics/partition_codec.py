"""How a partition's state (analytics.partition) is laid out as keys and values in its table.

Keys (bytes; user ids are UTF-8, which never contains 0xFF, so nothing collides with them):

=========================================  ===================================================
``<user_id>``                              a user: profile, session summaries, bookkeeping
                                           (bare, so Faust's table routing finds its owner)
``FF FD "R" <user_id> <session_id> <ts>``  a pending row of the user's session key (the
``<event_id>``                             ids length-prefixed), its value the row
``FF FF "clock"``                          the partition's clock
``FF FD "W" <start>``                      an open window's applied offset and live counters
``FF FD "M" <start> <user_id>``            a user active in an open window (empty value)
``FF FD "C" <deadline> <user_id>``         the close index: the user may have a session to
                                           close then
``FF FD "P" <user_id> <digest> <index>``   a piece of a user's value too large for one
                                           changelog record (the user_id length-prefixed)
=========================================  ===================================================

Two kinds of value are marked by their first byte, which JSON never starts with:

* ``WIDE`` (0x01): JSON with integers past 64 bits (analytics.wide_json), read exactly by the
  standard library. SPEC bounds no sum: a user's lifetime revenue passes 2**64 - 1 cents
  after 185 million purchases of the largest amount. Values that fit are written and read by
  orjson as before; a value is written wide only when orjson refuses it.
* ``PIECED`` (0x00), a user's value only: its JSON was over ``MAX_VALUE_BYTES`` (a session
  of many long pages keeps every distinct page in its summary, SPEC 1 bounds neither their
  number nor, up to 2,048 characters, their length), so it is stored as pieces under keys of
  their own, named by a digest of the whole, and the user's key holds ``[count, digest]``.
  The pieces are written before the user and the previous version's deleted after the
  clock, like folded rows, so any prefix of a batch's writes reads back whole.

Times in keys are 8 bytes big-endian, offset by 2**63, so byte order is time order (also
before 1970) and range scans find a user's rows, windows and due deadlines without reading
anything else. Values are JSON (orjson). State written by the previous version (users with
their open sessions' rows, windows and the close list inside the clock) is read too: see
``load_user`` and ``legacy_clock``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import orjson

from analytics import wide_json
from analytics.compact_json import compact_dumps
from analytics.record_chunks import MAX_RECORD_BYTES
from analytics.rows import Row
from analytics.sessions import SessionSummary
from analytics.state_store import StateStore, Write
from analytics.user_state import SessionKey, UserState
from analytics.watermark import Clock
from analytics.window_state import WindowState

CLOCK_KEY = b"\xff\xffclock"
WINDOW = b"\xff\xfdW"
MEMBER = b"\xff\xfdM"
CLOSE = b"\xff\xfdC"
ROW = b"\xff\xfdR"
PIECE = b"\xff\xfdP"
WIDE = 0x01
PIECED = 0x00
MAX_VALUE_BYTES = MAX_RECORD_BYTES
"""The largest value stored whole: every value is a changelog record too (a Kafka message)."""
_OFFSET = 2**63
VERSION = 3


def _time(ms: int) -> bytes:
    return (ms + _OFFSET).to_bytes(8, "big")


def _ms(data: bytes) -> int:
    return int.from_bytes(data[:8], "big") - _OFFSET


def window_key(start: int) -> bytes:
    return WINDOW + _time(start)


def member_key(start: int, user_id: str) -> bytes:
    return MEMBER + _time(start) + user_id.encode()


def close_key(deadline: int, user_id: str) -> bytes:
    return CLOSE + _time(deadline) + user_id.encode()


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def scan_windows(store: StateStore) -> Iterator[tuple[int, list[Any]]]:
    """(start, [applied, live counters]) of every stored window."""
    for key, value in store.scan(WINDOW, _prefix_end(WINDOW)):
        yield _ms(key[len(WINDOW) :]), _loads(value)


def scan_members(store: StateStore) -> Iterator[tuple[int, str]]:
    """(window start, user_id) of every stored window member."""
    for key, _ in store.scan(MEMBER, _prefix_end(MEMBER)):
        rest = key[len(MEMBER) :]
        yield _ms(rest), rest[8:].decode()


def scan_due(store: StateStore, watermark: int) -> Iterator[tuple[bytes, int, str]]:
    """(key, time, user_id) of the close index entries at or before ``watermark``."""
    for key, _ in list(store.scan(CLOSE, CLOSE + _time(watermark + 1))):
        rest = key[len(CLOSE) :]
        yield key, _ms(rest), rest[8:].decode()


def next_due(store: StateStore, watermark: int) -> int | None:
    """The time of the first close index entry after ``watermark``; None when none is."""
    for key, _ in store.scan(CLOSE + _time(watermark + 1), _prefix_end(CLOSE)):
        return _ms(key[len(CLOSE) :])
    return None


def count_index(store: StateStore) -> int:
    """Entries in the close index: one per user with open sessions."""
    return sum(1 for _ in store.scan(CLOSE, _prefix_end(CLOSE)))


# ---------------------------------------------------------------------- users


def _text(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def user_rows(user_id: str) -> bytes:
    """The prefix of every pending row key of a user."""
    return ROW + _text(user_id)


def row_key(user_id: str, row: Row) -> bytes:
    return user_rows(user_id) + _text(row.session_id) + _time(row.ts) + row.event_id.encode()


def encode_row(row: Row) -> bytes:
    return compact_dumps(list(row))


def _encode_summaries(key: SessionKey) -> orjson.Fragment:
    """The key's summaries as JSON, kept on it until they change."""
    if key.encoded is None:
        key.encoded = orjson.Fragment(compact_dumps([s.encode() for s in key.summaries]))
    fragment: orjson.Fragment = key.encoded
    return fragment


def encode_user(user: UserState) -> bytes:
    """The user's value: everything but its pending rows (they have keys of their own), and
    its SPEC 7-9 state last when it has one (analytics.journeys)."""
    try:
        keys = {session_id: _encode_summaries(key) for session_id, key in user.keys.items()}
        fields = _user_fields(user, user.recent_json(), keys)
        if user.journey is not None:
            fields.append(_journey_data(user.journey, fragments=True))
        return compact_dumps(fields)
    except orjson.JSONEncodeError:  # a sum past 64 bits (module docstring)
        plain = {sid: [s.encode() for s in key.summaries] for sid, key in user.keys.items()}
        fields = _user_fields(user, user.recent, plain)
        if user.journey is not None:
            fields.append(_journey_data(user.journey, fragments=False))
        return wide_dumps(fields)


def _journey_data(journey: Any, *, fragments: bool) -> Any:
    """A user's SPEC 7-9 state as stored: its data as read, or an analytics.journeys
    JourneyUser's."""
    return journey if isinstance(journey, list) else journey.data(fragments=fragments)


def _user_fields(user: UserState, recent: Any, keys: dict[str, Any]) -> list[Any]:
    return [
        VERSION,
        user.first_seen,
        user.last_seen,
        user.events,
        user.revenue_cents,
        user.devices,
        user.countries,
        user.closed_sessions,
        recent,
        user.applied,
        user.folded_until,
        user.index_at,
        keys,
    ]


def wide_dumps(value: Any) -> bytes:
    """``value`` as a ``WIDE`` value: JSON with integers of any size."""
    return bytes([WIDE]) + wide_json.dumps(value)


def _loads(data: bytes) -> Any:
    """A stored JSON value, written by ``compact_dumps`` or ``wide_dumps``."""
    if data[0] == WIDE:
        return wide_json.exact_loads(data[1:])
    return orjson.loads(data)


def _piece_prefix(user_id: str) -> bytes:
    return PIECE + _text(user_id)


def pieces_of(
    user_id: str, user: UserState, value: bytes
) -> tuple[bytes, list[Write], list[Write]]:
    """A user's value as stored: ``(the value at its key, pieces to write before it, pieces
    to delete after the clock)``. Whole when it fits, else in pieces (module docstring)."""
    before: list[Write] = []
    keys: list[bytes] = []
    if len(value) > MAX_VALUE_BYTES:
        digest = hashlib.blake2b(value, digest_size=8).digest()
        prefix = _piece_prefix(user_id) + digest
        for index, at in enumerate(range(0, len(value), MAX_VALUE_BYTES)):
            key = prefix + index.to_bytes(4, "big")
            before.append((key, value[at : at + MAX_VALUE_BYTES]))
            keys.append(key)
        value = bytes([PIECED]) + orjson.dumps([len(keys), digest.hex()])
    kept = set(keys)
    after: list[Write] = [(key, None) for key in user.pieces if key not in kept]
    user.pieces = keys
    return value, before, after


def _joined(
    store: StateStore, user_id: str, header: bytes
) -> tuple[bytes, list[bytes], list[bytes]]:
    """A pieced user's whole value, the keys of its pieces, and of stale pieces (a crash
    came between writing a new version and deleting the old one)."""
    count, digest = orjson.loads(header[1:])
    prefix = _piece_prefix(user_id)
    current = prefix + bytes.fromhex(digest)
    parts: list[bytes] = []
    keys: list[bytes] = []
    stale: list[bytes] = []
    for key, value in store.scan(prefix, _prefix_end(prefix)):
        if key.startswith(current):
            keys.append(key)
            parts.append(value)
        else:
            stale.append(key)
    if len(parts) != count:
        raise ValueError(f"user {user_id!r}: {len(parts)} of its {count} pieces are stored")
    return b"".join(parts), keys, stale


def load_user(store: StateStore, user_id: str) -> tuple[UserState, list[bytes]] | None:
    """A user with its pending rows, and the keys of rows it folded already (a crash came
    between writing it and deleting them): None for a user never seen."""
    stored = store.get(user_id.encode())
    if stored is None:
        return None
    stale: list[bytes] = []
    pieces: list[bytes] = []
    if stored[0] == PIECED:
        stored, pieces, stale = _joined(store, user_id, stored)
    user = decode_user(stored)
    user.pieces = pieces
    folded_until = user.folded_until
    prefix = user_rows(user_id)
    by_key: dict[str, list[Row]] = {}
    for key, value in store.scan(prefix, _prefix_end(prefix)):
        row = Row._make(orjson.loads(value))
        if folded_until is not None and row.ts < folded_until:
            stale.append(key)
        else:
            by_key.setdefault(row.session_id, []).append(row)
    for session_id, rows in by_key.items():
        key_state = user.keys.get(session_id)
        if key_state is None:
            key_state = user.keys[session_id] = SessionKey()
        key_state.pending = sorted(key_state.pending + rows)
    return user, stale


def decode_user(data: bytes) -> UserState:
    """A user's value, without its pending rows (``load_user`` adds them)."""
    value = _loads(data)
    if isinstance(value, dict):
        return _legacy_user(value)
    user = UserState()
    if len(value) > 13:  # the SPEC 7-9 state, decoded by analytics.journeys when used
        user.journey = value[13]
        value = value[:13]
    (
        _,
        user.first_seen,
        user.last_seen,
        user.events,
        user.revenue_cents,
        user.devices,
        user.countries,
        user.closed_sessions,
        user.recent,
        user.applied,
        user.folded_until,
        user.index_at,
        keys,
    ) = value
    for session_id, summaries in keys.items():
        key = user.keys[session_id] = SessionKey()
        key.summaries = [SessionSummary.decode(s) for s in summaries]
    return user


def _legacy_user(value: dict[str, Any]) -> UserState:
    """A user written by the previous version: every open row becomes a pending row, stored
    under its own key when the user is next written."""
    user = UserState()
    user.first_seen = value.get("first_seen")
    user.last_seen = value.get("last_seen")
    user.events = value.get("events", 0)
    user.revenue_cents = value.get("revenue_cents", 0)
    user.devices = list(value.get("devices", []))
    user.countries = list(value.get("countries", []))
    user.closed_sessions = value.get("closed_sessions", 0)
    user.recent = list(value.get("recent", []))
    user.applied = value.get("applied", -1)
    for session_id, rows in value.get("open", {}).items():
        key = user.keys[session_id] = SessionKey()
        key.pending = sorted(Row(*row) for row in rows)
        user.rows_added += key.pending
    return user


# ---------------------------------------------------------------------- windows and clock


def encode_window(window: WindowState) -> bytes:
    value = [window.applied, window.live_figures()]
    try:
        return compact_dumps(value)
    except orjson.JSONEncodeError:  # a sum past 64 bits (module docstring)
        return wide_dumps(value)


_CLOCK_FIELDS = (
    "max_ts",
    "wm",
    "last_arrival",
    "applied",
    "users_total",
    "late",
    "finalized_through",
)


def encode_clock(clock: Clock) -> bytes:
    return compact_dumps({"v": VERSION, **{name: getattr(clock, name) for name in _CLOCK_FIELDS}})


def decode_clock(data: bytes) -> Clock:
    value = orjson.loads(data)
    return Clock(**{name: value[name] for name in _CLOCK_FIELDS if name in value})


def legacy_clock(data: bytes) -> tuple[dict[int, list[str]], dict[int, dict[str, int]], list[str]]:
    """What the previous version kept inside its clock: open windows' users and live
    counters, and the users with sessions to close. Empty for a current clock."""
    value = orjson.loads(data)
    if value.get("v") == VERSION:
        return {}, {}, []
    windows = {int(start): list(users) for start, users in value.get("windows", {}).items()}
    live = {int(start): dict(counters) for start, counters in value.get("live", {}).items()}
    return windows, live, list(value.get("closing", {}))
