"""Storage engines: one partition's database, behind one small interface.

An engine stores the versions of keys for one partition and knows nothing of
rings, quorums or HTTP.  SQLite and MariaDB share the SQL; they differ only
in how they connect, how a write transaction locks, and the placeholder.

    read(bucket, key)                -> Held [Version], .fence: the bucket's fence
    coordinate(bucket, key, decide, stage, idempotency) -> (held, new version)  locked read-decide-write
                                     (stage: refuse, NewerView, if a newer view is recorded;
                                     idempotency: Recorded if the write was recorded before)
    apply(bucket, key, version)      -> True if stored          a replica takes a version
    many keys of a bucket (a batch): send_/finish_read_many(bucket, keys) -> (fence, {key: [Version]}),
        coordinate_many(bucket, [(key, decide)]) -> [(held, version)]  one transaction,
        send_/finish_apply_many(bucket, [(key, version, superseded)]) -> [kept]  one transaction
    scan(bucket, prefix, after, limit) -> Held [(key, ..., Version)]  byte order, no values
    hints: store_hint(), read_hints(), hints_for(), delete_hint(), hint_counts()
    bucket records: bucket_names(), read_bucket(), write_bucket(), drop_bucket()
    forced bucket deletes: drop_keys(), fence_bucket(), bucket_fences()
    reconciliation (sync.py): range_digests(), scan_points(), read_many(), apply_many(),
        pending_markers(), tombstones(), metadata, advisory locks
    what a partition holds (GET /cluster): count_keys(), usage()

The modules, one role each:
    failures.py   PartitionError and what a failure means (FULL, BAD_DATA, ...)
    rows.py       the schema's columns, versions as rows
    schema.py     a partition's schema version, and the in-place upgrades of older ones
    pool.py       a partition's idle connections
    sql.py        SQLEngine: connections, cursors, transactions, schema, metadata;
                  its SQL by role in keys.py, chunks.py, hints.py, buckets.py, reconcile.py,
                  idempotency.py
    sqlite.py     SQLiteEngine
    mariadb.py    MySQLEngine (MariaDB), its batched write transactions
    mysqlwire.py  MariaDB's queries sent and every answer read (PyMySQL connects)
"""
from kvstore.engines.failures import (BAD_DATA, CORRUPT, FULL, HEALTHY_FAILURES, LOCK_CONFLICT, REFUSED,
                                      NewerView, PartitionError, Recorded)
from kvstore.engines.mariadb import MySQLEngine
from kvstore.engines.pool import Pool
from kvstore.engines.rows import COLUMNS, INCARNATION
from kvstore.engines.sql import SQLEngine
from kvstore.engines.sqlite import SQLiteEngine

__all__ = ['BAD_DATA', 'CORRUPT', 'FULL', 'HEALTHY_FAILURES', 'LOCK_CONFLICT', 'NewerView', 'REFUSED',
           'PartitionError', 'Recorded',
           'COLUMNS', 'INCARNATION', 'Pool', 'SQLEngine', 'SQLiteEngine', 'MySQLEngine', 'open_engine']


def open_engine(partition, config):
    if partition.engine == 'sqlite':
        return SQLiteEngine(partition.name, partition.path, config.read_timeout)
    return MySQLEngine(partition.name, partition.host, partition.port, partition.user,
                       partition.password, partition.database,
                       config.connect_timeout, config.read_timeout)
