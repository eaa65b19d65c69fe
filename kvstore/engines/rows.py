"""The tables of a partition, and versions as their rows."""
import json
import os
import uuid

from kvstore.coordinator.versions import Version, decode_version_clock

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           'database_definition.sql')
COLUMNS = 'version_id, clock, deleted, content_type, digest, modified, value, size, chunk_size, metadata, expires'
COLUMN_PLACEHOLDERS = ', '.join(['?'] * (COLUMNS.count(',') + 1))
INCARNATION = 'incarnation'   # the metadata row naming the partition's incarnation
CHANGES_CHECKPOINT = 'sync.changes'   # the metadata row of where sync.py stands (reconciler/changes.py)


def new_incarnation_id():
    return uuid.uuid4().hex[:12]


def schema_statements():
    with open(SCHEMA_PATH, encoding='utf-8') as f:
        text = '\n'.join(line.split('--')[0] for line in f)
    return [s.strip() for s in text.split(';') if s.strip()]


def column_count(columns):
    """How many columns a SELECT's list of expressions names (commas outside parentheses)."""
    depth, count = 0, 1
    for char in columns:
        depth += {'(': 1, ')': -1}.get(char, 0)
        count += char == ',' and depth == 0
    return count


def prefix_end(prefix):
    """The smallest byte string greater than every string starting with prefix."""
    stripped = prefix.rstrip(b'\xff')
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def row_to_version(row, source=None):
    """A Version from the columns of COLUMNS; source: the engine its chunks are on."""
    version_id, clock, deleted, content_type, digest, modified, value, size, chunk_size, metadata, expires = row
    seen, dot = decode_version_clock(clock)
    return Version(version_id=as_text(version_id), clock=seen, dot=dot,
                   size=int(size), chunk_size=int(chunk_size),
                   metadata=json.loads(metadata) if metadata else {},
                   chunk_source=source if chunk_size else None,
                   deleted=bool(deleted), content_type=as_text(content_type),
                   value=bytes(value), digest=as_text(digest), modified=int(modified), expires=int(expires))


def listed_version(version_id, deleted, clock, modified, size, content_type, expires):
    """Just enough of a version to tell which supersedes which (scan()), and
    what a listing shows of it: its size, type, date and expiry."""
    seen, dot = decode_version_clock(clock)
    return Version(version_id=as_text(version_id), clock=seen, dot=dot, deleted=bool(deleted),
                   content_type=as_text(content_type), value=b'', digest='', modified=int(modified), size=int(size),
                   expires=int(expires))


def as_text(value):
    """A column's value as text: MariaDB's binary columns come back as bytes."""
    return value.decode() if isinstance(value, (bytes, bytearray)) else value
