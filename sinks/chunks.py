"""TimescaleDB's internal chunk names in database errors, replaced by the hypertable's.

On a hypertable, PostgreSQL reports errors against the chunk a row went to, in
``_timescaledb_internal``: ``new row for relation "_hyper_3_1_chunk" violates check constraint
…``, ``duplicate key value violates unique constraint "3_7_page_view_stats_pkey"``, ``index
row size 2720 exceeds … for index "_hyper_3_1_chunk_session_metrics_user_time"``. Nobody
reading a dead letter or a sink's ``last_error`` knows those names; a sink knows which table
it was writing, so its errors name that table (and the table's constraint or index) instead.
"""

from __future__ import annotations

import re

# (compress_)_hyper_<hypertable id>_<chunk id>_chunk, schema-qualified or not, maybe followed
# by _<index name> (an index of the chunk is named after the chunk and the hypertable's index)
_CHUNK = re.compile(
    r"(?:\b_timescaledb_internal\.)?\b(?P<compressed>compress)?_hyper_\d+_\d+_chunk"
    r"(?:_(?P<index>\w+))?\b"
)
# a chunk's copy of a constraint: <chunk id>_<constraint id>_<the hypertable's constraint name>,
# which for this project's tables starts with the table's name (PostgreSQL's default names)
_CHUNK_CONSTRAINT = r'(?P<kind>\b(?:constraint|index) ")\d+_\d+_(?P<name>{table}_\w*")'


def name_hypertable(text: str, table: str) -> str:
    """``text`` (a database error about ``table``) with its chunks named as ``table``."""

    def chunk(match: re.Match[str]) -> str:
        if match.group("compressed"):
            return f"{table} (compressed)"
        return match.group("index") or table

    text = _CHUNK.sub(chunk, text)
    constraint = _CHUNK_CONSTRAINT.format(table=re.escape(table))
    return re.sub(constraint, r"\g<kind>\g<name>", text)
