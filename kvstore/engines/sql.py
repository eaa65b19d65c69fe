"""SQLEngine: the SQL both engines share, and how it runs.

Its methods are grouped by role in mixins (keys.py, chunks.py, hints.py,
buckets.py, reconcile.py, idempotency.py, feed.py); this class holds what they all use: a partition's
connections, cursors, write transactions and their retries, what a database
error means, the schema and the partition's incarnation and metadata.
The dialects (sqlite.py, mariadb.py) say how to connect and lock.
"""
import contextlib
import json
import logging
import random
import time

from kvstore.engines import schema
from kvstore.engines.buckets import Buckets
from kvstore.engines.chunks import Chunks
from kvstore.engines.feed import Feed
from kvstore.engines.failures import HEALTHY_FAILURES, LOCK_CONFLICT, NewerView, PartitionError
from kvstore.engines.hints import Hints
from kvstore.engines.idempotency import Idempotency
from kvstore.engines.keys import Keys
from kvstore.engines.pool import Pool
from kvstore.engines.reconcile import Reconciliation
from kvstore.coordinator.versions import decode_version_clock
from kvstore.engines.rows import CHANGES_CHECKPOINT, INCARNATION, as_text, new_incarnation_id, schema_statements

log = logging.getLogger('kvstore.engines')
TRANSACTION_ATTEMPTS = 10
VIEW = 'view'   # the metadata row of the recorded view (coordinator/views.py)


class SQLEngine(Keys, Chunks, Hints, Buckets, Reconciliation, Idempotency, Feed):
    """The SQL both engines share.  Subclasses set how to connect and lock."""
    placeholder = '?'
    lock_clause = ''
    share_lock_clause = ''   # SQLite's write transactions lock the whole file
    now_clause = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)"   # microseconds
    if_absent_clause = ' ON CONFLICT DO NOTHING'
    # The highest change number the partition has handed out (objects.seq): it
    # never goes down, unless the partition is restored or rolled back.
    issued_changes_clause = '(SELECT value FROM objects_sequence)'
    insert_if_absent = 'INSERT OR IGNORE'
    db_errors = ()

    def __init__(self, name):
        self.name = name
        self._schema_ready = False
        self._actor = None
        self._newest_change_seen = 0   # see _check_restored
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

    def _begin(self, cursor, keys=()):
        """Start a write transaction; may return a cursor to use in its place.
        keys: the (bucket, key) pairs whose versions it writes."""
        raise NotImplementedError

    @staticmethod
    def _new_cursor(conn):
        return conn.cursor()

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
                cursor = self._new_cursor(conn)
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

    def _prefetch(self, cursor, statement, args=()):
        """A SELECT's rows, a list; a cursor that batches (MariaDB's
        BatchingCursor) sends it with the next statement that returns rows and
        fills the list then, a round trip saved."""
        prefetch = getattr(cursor, 'prefetch', None)
        if prefetch is not None:
            return prefetch(self._sql(statement), args)
        self._execute(cursor, statement, args)
        return cursor.fetchall()

    def _prefetch_values(self, cursor, expressions, args=()):
        """The one row of values of SQL expressions that lock nothing, read at
        the start of a key's write transaction (MariaDB: by the statement that
        takes the key's lock, BatchingCursor.prefetch_values)."""
        prefetch = getattr(cursor, 'prefetch_values', None)
        if prefetch is not None:
            return prefetch(self._sql(expressions), args)
        self._execute(cursor, 'SELECT ' + expressions, args)
        return cursor.fetchall()

    def _each(self, cursor, statement, rows):
        """Run statement once per row of arguments (MySQL: in one round trip)."""
        for row in rows:
            self._execute(cursor, statement, row)

    def _transaction(self, work, keys=()):
        """Run work(cursor) in one write transaction, retrying lock conflicts.
        keys: the (bucket, key) pairs whose versions it writes (see _begin)."""
        def attempt():
            with self._cursor() as cursor:
                cursor = self._begin(cursor, keys) or cursor
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
        reads the partition's incarnation (minting it for new tables), the
        others check it (_check_restored)."""
        conn = self._connect()
        cursor = self._new_cursor(conn)
        try:
            if self._schema_ready:
                self._check_restored(cursor)
            else:
                for statement in schema_statements():
                    cursor.execute(statement)
                schema.upgrade(self, cursor)
                self._execute(cursor, self.insert_if_absent + ' INTO metadata (name, value) VALUES (?, ?)',
                              (INCARNATION.encode(), new_incarnation_id().encode()))
                if cursor.rowcount == 1:   # new tables: their numbers start again
                    self._newest_change_seen = 0
                cursor.execute(self.insert_if_absent + ' INTO change_log (id, top, trimmed) VALUES (1, 0, 0)')
                self._execute(cursor, 'SELECT value FROM metadata WHERE name = ?', (INCARNATION.encode(),))
                self._actor = '%s.%s' % (self.name, as_text(cursor.fetchone()[0]))
                self._schema_ready = True
        except BaseException:
            conn.close()
            raise
        finally:
            cursor.close()
        return conn

    # -- a partition restored from a backup or rolled back without `sync.py
    # new-incarnation` (docs/failure-model.md): its next dots could repeat
    # ones it issued after the backup, which the other replicas hold.  The
    # front end notes the newest change number it sees on the partition (each
    # coordinated write reads it with the key's lock, for nothing), and on
    # each new connection (the partition back from being down or restarted)
    # compares it with the highest the partition has handed out, which only a
    # restore or rollback lowers.  Below what it saw: the front end mints the
    # partition a new incarnation itself, as sync.py would.  Otherwise it
    # takes the recorded incarnation, should it have changed (`sync.py
    # new-incarnation` since it opened the partition).
    def _saw_change(self, number):
        if number is not None and int(number) > self._newest_change_seen:
            self._newest_change_seen = int(number)

    def _check_restored(self, cursor):
        self._execute(cursor, 'SELECT (SELECT value FROM metadata WHERE name = ?), ' + self.issued_changes_clause,
                      (INCARNATION.encode(),))
        recorded, issued = cursor.fetchone()
        recorded, issued = as_text(recorded), int(issued or 0)
        if issued < self._newest_change_seen:
            log.warning('%s was restored from a backup or rolled back without sync.py new-incarnation %s: '
                        'it has handed out change numbers up to %d, below the %d seen on it; it gets a new '
                        'incarnation', self.name, self.name, issued, self._newest_change_seen)
            self._mint(cursor, replacing=recorded)
            self._newest_change_seen = issued
        elif recorded and '%s.%s' % (self.name, recorded) != self._actor:
            self._actor = '%s.%s' % (self.name, recorded)

    def _mint(self, cursor, replacing=None):
        """Record a new incarnation (replacing: only if the recorded one is still
        that: else take the one another front end minted first) and have the
        next sync.py run compare every arc, since what the backup lacks was
        announced by no change it holds (reconciler/changes.py).  The actor."""
        self._execute(cursor, "UPDATE metadata SET value = 'null' WHERE name = ?", (CHANGES_CHECKPOINT.encode(),))
        incarnation = new_incarnation_id()
        self._execute(cursor, 'UPDATE metadata SET value = ? WHERE name = ?' + (' AND value = ?' if replacing else ''),
                      (incarnation.encode(), INCARNATION.encode()) + ((replacing.encode(),) if replacing else ()))
        if cursor.rowcount != 1:
            self._execute(cursor, 'SELECT value FROM metadata WHERE name = ?', (INCARNATION.encode(),))
            incarnation = as_text(cursor.fetchone()[0])
        self._actor = '%s.%s' % (self.name, incarnation)
        return self._actor

    # -- the change sequence: every version row stored gets a number, higher
    # than any before it on this partition (objects.seq, indexed), so that
    # sync.py reads what changed since its last run (changes()) instead of
    # digesting every row.  Engine-specific, so not in database_definition.sql:
    # an upgrade adds it (schema.py), to new and older partitions alike.
    def add_change_sequence(self, cursor):
        raise NotImplementedError

    def add_column(self, cursor, table, column, definition):
        """Add a column to a table that lacks it (an upgrade: schema.py), on an
        autocommit cursor."""
        raise NotImplementedError

    def _sequence_numbers(self, cursor, count):
        """The change numbers of `count` rows about to be inserted, in a write
        transaction; () when the database numbers them itself."""
        return ()

    def new_incarnation(self):
        """Mint a new incarnation, for a partition restored from a backup or
        rolled back: the dots it issued since may be missing from it, and it
        must not issue them again (_mint).  Front ends read the incarnation
        when they open a connection to the partition: restart them (or do this
        before they start).  Returns the new actor."""
        with self._cursor() as cursor:
            return self._mint(cursor)

    def read_incarnation(self):
        """Read the incarnation again, for a front end whose writes were
        refused: sync.py may have minted a new one since it opened the
        partition (incarnations.py).  Returns the actor."""
        values = self.get_metadata([INCARNATION])
        if INCARNATION in values:
            self._actor = '%s.%s' % (self.name, values[INCARNATION])
        return self.actor

    def highest_counter(self, actor):
        """The highest counter of actor that any version held here carries (0:
        none).  The versions mentioning it are found by the clock's text, then
        decoded: a scan, for sync.py's check of restored partitions."""
        pattern = '%%"%s"%%' % actor.replace('!', '!!').replace('%', '!%').replace('_', '!_')
        with self._cursor() as cursor:
            self._execute(cursor, "SELECT clock FROM objects WHERE CAST(clock AS CHAR) LIKE ? ESCAPE '!'", (pattern,))
            clocks = [decode_version_clock(row[0]) for row in cursor.fetchall()]
        return max([seen.get(actor, 0) for seen, _ in clocks] + [dot[1] for _, dot in clocks if dot[0] == actor] + [0])

    def get_metadata(self, names):
        """{name: value} of the metadata rows that exist among names."""
        names = list(names)
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT name, value FROM metadata WHERE name IN (%s)'
                          % ', '.join(['?'] * len(names)), [n.encode() for n in names])
            return {as_text(n): as_text(v) for n, v in cursor.fetchall()}

    def read_view(self, cursor):
        """In a write transaction, before the key's locking read (and in its
        round trip: _prefetch): the recorded view's row, for check_view.  It
        stays share-locked until the commit, so sync.py records a newer view
        only after the transaction (set_metadata waits)."""
        return self._prefetch(cursor, 'SELECT value FROM metadata WHERE name = ?' + self.share_lock_clause,
                              (VIEW.encode(),))

    def check_view(self, rows, stage):
        """NewerView if the view recorded here (rows: read_view's) is newer
        than stage, (epoch, complete): a later epoch, or the same one complete."""
        view = json.loads(as_text(rows[0][0])) if rows else {'epoch': 0, 'state': None}
        if (view['epoch'], view['state'] == 'complete') > tuple(stage):
            raise NewerView(self.name, view['epoch'])

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

    def close(self):
        self.pool.close()

    def try_lock(self, name):
        """Take the advisory lock `name` without waiting: a handle, or None when
        another process holds it.  Held until unlock() or the process dies."""
        raise NotImplementedError

    def unlock(self, handle):
        raise NotImplementedError
