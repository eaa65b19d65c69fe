"""Storage engines: one partition's database, behind one small interface.

An engine stores the versions of keys for one partition and knows nothing of
rings, quorums or HTTP.  SQLite and MySQL/MariaDB share the SQL; they differ
only in how they connect, how a write transaction locks, and the placeholder.

    read(bucket, key)                -> [Version]
    coordinate(bucket, key, decide, pending) -> (held, new version)  locked read-decide-write
    apply(bucket, key, version)      -> True if stored          a replica takes a version
    scan(bucket, prefix, after, limit) -> [(key, Version)]      byte order, no values
    hints: store_hint(), read_hints(), hints_for(), delete_hint(), hint_counts()
    bucket records: bucket_names(), read_bucket(), write_bucket(), drop_bucket()
"""
import contextlib
import json
import logging
import os
import queue
import sqlite3
import time

import pymysql

from ring import key_point
from versions import Version, decode_version_clock, encode_version_clock, reconcile

log = logging.getLogger('kvstore.engines')
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'database_definition.sql')
COLUMNS = 'version_id, clock, deleted, content_type, digest, modified, value'
# MySQL errors worth retrying a transaction for: deadlock, lock wait timeout.
RETRYABLE_MYSQL = (1213, 1205)


class PartitionError(Exception):
    """A partition could not do what was asked (down, unreachable, failing)."""

    def __init__(self, partition, reason):
        super().__init__('%s: %s' % (partition, reason))
        self.partition = partition
        self.reason = reason


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


def row_to_version(row):
    version_id, clock, deleted, content_type, digest, modified, value = row
    seen, dot = decode_version_clock(clock)
    return Version(version_id=_text(version_id), clock=seen, dot=dot,
                   deleted=bool(deleted), content_type=_text(content_type),
                   value=bytes(value), digest=_text(digest), modified=int(modified))


def _text(value):
    return value.decode() if isinstance(value, (bytes, bytearray)) else value


class Pool:
    """Idle connections kept for reuse; a connection that failed is dropped."""

    def __init__(self, connect, broken, size=16):
        self._connect = connect
        self._broken = broken  # errors after which a connection is not reused
        self._idle = queue.LifoQueue(maxsize=size)

    @contextlib.contextmanager
    def connection(self):
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        except BaseException as e:
            if isinstance(e, self._broken) or not isinstance(e, Exception):
                with contextlib.suppress(Exception):
                    conn.close()
                raise
            self._release(conn)
            raise
        self._release(conn)

    def _release(self, conn):
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self):
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
            except Exception:
                pass


class SQLEngine:
    """The SQL both engines share.  Subclasses set how to connect and lock."""
    placeholder = '?'
    lock_clause = ''
    db_errors = ()

    def __init__(self, name):
        self.name = name
        self._schema_ready = False
        self.pool = Pool(self._open, self.db_errors)

    # -- what subclasses provide
    def _connect(self):
        raise NotImplementedError

    def _begin(self, cursor):
        raise NotImplementedError

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
            log.info('partition %s failed: %s', self.name, e)
            raise PartitionError(self.name, self._describe(e)) from None

    def _describe(self, error):
        return type(error).__name__

    def _execute(self, cursor, statement, args=()):
        cursor.execute(self._sql(statement), args)

    def _transaction(self, work):
        """Run work(cursor) in one write transaction, retrying lock conflicts."""
        for attempt in range(5):
            try:
                with self._cursor() as cursor:
                    self._begin(cursor)
                    try:
                        result = work(cursor)
                    except BaseException:
                        cursor.connection.rollback()
                        raise
                    cursor.connection.commit()
                    return result
            except PartitionError as e:
                if e.reason != 'lock conflict' or attempt == 4:
                    raise
                time.sleep(0.005 * (attempt + 1))

    def _open(self):
        """A new connection; the first one also creates any missing tables."""
        conn = self._connect()
        if not self._schema_ready:
            cursor = conn.cursor()
            for statement in schema_statements():
                cursor.execute(statement)
            cursor.close()
            self._schema_ready = True
        return conn

    # -- objects
    def _held(self, cursor, bucket, key):
        self._execute(cursor, 'SELECT ' + COLUMNS + ' FROM objects WHERE bucket = ? AND key_name = ?'
                      + self.lock_clause, (bucket.encode(), key.encode()))
        return [row_to_version(row) for row in cursor.fetchall()]

    def _store(self, cursor, bucket, key, drop_ids, version):
        b, k = bucket.encode(), key.encode()
        for version_id in drop_ids:
            self._execute(cursor, 'DELETE FROM objects WHERE bucket = ? AND key_name = ? AND version_id = ?',
                          (b, k, version_id.encode()))
        self._execute(cursor, 'INSERT INTO objects (bucket, key_name, ' + COLUMNS + ', point)'
                      ' VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                      (b, k) + self._version_columns(version) + (key_point(bucket, key),))

    @staticmethod
    def _version_columns(version):
        """A version as the values of COLUMNS."""
        return (version.version_id.encode(), encode_version_clock(version), int(version.deleted),
                version.content_type.encode(), version.digest.encode(), version.modified, version.value)

    def read(self, bucket, key):
        with self._cursor() as cursor:
            return self._held(cursor, bucket, key)

    def coordinate(self, bucket, key, decide, pending=False):
        """Lock the key, let decide(held) make the new version, store it; with
        pending, also mark it as not yet on every replica, in the same transaction."""
        def work(cursor):
            held = self._held(cursor, bucket, key)
            version = decide(held)
            self._store(cursor, bucket, key, [v.version_id for v in held if version.supersedes(v)], version)
            if pending:
                self._execute(cursor, 'INSERT INTO pending (bucket, key_name, version_id, created)'
                              ' VALUES (?, ?, ?, ?)', (bucket.encode(), key.encode(),
                                                       version.version_id.encode(), time.time_ns() // 1000))
            return held, version
        return self._transaction(work)

    def clear_pending(self, bucket, key, version_id):
        with self._cursor() as cursor:
            self._execute(cursor, 'DELETE FROM pending WHERE bucket = ? AND key_name = ? AND version_id = ?',
                          (bucket.encode(), key.encode(), version_id.encode()))

    def apply(self, bucket, key, version):
        """Take in a version written elsewhere; keep siblings it does not supersede."""
        def work(cursor):
            drop_ids, keep = reconcile(self._held(cursor, bucket, key), version)
            if keep:
                self._store(cursor, bucket, key, drop_ids, version)
            return keep
        return self._transaction(work)

    def scan(self, bucket, prefix, after, limit):
        """Up to `limit` version rows (values left out) of keys > after that start
        with prefix, in key byte order: [(key, Version)].  Tombstones included,
        so that the caller can tell a deleted key from a stale replica's copy."""
        b_prefix = prefix.encode()
        clauses, args = ['bucket = ?', 'key_name >= ?'], [bucket.encode(), b_prefix]
        if after is not None:
            clauses.append('key_name > ?')
            args.append(after.encode())
        end = prefix_end(b_prefix)
        if end is not None:
            clauses.append('key_name < ?')
            args.append(end)
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT key_name, ' + COLUMNS.replace('value', "x''") +
                          ' FROM objects WHERE ' + ' AND '.join(clauses) +
                          ' ORDER BY key_name LIMIT ?', args + [limit])
            return [(_text(row[0]), row_to_version(row[1:])) for row in cursor.fetchall()]

    # -- hints: versions held for a partition that was down
    def store_hint(self, target, bucket, key, version):
        def work(cursor):
            pk = (target.encode(), bucket.encode(), key.encode(), version.version_id.encode())
            self._execute(cursor, 'DELETE FROM hints WHERE target = ? AND bucket = ? AND key_name = ?'
                          ' AND version_id = ?', pk)
            self._execute(cursor, 'INSERT INTO hints (target, bucket, key_name, ' + COLUMNS + ', created)'
                          ' VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                          pk[:3] + self._version_columns(version) + (time.time_ns() // 1000,))
            return True
        return self._transaction(work)

    def read_hints(self, bucket, key):
        """Versions of a key held here for any target."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT ' + COLUMNS + ' FROM hints WHERE bucket = ? AND key_name = ?',
                          (bucket.encode(), key.encode()))
            return [row_to_version(row) for row in cursor.fetchall()]

    def hints_for(self, target, limit):
        """Up to limit hints for target, oldest first: [(bucket, key, version, created)]."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT bucket, key_name, created, ' + COLUMNS + ' FROM hints'
                          ' WHERE target = ? ORDER BY created LIMIT ?', (target.encode(), limit))
            return [(_text(row[0]), _text(row[1]), row_to_version(row[3:]), int(row[2]))
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
        with self._cursor() as cursor:
            self._execute(cursor, 'DELETE FROM objects WHERE bucket = ?', (bucket.encode(),))

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


class SQLiteEngine(SQLEngine):
    """A partition in one SQLite file: the embedded default."""
    db_errors = (sqlite3.Error,)

    def __init__(self, name, path, timeout):
        self.path = path
        self.timeout = timeout
        super().__init__(name)

    def _connect(self):
        conn = sqlite3.connect(self.path, timeout=max(self.timeout, 5.0),
                               isolation_level=None, check_same_thread=False)
        conn.execute('PRAGMA journal_mode = WAL')
        conn.execute('PRAGMA synchronous = NORMAL')
        return conn

    def _begin(self, cursor):
        # IMMEDIATE takes the write lock now, so the read that follows is locked.
        cursor.execute('BEGIN IMMEDIATE')

    def _describe(self, error):
        if isinstance(error, sqlite3.OperationalError) and 'locked' in str(error):
            return 'lock conflict'
        return 'SQLite error (%s)' % type(error).__name__


class MySQLEngine(SQLEngine):
    """A partition in one MySQL/MariaDB database."""
    placeholder = '%s'
    lock_clause = ' FOR UPDATE'
    db_errors = (pymysql.Error,)

    def __init__(self, name, host, port, user, password, database, connect_timeout, read_timeout):
        self.params = dict(host=host, port=port, user=user, password=password,
                           connect_timeout=connect_timeout, read_timeout=read_timeout,
                           write_timeout=read_timeout, autocommit=True, charset='utf8mb4',
                           ssl_disabled=True)
        self.database = database
        super().__init__(name)

    def _connect(self):
        try:
            return pymysql.connect(database=self.database, **self.params)
        except pymysql.OperationalError as e:
            if e.args[0] != 1049:  # unknown database: a fresh server
                raise
        conn = pymysql.connect(**self.params)
        with conn.cursor() as cursor:
            cursor.execute('CREATE DATABASE IF NOT EXISTS `%s`' % self.database.replace('`', '``'))
            cursor.execute('USE `%s`' % self.database.replace('`', '``'))
        return conn

    def _begin(self, cursor):
        cursor.execute('START TRANSACTION')

    def _describe(self, error):
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        if code in RETRYABLE_MYSQL:
            return 'lock conflict'
        if not code:
            return 'connection lost'
        if isinstance(error, pymysql.OperationalError):
            return 'unreachable or failing (MySQL error %s)' % code
        return 'MySQL error %s' % code


def open_engine(partition, config):
    if partition.engine == 'sqlite':
        return SQLiteEngine(partition.name, partition.path, config.read_timeout)
    return MySQLEngine(partition.name, partition.host, partition.port, partition.user,
                       partition.password, partition.database,
                       config.connect_timeout, config.read_timeout)
