"""Storage engines: one partition's database, behind one small interface.

An engine stores the versions of keys for one partition and knows nothing of
rings, quorums or HTTP.  SQLite and MySQL/MariaDB share the SQL; they differ
only in how they connect, how a write transaction locks, and the placeholder.

    read(bucket, key)                -> [Version]
    coordinate(bucket, key, decide)  -> (held, new version)  locked read-decide-write
    apply(bucket, key, version)      -> True if stored          a replica takes a version
    scan(bucket, prefix, after, limit) -> [(key, Version)]      byte order, no values
    hints: store_hint(), read_hints(), hints_for(), delete_hint(), hint_counts()
    bucket records: bucket_names(), read_bucket(), write_bucket(), drop_bucket()
    reconciliation (sync.py): range_digests(), scan_points(), read_many(), apply_many(),
        pending_markers(), tombstones(), metadata, advisory locks
"""
import collections
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import random
import select
import sqlite3
import time
import uuid

import pymysql

from kvstore.engines import mysqlwire
from kvstore.coordinator.ring import RING_SIZE, key_point
from kvstore.coordinator.versions import Version, decode_version_clock, encode_version_clock, reconcile

log = logging.getLogger('kvstore.engines')
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           'database_definition.sql')
COLUMNS = 'version_id, clock, deleted, content_type, digest, modified, value, size, chunk_size, metadata'
# MySQL errors worth retrying a transaction for: deadlock, lock wait timeout.
RETRYABLE_MYSQL = (1213, 1205)
TRANSACTION_ATTEMPTS = 10
# MySQL errors of a full partition: table full, disk full, out of space.
MYSQL_FULL = (1114, 1021, 1030)
# MySQL errors the request's own data causes (a value too long for its column,
# out of range, not valid for it): the partition is as healthy as before.
MYSQL_BAD_DATA = (1048, 1264, 1265, 1292, 1366, 1406)


class PartitionError(Exception):
    """A partition could not do what was asked (down, unreachable, failing).

    `unavailable` is False for failures that say nothing of the partition's
    health (a lock conflict, a full disk, a corrupt chunk, data the schema
    cannot hold): those do not mark it down.
    """

    def __init__(self, partition, reason, unavailable=True):
        super().__init__('%s: %s' % (partition, reason))
        self.partition = partition
        self.reason = reason
        self.unavailable = unavailable


FULL = 'full'                    # the partition's disk or table is full
LOCK_CONFLICT = 'lock conflict'
CORRUPT = 'corrupt data'
BAD_DATA = 'bad data'            # the data written does not fit the schema
HEALTHY_FAILURES = (FULL, LOCK_CONFLICT, CORRUPT, BAD_DATA)


INCARNATION = 'incarnation'   # the metadata row naming the partition's incarnation


def new_incarnation_id():
    return uuid.uuid4().hex[:12]


def schema_statements():
    with open(SCHEMA_PATH, encoding='utf-8') as f:
        text = '\n'.join(line.split('--')[0] for line in f)
    return [s.strip() for s in text.split(';') if s.strip()]


def prefix_end(prefix):
    """The smallest byte string greater than every string starting with prefix."""
    stripped = prefix.rstrip(b'\xff')
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def row_to_version(row, source=None):
    """A Version from the columns of COLUMNS; source: the engine its chunks are on."""
    version_id, clock, deleted, content_type, digest, modified, value, size, chunk_size, metadata = row
    seen, dot = decode_version_clock(clock)
    return Version(version_id=_text(version_id), clock=seen, dot=dot,
                   size=int(size), chunk_size=int(chunk_size),
                   metadata=json.loads(metadata) if metadata else {},
                   chunk_source=source if chunk_size else None,
                   deleted=bool(deleted), content_type=_text(content_type),
                   value=bytes(value), digest=_text(digest), modified=int(modified))


def listed_version(version_id, deleted, clock, modified):
    """Just enough of a version to tell which supersedes which (scan())."""
    seen, dot = decode_version_clock(clock)
    return Version(version_id=_text(version_id), clock=seen, dot=dot, deleted=bool(deleted),
                   content_type='', value=b'', digest='', modified=int(modified))


def _text(value):
    return value.decode() if isinstance(value, (bytes, bytearray)) else value




def row_hash(bucket, key, version_id):
    """A version row's 60-bit hash (bytes in): the first 15 hex digits of the MD5
    of bucket NUL key NUL version_id, as MySQLEngine.digest_hash_sql computes it."""
    return int(hashlib.md5(bytes(bucket) + b'\x00' + bytes(key) + b'\x00' + bytes(version_id))
               .hexdigest()[:15], 16)


class XorAggregate:
    """SQLite aggregate kv_xor: the XOR of its integer arguments."""

    def __init__(self):
        self.value = 0

    def step(self, value):
        self.value ^= value

    def finalize(self):
        return self.value


class Pool:
    """Idle connections kept for reuse; a connection that failed is dropped."""

    def __init__(self, connect, broken, stale=lambda conn: False, size=16):
        self._connect = connect
        self._broken = broken  # errors after which a connection is not reused
        self._stale = stale    # is an idle connection closed at the other end?
        self._size = size
        # A deque's append and pop are atomic: no lock, no Condition to notify
        # (a queue.Queue's cost, paid twice per query).
        self._idle = collections.deque()

    def take(self):
        """A connection, to give back with release() or, if it failed, discard()."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return self._connect()
            if not self._stale(conn):
                return conn
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def connection(self):
        conn = self.take()
        try:
            yield conn
        except BaseException as e:
            if isinstance(e, self._broken) or not isinstance(e, Exception):
                self.discard(conn)
                raise
            self.release(conn)
            raise
        self.release(conn)

    def release(self, conn):
        if len(self._idle) < self._size:
            self._idle.append(conn)
        else:
            conn.close()

    @staticmethod
    def discard(conn):
        with contextlib.suppress(Exception):
            conn.close()

    def close(self):
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return


class Sent:
    """A MySQL query sent and not yet answered: the connection its answers
    come on, and what it was sent for."""
    __slots__ = ('conn', 'request')

    def __init__(self, conn, request=None):
        self.conn, self.request = conn, request


class BatchingCursor:
    """A MySQL write transaction in as few round trips as it can take.

    Statements that return nothing are held back and sent with the next one
    that does, or with the COMMIT, as one multi-statement: START TRANSACTION
    travels with the first (locking) read, and the writes with the COMMIT:
    two round trips instead of five.  A replica's write, built here and sent
    whole (statements(), inside one compound statement), takes one.
    """

    def __init__(self, cursor):
        self._cursor = cursor
        self._held = ['START TRANSACTION']
        self._rows = []
        self.connection = self

    def execute(self, statement, args=()):
        if not statement.lstrip().upper().startswith('SELECT'):
            self.hold(statement, args)
            return
        self._send(self._cursor.mogrify(statement, args))

    def hold(self, statement, args=()):
        """Send statement with the next batch, or with the others as one
        (statements()).  Only the batch's last result set can be fetched."""
        self._held.append(self._cursor.mogrify(statement, args))

    def executemany(self, statement, rows):
        self._send()
        return self._cursor.executemany(statement, rows)

    def _send(self, last=None):
        """Send the held statements (and last); keep last's rows to fetch."""
        statements = self._held + ([last] if last else [])
        self._held = []
        if not statements:
            return
        conn = self._cursor.connection
        conn._execute_command(pymysql.constants.COMMAND.COM_QUERY, ';\n'.join(statements))
        self._rows = mysqlwire.read_rows(conn)

    def fetchall(self):
        return self._rows

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def statements(self):
        """What is held and COMMIT: the SQL to send as one query."""
        return self._held + ['COMMIT']

    def commit(self):
        self._held.append('COMMIT')
        self._send()

    def rollback(self):
        self._held = []
        self._cursor.connection.rollback()

    def __getattr__(self, name):   # mogrify, ...
        return getattr(self._cursor, name)


class SQLEngine:
    """The SQL both engines share.  Subclasses set how to connect and lock."""
    placeholder = '?'
    lock_clause = ''
    if_absent_clause = ' ON CONFLICT DO NOTHING'
    insert_if_absent = 'INSERT OR IGNORE'
    db_errors = ()

    def __init__(self, name):
        self.name = name
        self._schema_ready = False
        self._actor = None
        self.pool = Pool(self._open, self.db_errors, self._stale)

    @property
    def actor(self):
        """The actor of the writes this partition coordinates: its name and
        incarnation, "p1.3f9a0c2d41b7".  The incarnation is minted when the
        partition's tables are created, so a partition that comes back empty
        (a new disk, its file or database recreated) never reuses a dot it
        issued before; new_incarnation() mints another after a restore."""
        if self._actor is None:
            with self._cursor():
                pass   # opening the first connection reads it (_open)
        return self._actor

    # -- what subclasses provide
    def _connect(self):
        raise NotImplementedError

    def _begin(self, cursor):
        """Start a write transaction; may return a cursor to use in its place."""
        raise NotImplementedError

    @staticmethod
    def _stale(conn):
        return False

    # -- plumbing
    def _sql(self, statement):
        return statement if self.placeholder == '?' else statement.replace('?', self.placeholder)

    @contextlib.contextmanager
    def _cursor(self):
        """A cursor in autocommit mode; errors become PartitionError."""
        try:
            with self.pool.connection() as conn:
                cursor = conn.cursor()
                try:
                    yield cursor
                finally:
                    cursor.close()
        except self.db_errors as e:
            raise self._failure(e) from None

    def _failure(self, error):
        """The PartitionError a database error means."""
        log.info('partition %s failed: %s', self.name, error)
        reason = self._describe(error)
        return PartitionError(self.name, reason, reason not in HEALTHY_FAILURES)

    def _describe(self, error):
        return type(error).__name__

    def _execute(self, cursor, statement, args=()):
        cursor.execute(self._sql(statement), args)

    def _transaction(self, work):
        """Run work(cursor) in one write transaction, retrying lock conflicts."""
        def attempt():
            with self._cursor() as cursor:
                cursor = self._begin(cursor) or cursor
                try:
                    result = work(cursor)
                except BaseException:
                    cursor.connection.rollback()
                    raise
                cursor.connection.commit()
                return result
        return self._retrying(attempt)

    @staticmethod
    def _retrying(attempt):
        for tried in range(TRANSACTION_ATTEMPTS):
            try:
                return attempt()
            except PartitionError as e:
                if e.reason != LOCK_CONFLICT or tried == TRANSACTION_ATTEMPTS - 1:
                    raise
                # InnoDB's gap locks make writers of neighbouring new keys
                # deadlock now and then: back off, at random, and try again.
                time.sleep(random.uniform(0.002, 0.01) * 2 ** min(tried, 5))

    def _open(self):
        """A new connection; the first one also creates any missing tables and
        reads the partition's incarnation (minting it for new tables)."""
        conn = self._connect()
        if not self._schema_ready:
            cursor = conn.cursor()
            for statement in schema_statements():
                cursor.execute(statement)
            cursor.execute(self._sql(self.insert_if_absent + ' INTO metadata (name, value) VALUES (?, ?)'),
                           (INCARNATION.encode(), new_incarnation_id().encode()))
            cursor.execute(self._sql('SELECT value FROM metadata WHERE name = ?'), (INCARNATION.encode(),))
            self._actor = '%s.%s' % (self.name, _text(cursor.fetchone()[0]))
            cursor.close()
            self._schema_ready = True
        return conn

    def new_incarnation(self):
        """Mint a new incarnation, for a partition restored from a backup or
        rolled back: the dots it issued since may be missing from it, and it
        must not issue them again.  Front ends read the incarnation when they
        open the partition: restart them (or do this before they start).
        Returns the new actor."""
        self.set_metadata({INCARNATION: new_incarnation_id()})
        self._schema_ready = False   # the next connection reads it back
        self._actor = None
        self.pool.close()
        return self.actor

    # -- objects
    # How the hot paths (a key's versions) select and read back a version;
    # MySQLEngine packs the columns into one.  A coordinator decides from
    # everything but the value, which it need not read.
    held_columns = COLUMNS
    held_columns_without_value = COLUMNS.replace(' value,', " x'',")

    def _held_version(self, row):
        return row_to_version(row, self)

    def _held(self, cursor, bucket, key, lock=True, values=True):
        self._execute(cursor, self._held_query(lock, values), (bucket.encode(), key.encode()))
        return [self._held_version(row) for row in cursor.fetchall()]

    def _held_query(self, lock=True, values=True):
        return ('SELECT ' + (self.held_columns if values else self.held_columns_without_value)
                + ' FROM objects WHERE bucket = ? AND key_name = ?' + (self.lock_clause if lock else ''))

    def _store(self, cursor, bucket, key, drop_ids, version, if_absent=False):
        """Drop the versions drop_ids, add version (if_absent: unless it is there)."""
        b, k = bucket.encode(), key.encode()
        for version_id in drop_ids:
            self._execute(cursor, 'DELETE FROM objects WHERE bucket = ? AND key_name = ? AND version_id = ?',
                          (b, k, version_id.encode()))
        if version is not None:
            self._execute(cursor, 'INSERT INTO objects (bucket, key_name, ' + COLUMNS + ', point)'
                          ' VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)'
                          + (self.if_absent_clause if if_absent else ''),
                          (b, k) + self._version_columns(version) + (key_point(bucket, key),))

    @staticmethod
    def _version_columns(version):
        """A version as the values of COLUMNS."""
        return (version.version_id.encode(), encode_version_clock(version), int(version.deleted),
                version.content_type.encode(), version.digest.encode(), version.modified, version.value,
                version.size, version.chunk_size,
                json.dumps(version.metadata, sort_keys=True).encode() if version.metadata else b'')

    def read(self, bucket, key):
        return self.finish_read(self.send_read(bucket, key))

    # Reads in two halves, so that one thread can have several partitions
    # working at once: send_X sends the query, finish_X(sent) reads the answer
    # (abandon_query(sent) if it will not be read).
    def send_query(self, statement, args):
        """Here (SQLite, a local file) the query runs at once."""
        with self._cursor() as cursor:
            self._execute(cursor, statement, args)
            return cursor.fetchall()

    def finish_query(self, sent):
        return sent

    def abandon_query(self, sent):
        pass

    def send_read(self, bucket, key):
        return self.send_query(self._held_query(lock=False), (bucket.encode(), key.encode()))

    def finish_read(self, sent):
        return [self._held_version(row) for row in self.finish_query(sent)]

    def coordinate(self, bucket, key, decide):
        """Lock the key, let decide(held) make the new version, store it."""
        def work(cursor):
            held = self._held(cursor, bucket, key, values=False)
            version = decide(held)
            if version.chunk_count:
                self._execute(cursor, 'SELECT COUNT(*) FROM chunks WHERE version_id = ?',
                              (version.version_id.encode(),))
                if int(cursor.fetchone()[0]) != version.chunk_count:
                    raise PartitionError(self.name, 'chunks of the value are missing (removed before the '
                                         'upload ended?)', unavailable=False)
            self._store(cursor, bucket, key, [v.version_id for v in held if version.supersedes(v)], version)
            return held, version
        return self._transaction(work)

    def mark_pending(self, bucket, key, version_id):
        """Mark a version this partition holds as not yet on every replica."""
        def mark():
            with self._cursor() as cursor:
                self._execute(cursor, 'INSERT INTO pending (bucket, key_name, version_id, created)'
                              ' VALUES (?, ?, ?, ?)',
                              (bucket.encode(), key.encode(), version_id.encode(), time.time_ns() // 1000))
        self._retrying(mark)

    def clear_pending(self, markers):
        """Drop the pending markers [(bucket, key, version_id)]: one autocommit
        DELETE each, so that none holds a lock while waiting for another."""
        with self._cursor() as cursor:
            self._each(cursor, 'DELETE FROM pending WHERE bucket = ? AND key_name = ? AND version_id = ?',
                       [(b.encode(), k.encode(), v.encode()) for b, k, v in markers])

    def _each(self, cursor, statement, rows):
        """Run statement once per row of arguments (MySQL: in one round trip)."""
        for row in rows:
            self._execute(cursor, statement, row)

    def apply(self, bucket, key, version, superseded=None):
        """Take in a version written elsewhere; keep siblings it does not supersede.

        superseded: the ids of the versions the coordinator replaced with it.
        The replica then locks the key's rows, drops those, adds the version
        and commits, without deciding anything (_replace; MySQL: one round
        trip, send_apply).  Without superseded (read repair, hints), the
        read-decide-write below.
        """
        self.copy_chunks(bucket, key, version)
        if superseded is not None:
            held_ids = self._transaction(lambda cursor: self._replace(cursor, bucket, key, version, superseded))
            return self._keep_applied(bucket, key, version, superseded, held_ids)

        def work(cursor):
            held = self._held(cursor, bucket, key)
            drop_ids, store = reconcile(held, version)
            self._store(cursor, bucket, key, drop_ids, version if store else None)
            return store or (version.version_id in {v.version_id for v in held} - set(drop_ids))
        return self._transaction(work)

    def _replace(self, cursor, bucket, key, version, superseded):
        """Lock the key's rows (first, as the coordinator does: writers of one
        key then queue rather than deadlock on InnoDB's gap locks), drop the
        superseded, add the version: the ids held before."""
        self._execute(cursor, self._locked_ids_query, (bucket.encode(), key.encode()))
        held_ids = [_text(row[0]) for row in cursor.fetchall()]
        self._store(cursor, bucket, key, superseded, version, if_absent=True)
        return held_ids

    @property
    def _locked_ids_query(self):
        return 'SELECT version_id FROM objects WHERE bucket = ? AND key_name = ?' + self.lock_clause

    def _keep_applied(self, bucket, key, version, superseded, held_ids):
        """After _replace: True if the version stays.  When the replica held
        only what the coordinator replaced, it now holds just the version.
        Otherwise writes of the key crossed on the way (a newer version was
        here, or a sibling): what it holds now is read and reconciled, and each
        row to drop, superseded by one that stays, goes without a lock."""
        if set(held_ids) <= set(superseded) | {version.version_id}:
            return True
        held = self.read(bucket, key)
        drop_ids = reconcile(held, version)[0]
        if drop_ids:
            with self._cursor() as cursor:
                self._store(cursor, bucket, key, drop_ids, None)
        return version.version_id in {v.version_id for v in held} - set(drop_ids)

    # A replica's write in two halves too, so that one thread can send the
    # version to every replica before waiting for any.  Here send_apply does
    # it all at once: the datastore writes such replicas from threads instead.
    sends_apart = False

    def send_apply(self, bucket, key, version, superseded):
        return self.apply(bucket, key, version, superseded)

    def finish_apply(self, sent):
        return sent

    def answer_socket(self, sent):
        """The socket a sent query's answer arrives on; None when it is here."""
        return None

    def scan(self, bucket, prefix, after, limit):
        """Up to `limit` version rows of keys > after that start with prefix, in
        key byte order: [(key, version_id, deleted, Version with its value left
        out)].  Tombstones included, so that the caller can tell a deleted key
        from a stale replica's copy.  The Version is built only when asked for
        (a call): a listing needs it only where replicas disagree."""
        return self.finish_scan(self.send_scan(bucket, prefix, after, limit))

    def send_scan(self, bucket, prefix, after, limit):
        b_prefix = prefix.encode()
        clauses, args = ['bucket = ?', 'key_name >= ?'], [bucket.encode(), b_prefix]
        if after is not None:
            clauses.append('key_name > ?')
            args.append(after.encode())
        end = prefix_end(b_prefix)
        if end is not None:
            clauses.append('key_name < ?')
            args.append(end)
        return self.send_query('SELECT ' + self.scan_columns + ' FROM objects WHERE ' + ' AND '.join(clauses)
                               + ' ORDER BY key_name LIMIT ?', args + [limit])

    def finish_scan(self, sent):
        rows = [self._scanned(row) for row in self.finish_query(sent)]
        return [(key.decode(), version_id, deleted, functools.partial(listed_version, version_id, deleted, clock,
                                                                      modified))
                for key, version_id, deleted, clock, modified in rows]

    # The columns a listing reads; MySQLEngine packs them into one.
    scan_columns = 'key_name, version_id, deleted, clock, modified'

    @staticmethod
    def _scanned(row):
        return row

    # -- chunks: the bytes of large values, written before their version
    def write_chunk(self, bucket, key, version_id, seq, data):
        with self._cursor() as cursor:
            self._execute(cursor, 'REPLACE INTO chunks (version_id, seq, bucket, key_name, data, digest, created)'
                          ' VALUES (?, ?, ?, ?, ?, ?, ?)',
                          (version_id.encode(), seq, bucket.encode(), key.encode(), data,
                           hashlib.sha256(data).hexdigest().encode(), time.time_ns() // 1000))

    def read_chunk(self, version_id, seq):
        """A chunk's bytes, checked against the digest stored with them."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT data, digest FROM chunks WHERE version_id = ? AND seq = ?',
                          (version_id.encode(), seq))
            row = cursor.fetchone()
        if row is None or hashlib.sha256(row[0]).hexdigest() != _text(row[1]):
            log.error('partition %s: chunk %d of version %s is %s', self.name, seq, version_id,
                      'missing' if row is None else 'corrupt')
            raise PartitionError(self.name, CORRUPT, unavailable=False)
        return bytes(row[0])

    def chunks_held(self, version_id):
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT COUNT(*) FROM chunks WHERE version_id = ?', (version_id.encode(),))
            return int(cursor.fetchone()[0])

    def delete_chunks(self, version_id):
        with self._cursor() as cursor:
            self._execute(cursor, 'DELETE FROM chunks WHERE version_id = ?', (version_id.encode(),))

    def copy_chunks(self, bucket, key, version):
        """Bring a large version's chunks here from where it was read, one at a
        time, before the version itself is stored."""
        source = version.chunk_source
        if not version.chunk_count or source is self or self.chunks_held(version.version_id) == version.chunk_count:
            return
        if source is None:
            raise PartitionError(self.name, 'the chunks of version %s are nowhere to copy from'
                                 % version.version_id, unavailable=False)
        for seq in range(version.chunk_count):
            self.write_chunk(bucket, key, version.version_id, seq, source.read_chunk(version.version_id, seq))

    def collect_chunks(self, before, limit, after=''):
        """Delete the chunks of versions whose last chunk was written before
        `before` (microseconds) that no version or hint here points to: uploads
        that failed or were cut off, versions superseded or moved away.  An
        upload still going on (a chunk of it written since) is left alone,
        however long ago its first chunks were written.  Walks at most `limit`
        chunked versions in version-id order from `after`; returns (versions
        whose chunks went, the last version id seen, or None at the end)."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT DISTINCT version_id, bucket, key_name FROM chunks old'
                          ' WHERE version_id > ? AND created < ? AND NOT EXISTS (SELECT 1 FROM chunks'
                          ' WHERE chunks.version_id = old.version_id AND chunks.created >= ?)'
                          ' ORDER BY version_id LIMIT ?', (after.encode(), before, before, limit))
            candidates = cursor.fetchall()
            removed = 0
            for version_id, bucket, key in candidates:
                self._execute(cursor, 'SELECT COUNT(*) FROM objects WHERE bucket = ? AND key_name = ?'
                              ' AND version_id = ?', (bucket, key, version_id))
                held = cursor.fetchone()[0]
                self._execute(cursor, 'SELECT COUNT(*) FROM hints WHERE bucket = ? AND key_name = ?'
                              ' AND version_id = ?', (bucket, key, version_id))
                if not held and not cursor.fetchone()[0]:
                    self._execute(cursor, 'DELETE FROM chunks WHERE version_id = ?', (version_id,))
                    removed += 1
        last = _text(candidates[-1][0]) if len(candidates) == limit else None
        return removed, last

    def iter_value(self, version, first=0, last=None):
        """The bytes first..last (inclusive) of a version held here, chunk by chunk."""
        last = version.size - 1 if last is None else last
        if not version.chunk_size:
            yield version.value[first:last + 1]
            return
        size = version.chunk_size
        for seq in range(first // size, last // size + 1):
            data = self.read_chunk(version.version_id, seq)
            start = max(first - seq * size, 0)
            yield data[start:last + 1 - seq * size]

    # -- hints: versions held for a partition that was down
    def store_hint(self, target, bucket, key, version):
        self.copy_chunks(bucket, key, version)

        def work(cursor):
            pk = (target.encode(), bucket.encode(), key.encode(), version.version_id.encode())
            self._execute(cursor, 'DELETE FROM hints WHERE target = ? AND bucket = ? AND key_name = ?'
                          ' AND version_id = ?', pk)
            self._execute(cursor, 'INSERT INTO hints (target, bucket, key_name, ' + COLUMNS + ', created)'
                          ' VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                          pk[:3] + self._version_columns(version) + (time.time_ns() // 1000,))
            return True
        return self._transaction(work)

    def read_hints(self, bucket, key):
        """Versions of a key held here for any target."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT ' + self.held_columns + ' FROM hints WHERE bucket = ? AND key_name = ?',
                          (bucket.encode(), key.encode()))
            return [self._held_version(row) for row in cursor.fetchall()]

    def hints_for(self, target, limit):
        """Up to limit hints for target, oldest first: [(bucket, key, version, created)]."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT bucket, key_name, created, ' + COLUMNS + ' FROM hints'
                          ' WHERE target = ? ORDER BY created LIMIT ?', (target.encode(), limit))
            return [(_text(row[0]), _text(row[1]), row_to_version(row[3:], self), int(row[2]))
                    for row in cursor.fetchall()]

    def delete_hint(self, target, bucket, key, version_id):
        with self._cursor() as cursor:
            self._execute(cursor, 'DELETE FROM hints WHERE target = ? AND bucket = ? AND key_name = ?'
                          ' AND version_id = ?', (target.encode(), bucket.encode(), key.encode(),
                                                  version_id.encode()))

    def hint_counts(self):
        """{target: (number of hints, oldest created)} held here."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT target, COUNT(*), MIN(created) FROM hints GROUP BY target')
            return {_text(row[0]): (int(row[1]), int(row[2])) for row in cursor.fetchall()}

    def drop_keys(self, bucket):
        """Remove every version of a bucket's keys, the hints held for them and
        the chunks of their large values."""
        with self._cursor() as cursor:
            self._execute(cursor, 'DELETE FROM objects WHERE bucket = ?', (bucket.encode(),))
            self._execute(cursor, 'DELETE FROM hints WHERE bucket = ?', (bucket.encode(),))
            self._execute(cursor, 'DELETE FROM chunks WHERE bucket = ?', (bucket.encode(),))

    # -- buckets
    def bucket_names(self):
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT name FROM buckets')
            names = {_text(row[0]) for row in cursor.fetchall()}
            self._execute(cursor, 'SELECT DISTINCT bucket FROM objects WHERE deleted = 0')
            return names | {_text(row[0]) for row in cursor.fetchall()}

    def read_bucket(self, name):
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT properties FROM buckets WHERE name = ?', (name.encode(),))
            row = cursor.fetchone()
            return json.loads(row[0]) if row else None

    def write_bucket(self, name, properties):
        """Store a bucket's properties; True when the bucket record is new."""
        def work(cursor):
            self._execute(cursor, 'SELECT properties FROM buckets WHERE name = ?' + self.lock_clause,
                          (name.encode(),))
            existed = cursor.fetchone() is not None
            self._execute(cursor, 'DELETE FROM buckets WHERE name = ?', (name.encode(),))
            self._execute(cursor, 'INSERT INTO buckets (name, properties, modified) VALUES (?, ?, ?)',
                          (name.encode(), json.dumps(properties, sort_keys=True).encode(),
                           time.time_ns() // 1000))
            return not existed
        return self._transaction(work)

    def drop_bucket(self, name):
        with self._cursor() as cursor:
            self._execute(cursor, 'DELETE FROM buckets WHERE name = ?', (name.encode(),))

    def close(self):
        self.pool.close()

    # -- reconciliation (sync.py) -----------------------------------------------
    # Ranges are of ring points: lo <= point < hi, with hi at most RING_SIZE.
    digest_hash_sql = None   # SQL: a row's 60-bit hash (row_hash), per engine
    digest_xor_sql = None    # SQL: the aggregate XORing them
    divide_sql = None        # SQL: integer division

    def _point_range(self, lo, hi):
        if hi >= RING_SIZE:   # 2**63 does not fit a BIGINT parameter
            return 'point >= ?', [lo]
        return 'point >= ? AND point < ?', [lo, hi]

    def range_digests(self, lo, hi, parts=1):
        """[(row count, XOR of row_hash)] of `parts` equal slices of [lo, hi), in
        order.  Replicas holding the same versions of the same keys have equal
        digests; the engine computes them without sending rows."""
        width = min(max(1, -(-(hi - lo) // parts)), RING_SIZE - 1)   # a BIGINT parameter
        where, args = self._point_range(lo, hi)
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT (point - ?)' + self.divide_sql + '?, COUNT(*), '
                          + self.digest_xor_sql + '(' + self.digest_hash_sql + ')'
                          ' FROM objects WHERE ' + where + ' GROUP BY 1', [lo, width] + args)
            slices = [[0, 0] for _ in range(parts)]
            for i, count, xor in cursor.fetchall():
                found = slices[min(int(i), parts - 1)]   # the last point of the ring, with width clamped
                found[0] += int(count)
                found[1] ^= int(xor)
        return [tuple(found) for found in slices]

    def range_digest(self, lo, hi):
        return self.range_digests(lo, hi, 1)[0]

    def scan_points(self, lo, hi, limit=None):
        """Version rows (values left out) with lo <= point < hi, in ring order:
        [(bucket, key, Version)]."""
        where, args = self._point_range(lo, hi)
        statement = ('SELECT bucket, key_name, ' + COLUMNS.replace('value', "x''") + ' FROM objects'
                     ' WHERE ' + where + ' ORDER BY point, bucket, key_name, version_id')
        if limit is not None:
            statement += ' LIMIT ?'
            args.append(limit)
        with self._cursor() as cursor:
            self._execute(cursor, statement, args)
            return [(_text(row[0]), _text(row[1]), row_to_version(row[2:], self)) for row in cursor.fetchall()]

    def read_many(self, keys, values=True):
        """{(bucket, key): [Version]} for many keys at once (values left out
        unless values)."""
        keys = list(dict.fromkeys(keys))
        found = {k: [] for k in keys}
        columns = COLUMNS if values else COLUMNS.replace('value', "x''")
        with self._cursor() as cursor:
            for start in range(0, len(keys), 100):
                chunk = keys[start:start + 100]
                self._execute(cursor, 'SELECT bucket, key_name, ' + columns + ' FROM objects WHERE '
                              + ' OR '.join(['(bucket = ? AND key_name = ?)'] * len(chunk)),
                              [part for bucket, key in chunk for part in (bucket.encode(), key.encode())])
                for row in cursor.fetchall():
                    found[(_text(row[0]), _text(row[1]))].append(row_to_version(row[2:], self))
        return found

    def apply_many(self, items):
        """apply() each (bucket, key, version) of items in one transaction: [stored]."""
        order = sorted(range(len(items)), key=lambda i: (items[i][0], items[i][1]))
        for bucket, key, version in items:
            self.copy_chunks(bucket, key, version)

        def work(cursor):
            stored = [False] * len(items)
            for i in order:
                bucket, key, version = items[i]
                drop_ids, keep = reconcile(self._held(cursor, bucket, key), version)
                self._store(cursor, bucket, key, drop_ids, version if keep else None)
                stored[i] = keep
            return stored
        return self._transaction(work) if items else []

    def insert_many(self, items):
        """Store [(bucket, key, version)] of keys this partition holds no version
        of, inline values only, in one transaction of multi-row INSERTs: a bulk
        load (tests, imports), with exactly the rows apply() would write."""
        statement = self._sql('INSERT INTO objects (bucket, key_name, ' + COLUMNS + ', point) VALUES (%s)'
                              % ', '.join(['?'] * (COLUMNS.count(',') + 4)))
        rows = [(b.encode(), k.encode()) + self._version_columns(v) + (key_point(b, k),) for b, k, v in items]
        self._transaction(lambda cursor: cursor.executemany(statement, rows))

    def delete_versions(self, bucket, key, version_ids):
        """Remove these versions of a key (and no other); how many were there."""
        removed = 0
        with self._cursor() as cursor:
            for version_id in version_ids:
                self._execute(cursor, 'DELETE FROM objects WHERE bucket = ? AND key_name = ?'
                              ' AND version_id = ?', (bucket.encode(), key.encode(), version_id.encode()))
                removed += max(cursor.rowcount, 0)
        return removed

    @staticmethod
    def _after(columns, values):
        """SQL and arguments for (columns) > (values), spelled out for index use."""
        clauses, args = [], []
        for i, column in enumerate(columns):
            clauses.append(' AND '.join(['%s = ?' % c for c in columns[:i]] + ['%s > ?' % column]))
            args.extend(values[:i + 1])
        return '(' + ' OR '.join('(%s)' % c for c in clauses) + ')', args

    def pending_markers(self, limit, after=None):
        """Up to limit pending markers in key order, after the (bucket, key,
        version_id) cursor: [(bucket, key, version_id, created)]."""
        where, args = ('', [])
        if after is not None:
            clause, args = self._after(('bucket', 'key_name', 'version_id'), [a.encode() for a in after])
            where = ' WHERE ' + clause
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT bucket, key_name, version_id, created FROM pending' + where +
                          ' ORDER BY bucket, key_name, version_id LIMIT ?', args + [limit])
            return [(_text(b), _text(k), _text(v), int(c)) for b, k, v, c in cursor.fetchall()]

    def pending_count(self):
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT COUNT(*) FROM pending')
            return int(cursor.fetchone()[0])

    def tombstones(self, before, limit, after=None):
        """Up to limit tombstones modified before `before`, oldest first, after the
        (modified, bucket, key, version_id) cursor: [(modified, bucket, key, version_id)]."""
        clauses, args = ['deleted = 1', 'modified < ?'], [before]
        if after is not None:
            clause, more = self._after(('modified', 'bucket', 'key_name', 'version_id'),
                                       [after[0]] + [a.encode() for a in after[1:]])
            clauses.append(clause)
            args += more
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT modified, bucket, key_name, version_id FROM objects WHERE '
                          + ' AND '.join(clauses) +
                          ' ORDER BY modified, bucket, key_name, version_id LIMIT ?', args + [limit])
            return [(int(m), _text(b), _text(k), _text(v)) for m, b, k, v in cursor.fetchall()]

    def hinted_keys(self):
        """{(bucket, key)} of every hint held here, whatever its target."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT DISTINCT bucket, key_name FROM hints')
            return {(_text(b), _text(k)) for b, k in cursor.fetchall()}

    def count_keys(self):
        """How many distinct keys (tombstoned ones included) this partition holds."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT COUNT(*) FROM (SELECT DISTINCT bucket, key_name FROM objects) k')
            return int(cursor.fetchone()[0])

    def usage(self):
        """{keys, bytes, pending} held here: distinct keys (tombstoned ones
        included), the bytes of their versions' values, pending markers."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT (SELECT COUNT(*) FROM (SELECT DISTINCT bucket, key_name FROM objects) k),'
                          ' (SELECT COALESCE(SUM(size), 0) FROM objects), (SELECT COUNT(*) FROM pending)')
            keys, size, pending = cursor.fetchone()
            return {'keys': int(keys), 'bytes': int(size), 'pending': int(pending)}

    def bucket_records(self):
        """{bucket: (properties JSON text, modified)} of the records held here."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT name, properties, modified FROM buckets')
            return {_text(n): (_text(p), int(m)) for n, p, m in cursor.fetchall()}

    def put_bucket_record(self, name, properties, modified):
        """Store a bucket record copied from another partition unless the one
        held here is as new: True when it was stored."""
        def work(cursor):
            self._execute(cursor, 'SELECT modified FROM buckets WHERE name = ?' + self.lock_clause,
                          (name.encode(),))
            row = cursor.fetchone()
            if row is not None and int(row[0]) >= modified:
                return False
            self._execute(cursor, 'DELETE FROM buckets WHERE name = ?', (name.encode(),))
            self._execute(cursor, 'INSERT INTO buckets (name, properties, modified) VALUES (?, ?, ?)',
                          (name.encode(), properties.encode(), modified))
            return True
        return self._transaction(work)

    def get_metadata(self, names):
        """{name: value} of the metadata rows that exist among names."""
        names = list(names)
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT name, value FROM metadata WHERE name IN (%s)'
                          % ', '.join(['?'] * len(names)), [n.encode() for n in names])
            return {_text(n): _text(v) for n, v in cursor.fetchall()}

    def set_metadata(self, values):
        """Write {name: value} metadata rows in one transaction."""
        def work(cursor):
            for name, value in sorted(values.items()):
                if len(value.encode()) > 4096:
                    raise ValueError('metadata %s is longer than 4096 bytes' % name)
                self._execute(cursor, 'DELETE FROM metadata WHERE name = ?', (name.encode(),))
                self._execute(cursor, 'INSERT INTO metadata (name, value) VALUES (?, ?)',
                              (name.encode(), value.encode()))
        self._transaction(work)

    def try_lock(self, name):
        """Take the advisory lock `name` without waiting: a handle, or None when
        another process holds it.  Held until unlock() or the process dies."""
        raise NotImplementedError

    def unlock(self, handle):
        raise NotImplementedError


class SQLiteEngine(SQLEngine):
    """A partition in one SQLite file: the embedded default."""
    db_errors = (sqlite3.Error,)
    # FULL: a commit is on disk (the WAL fsynced) before it returns, so an
    # acknowledged write survives a power loss.  NORMAL would fsync only at
    # checkpoints: a power loss could roll back acknowledged commits.
    synchronous = 'FULL'

    def __init__(self, name, path, timeout):
        self.path = path
        self.timeout = timeout
        super().__init__(name)

    def _connect(self):
        conn = sqlite3.connect(self.path, timeout=max(self.timeout, 5.0),
                               isolation_level=None, check_same_thread=False)
        conn.execute('PRAGMA journal_mode = WAL')
        conn.execute('PRAGMA synchronous = ' + self.synchronous)
        self._register_functions(conn)
        return conn

    def _begin(self, cursor):
        # IMMEDIATE takes the write lock now, so the read that follows is locked.
        cursor.execute('BEGIN IMMEDIATE')

    def _describe(self, error):
        if isinstance(error, sqlite3.OperationalError) and 'locked' in str(error):
            return LOCK_CONFLICT
        if isinstance(error, sqlite3.OperationalError) and 'full' in str(error):
            return FULL
        if isinstance(error, sqlite3.DataError):   # a string or blob too big
            return BAD_DATA
        return 'SQLite error (%s)' % type(error).__name__

    # -- reconciliation (sync.py) -----------------------------------------------
    digest_hash_sql = 'kv_hash(bucket, key_name, version_id)'
    digest_xor_sql = 'kv_xor'
    divide_sql = ' / '

    @staticmethod
    def _register_functions(conn):
        conn.create_function('kv_hash', 3, row_hash, deterministic=True)
        conn.create_aggregate('kv_xor', 1, XorAggregate)

    def try_lock(self, name):
        """An flock() on a file beside the database file."""
        try:
            handle = open('%s.%s.lock' % (self.path, name), 'a+')
        except OSError as e:
            raise PartitionError(self.name, 'lock file cannot be opened (%s)' % e.strerror) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def unlock(self, handle):
        handle.close()   # closing releases the flock


class MySQLEngine(SQLEngine):
    """A partition in one MySQL/MariaDB database."""
    placeholder = '%s'
    lock_clause = ' FOR UPDATE'
    if_absent_clause = ' ON DUPLICATE KEY UPDATE version_id = version_id'
    insert_if_absent = 'INSERT IGNORE'
    db_errors = (pymysql.Error,)

    def __init__(self, name, host, port, user, password, database, connect_timeout, read_timeout):
        self.params = dict(host=host, port=port, user=user, password=password,
                           connect_timeout=connect_timeout, read_timeout=read_timeout,
                           write_timeout=read_timeout, autocommit=True, charset='utf8mb4',
                           ssl_disabled=True, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        self.database = database
        super().__init__(name)

    def _connect(self):
        try:
            return pymysql.connect(database=self.database, **self.params)
        except pymysql.OperationalError as e:
            if e.args[0] != 1049:  # unknown database: a fresh server, or it was dropped
                raise
        self._schema_ready = False   # new tables, and a new incarnation (_open)
        conn = pymysql.connect(**self.params)
        with conn.cursor() as cursor:
            cursor.execute('CREATE DATABASE IF NOT EXISTS `%s`' % self.database.replace('`', '``'))
            cursor.execute('USE `%s`' % self.database.replace('`', '``'))
        return conn

    def _begin(self, cursor):
        return BatchingCursor(cursor)

    def _each(self, cursor, statement, rows):
        statement = self._sql(statement)
        for start in range(0, len(rows), 100):
            batch = rows[start:start + 100]
            cursor.execute(';\n'.join(cursor.mogrify(statement, row) for row in batch))
            while cursor.nextset():
                pass

    # PyMySQL sends a query and reads its answer in one call (Connection.query);
    # these are its two halves: Connection._execute_command, and reading the
    # answers (mysqlwire).
    def send_query(self, statement, args):
        return self._send(lambda conn: self._sql(statement) % tuple(conn.escape(value) for value in args))

    def _send(self, statement, request=None):
        """Send statement(conn), SQL, as one query; finish_query reads every
        answer and returns the rows of the last result set."""
        try:
            conn = self.pool.take()
        except self.db_errors as e:
            raise self._failure(e) from None
        with self._dropped_on_failure(conn):
            conn._execute_command(pymysql.constants.COMMAND.COM_QUERY, statement(conn))
        return Sent(conn, request)

    def finish_query(self, sent):
        # Read once: the connection goes back to the pool (or is dropped), and
        # abandon_query then has nothing to close.
        conn, sent.conn = sent.conn, None
        with self._dropped_on_failure(conn):
            rows = mysqlwire.read_rows(conn)
        self.pool.release(conn)
        return rows

    sends_apart = True

    def send_apply(self, bucket, key, version, superseded):
        if version.chunk_size:   # its chunks are copied first, in this call
            return self.apply(bucket, key, version, superseded)

        def statement(conn):
            # _replace as one compound statement (MariaDB's BEGIN NOT ATOMIC),
            # answered only once it has committed: a multi-statement answers
            # statement by statement, so its socket would turn readable at
            # once.  The answer is the ids the locking read found.
            batch = BatchingCursor(conn.cursor())
            batch.hold(self._sql('SELECT GROUP_CONCAT(version_id) INTO held FROM objects'
                                 ' WHERE bucket = ? AND key_name = ?' + self.lock_clause),
                       (bucket.encode(), key.encode()))
            self._store(batch, bucket, key, superseded, version, if_absent=True)
            return 'BEGIN NOT ATOMIC DECLARE held LONGBLOB; %s; SELECT held; END' % ';\n'.join(batch.statements())
        return self._send(statement, (bucket, key, version, superseded))

    def finish_apply(self, sent):
        if not isinstance(sent, Sent):
            return sent
        bucket, key, version, superseded = sent.request
        try:
            held = self.finish_query(sent)[0][0]
            held_ids = _text(held).split(',') if held else []
        except PartitionError as e:
            if e.reason != LOCK_CONFLICT:
                raise
            return self.apply(bucket, key, version, superseded)   # retried, with backoff
        return self._keep_applied(bucket, key, version, superseded, held_ids)

    def answer_socket(self, sent):
        return sent.conn._sock if isinstance(sent, Sent) and sent.conn else None

    @contextlib.contextmanager
    def _dropped_on_failure(self, conn):
        """A connection that failed mid-query is not reused; a database error
        becomes a PartitionError."""
        try:
            yield
        except self.db_errors as e:
            self.pool.discard(conn)
            raise self._failure(e) from None
        except BaseException:
            self.pool.discard(conn)
            raise

    def abandon_query(self, sent):
        """A sent query that will not be read: its connection cannot be reused."""
        if isinstance(sent, Sent) and sent.conn:
            self.pool.discard(sent.conn)
            sent.conn = None

    @staticmethod
    def _stale(conn):
        """An idle connection has nothing to read unless the server closed it
        (a restart, a kill): then it is dropped before a request fails on it."""
        sock = getattr(conn, '_sock', None)
        return sock is None or bool(select.select([sock], [], [], 0)[0])

    # Reading an answer costs per column (a description, a value), more than
    # per byte: the columns other than the value travel as one, separated by 0x1f (which no
    # column can hold: hex, numbers, JSON with control characters escaped, and
    # media types).
    held_columns = 'CONCAT_WS(0x1f, %s), value' % COLUMNS.replace(', value', '')
    held_columns_without_value = held_columns.replace(', value', ", x''")
    # A listing reads one column a row, for the same reason.  The key goes last, as
    # it alone may hold a 0x1f byte (a clock is JSON, which escapes it).
    scan_columns = 'CONCAT_WS(0x1f, version_id, deleted, clock, modified, key_name)'

    @staticmethod
    def _scanned(row):
        version_id, deleted, clock, modified, key = row[0].split(b'\x1f', 4)
        return key, version_id, int(deleted), clock, modified

    def _held_version(self, row):
        fields = row[0].split(b'\x1f')
        fields[2] = int(fields[2])   # deleted, a number like the others
        return row_to_version(fields[:6] + [row[1]] + fields[6:], self)

    def _describe(self, error):
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        if code in RETRYABLE_MYSQL:
            return LOCK_CONFLICT
        if code in MYSQL_FULL:
            return FULL
        if code in MYSQL_BAD_DATA:
            return BAD_DATA
        if not code:
            return 'connection lost'
        if isinstance(error, pymysql.OperationalError):
            return 'unreachable or failing (MySQL error %s)' % code
        return 'MySQL error %s' % code

    # -- reconciliation (sync.py) -----------------------------------------------
    digest_hash_sql = ('CAST(CONV(LEFT(MD5(CONCAT(bucket, 0x00, key_name, 0x00, version_id)), 15), 16, 10)'
                       ' AS UNSIGNED)')
    digest_xor_sql = 'BIT_XOR'
    divide_sql = ' DIV '

    def try_lock(self, name):
        """GET_LOCK on a connection of its own, named after the database (the
        lock is server-wide); the server releases it if the connection dies."""
        lock = ('%s.%s' % (self.database, name))[-64:]
        conn = None
        try:
            conn = self._connect()
            with conn.cursor() as cursor:
                cursor.execute('SELECT GET_LOCK(%s, 0)', (lock,))
                taken = cursor.fetchone()[0] == 1
        except self.db_errors as e:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            raise PartitionError(self.name, self._describe(e)) from None
        if not taken:
            conn.close()
            return None
        return conn

    def unlock(self, handle):
        with contextlib.suppress(Exception):
            handle.close()   # the server releases the lock with the connection


def open_engine(partition, config):
    if partition.engine == 'sqlite':
        return SQLiteEngine(partition.name, partition.path, config.read_timeout)
    return MySQLEngine(partition.name, partition.host, partition.port, partition.user,
                       partition.password, partition.database,
                       config.connect_timeout, config.read_timeout)
