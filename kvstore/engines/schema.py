"""A partition's schema version, and the in-place upgrades of older partitions.

database_definition.sql creates a new partition's tables as they are now; its
statements are idempotent, so they also add any table an older partition
lacks.  A column an older table lacks comes from an upgrade below: each brings
a partition one schema version on, and the partition records the version it
reached in its metadata (SCHEMA_VERSION).  A partition that records none was
made before versions were recorded: version 1, the tables of the first
release (test/fixtures/schema_v1.sql).

Each upgrade checks before it changes anything, so two front ends (or a front
end and sync.py) opening one partition at once may both run it.  To add a
column: add it to database_definition.sql, for new partitions, and append an
Upgrade here, for older ones.
"""
import collections
import logging

from kvstore.engines.rows import as_text

log = logging.getLogger('kvstore.engines')
SCHEMA_VERSION = 'schema_version'   # the metadata row of the version a partition's tables are at

Upgrade = collections.namedtuple('Upgrade', 'version description apply')

# apply(engine, cursor): the upgrade's statements, on an autocommit cursor.
UPGRADES = (
    Upgrade(2, 'objects.seq, the change sequence sync.py follows',
            lambda engine, cursor: engine.add_change_sequence(cursor)),
    Upgrade(3, 'objects.expires and hints.expires, when a value is gone, and the index gc finds them by',
            lambda engine, cursor: add_expiry(engine, cursor)),
)
LATEST = UPGRADES[-1].version


def add_expiry(engine, cursor):
    for table in ('objects', 'hints'):
        engine.add_column(cursor, table, 'expires', 'BIGINT NOT NULL DEFAULT 0')
    cursor.execute('CREATE INDEX IF NOT EXISTS objects_expiry ON objects (deleted, expires)')


def upgrade(engine, cursor):
    """Bring the partition's tables (database_definition.sql just ran) to
    LATEST, recording each version reached.  Returns the version found."""
    engine._execute(cursor, 'SELECT value FROM metadata WHERE name = ?', (SCHEMA_VERSION.encode(),))
    row = cursor.fetchone()
    found = int(as_text(row[0])) if row else 1
    if found > LATEST:
        # A newer store upgraded it; its upgrades only add, so this one can
        # still read and write it.
        log.warning('partition %s has schema version %d; this store knows up to %d',
                    engine.name, found, LATEST)
        return found
    for step in UPGRADES:
        if step.version > found:
            log.info('partition %s: tables to schema version %d (%s)', engine.name, step.version, step.description)
            step.apply(engine, cursor)
            record(engine, cursor, step.version)
    return found


def record(engine, cursor, version):
    value = str(version).encode()
    engine._execute(cursor, 'UPDATE metadata SET value = ? WHERE name = ?', (value, SCHEMA_VERSION.encode()))
    engine._execute(cursor, engine.insert_if_absent + ' INTO metadata (name, value) VALUES (?, ?)',
                    (SCHEMA_VERSION.encode(), value))
