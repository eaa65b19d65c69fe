"""A key's versions: reads, coordinated writes, a replica's writes, listings.

A part of SQLEngine (sql.py), on its plumbing (_cursor, _execute, _transaction).
"""
import functools
import json
import time

from kvstore.coordinator.ring import key_point
from kvstore.coordinator.versions import Held, encode_version_clock, live, reconcile
from kvstore.engines.rows import (COLUMN_PLACEHOLDERS, COLUMNS, as_text, column_count, listed_version,
                                  prefix_end, row_to_version)

PENDING_CLEARED = 100   # pending markers one statement drops at most


class Keys:
    """Reads and writes of a key's versions, and listings of a bucket's keys."""

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
            self._insert(cursor, bucket, key, version, if_absent)
            self._log_change(cursor, b, k, version.version_id.encode())   # the change feed (feed.py)

    def _store_many(self, cursor, bucket, drops, versions, if_absent=False):
        """_store for many keys of a bucket: drop the versions drops [(key,
        version_id)], add versions [(key, version)].  Here one key at a time;
        MySQLEngine does it in two statements and a third for the fence."""
        dropped = {}
        for key, version_id in drops:
            dropped.setdefault(key, []).append(version_id)
        for key, version in versions:
            self._store(cursor, bucket, key, dropped.pop(key, []), version, if_absent)
        for key, version_ids in dropped.items():
            self._store(cursor, bucket, key, version_ids, None)

    def _insert(self, cursor, bucket, key, version, if_absent=False):
        seq = self._sequence_numbers(cursor, 1)   # the change sequence (sql.py)
        self._execute(cursor, self._insert_statement(seq) + (self.if_absent_clause if if_absent else ''),
                      self._insert_args(bucket, key, version, seq))

    def _insert_statement(self, seq=()):
        return ('INSERT INTO objects (bucket, key_name, ' + COLUMNS + ', point' + (', seq' if seq else '') + ')'
                ' SELECT ?, ?, ' + COLUMN_PLACEHOLDERS + ', ?' + (', ?' if seq else '') + self.unfenced_clause)

    def _insert_args(self, bucket, key, version, seq=()):
        b = bucket.encode()
        return ((b, key.encode()) + self._version_columns(version) + (key_point(bucket, key),) + tuple(seq)
                + (b, version.modified))

    # An INSERT ... SELECT of one row, unless a forced bucket delete fenced the
    # version off (Buckets.drop_keys): its arguments are the bucket and the
    # version's modification time.
    unfenced_clause = (' WHERE NOT EXISTS (SELECT 1 FROM bucket_fences'
                       ' WHERE bucket_fences.bucket = ? AND dropped >= ?)')

    @staticmethod
    def _version_columns(version):
        """A version as the values of COLUMNS."""
        return (version.version_id.encode(), encode_version_clock(version), int(version.deleted),
                version.content_type.encode(), version.digest.encode(), version.modified, version.value,
                version.size, version.chunk_size,
                json.dumps(version.metadata, sort_keys=True).encode() if version.metadata else b'',
                version.expires)

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
        return self.send_query(self._with_fence(self.held_columns, 'objects', 'bucket = ? AND key_name = ?'),
                               (bucket.encode(), bucket.encode(), key.encode()))

    def finish_read(self, sent):
        """Held: the key's versions and its bucket's fence."""
        fence, rows = self._fenced_rows(self.finish_query(sent))
        return Held([self._held_version(row) for row in rows], fence)

    @staticmethod
    @functools.lru_cache(maxsize=256)   # built once: counting its columns was 8 % of a GET r=1 (cProfile)
    def _with_fence(columns, table, where, page=''):
        """A query of a bucket's rows (the bucket its first argument) that also
        reads the bucket's fence in the same round trip: a row of its own when
        the bucket has one, NULL in every column but the first, which the
        bucket's rows have NULL (_fenced_rows).  page: ORDER BY and LIMIT of
        the rows.  (The fence read as a scalar subquery, a row even without a
        fence, cost MariaDB about 6 % more a point read.)"""
        rows = 'SELECT NULL, %s FROM %s WHERE %s%s' % (columns, table, where, page)
        return ('SELECT dropped' + ', NULL' * column_count(columns) + ' FROM bucket_fences WHERE bucket = ?'
                + ' UNION ALL ' + ('SELECT * FROM (%s) AS page' % rows if page else rows))

    @staticmethod
    def _fenced_rows(rows):
        """(the fence, the rows without it) of a _with_fence query's answer."""
        fence = next((row[0] for row in rows if row[1] is None), None)
        return fence, [row[1:] for row in rows if row[1] is not None]

    # Many keys of a bucket (a batch, coordinator/batches.py): one statement
    # to read them, one transaction to coordinate or apply their writes.
    def send_read_many(self, bucket, keys, parsed=None):
        """parsed: a dict the partitions asked for the same keys share, so
        that a version several of them hold is built once (finish_read_many)."""
        columns = 'key_name, ' + self.held_columns
        where = 'bucket = ? AND key_name IN (%s)' % ', '.join(['?'] * len(keys))
        return self.send_query(self._with_fence(columns, 'objects', where),
                               [bucket.encode(), bucket.encode()] + [k.encode() for k in keys]), parsed

    def _read_many_answer(self, sent):
        """(rows, parsed) of a send_read_many."""
        return self.finish_query(sent[0]), sent[1]

    def finish_read_many(self, sent):
        """(the bucket's fence, {key: [Version]} of the keys found: a key
        without versions is left out)."""
        rows, parsed = self._read_many_answer(sent)
        fence, rows = self._fenced_rows(rows)
        found = {}
        for row in rows:
            stored = row[1:]
            version = parsed.get(stored) if parsed is not None else None
            if version is None:
                version = self._held_version(stored)
                if parsed is not None and not version.chunk_size:   # a chunked one reads its chunks here
                    parsed[stored] = version
            found.setdefault(as_text(row[0]), []).append(version)
        return fence, found

    def _held_many_query(self, count, lock=True, values=True):
        return ('SELECT key_name, ' + (self.held_columns if values else self.held_columns_without_value)
                + ' FROM objects WHERE bucket = ? AND key_name IN (%s)' % ', '.join(['?'] * count)
                + (self.lock_clause if lock else ''))

    def coordinate_many(self, bucket, writes):
        """coordinate() for many keys of a bucket in one transaction, under
        every key's lock (writes: [(key, decide)], keys distinct): one locking
        read of them all, decide(held) for each (None: that key stays as it
        is), their versions stored with the commit.  Returns, in order,
        (held, version or None) of each write."""
        keys = [key for key, _ in writes]

        def work(cursor):
            fence_and_clock = self._fence_and_clock(cursor, bucket)
            self._execute(cursor, self._held_many_query(len(keys), values=False),
                          [bucket.encode()] + [k.encode() for k in keys])
            held_of = {}
            for row in cursor.fetchall():
                held_of.setdefault(as_text(row[0]), []).append(self._held_version(row[1:]))
            outcomes, drops, versions = [], [], []
            for key, decide in writes:
                held = held_of.get(key, [])
                version = decide(held)
                outcomes.append((held, version))
                if version is not None:
                    self._after_fence(fence_and_clock, version)
                    drops += [(key, v.version_id) for v in held if version.supersedes(v)]
                    versions.append((key, version))
            self._store_many(cursor, bucket, drops, versions)
            return outcomes
        return self._transaction(work, [(bucket, key) for key in keys])

    def send_apply_many(self, bucket, items):
        """A replica takes the versions of many keys, as apply(bucket, key,
        version, superseded) for each of items [(key, version, superseded)],
        in one transaction.  Here it all happens at once; finish_apply_many:
        [kept] in order."""
        held_ids = self._transaction(
            lambda cursor: [self._replace(cursor, bucket, key, version, superseded)
                            for key, version, superseded in items], [(bucket, key) for key, _, _ in items])
        return self._kept_many(bucket, items, held_ids)

    def finish_apply_many(self, sent):
        return sent

    def _kept_many(self, bucket, items, held_ids):
        return [self._keep_applied(bucket, key, version, superseded, ids)
                for (key, version, superseded), ids in zip(items, held_ids)]

    def coordinate(self, bucket, key, decide, stage=None, idempotency=None):
        """Lock the key, let decide(held) make the new version, store it.
        stage: (epoch, complete) of the view the front end placed the key by
        (a conditional write):
        NewerView if a newer one is recorded here (sql.py, check_view).
        idempotency: (key, fingerprint, window seconds) of a write sent with an
        Idempotency-Key: Recorded if it was decided here before, else its
        outcome is recorded with the version (idempotency.py)."""
        def work(cursor):
            fence_and_clock = self._fence_and_clock(cursor, bucket)
            view = self.read_view(cursor) if stage is not None else None
            record = self._read_record(cursor, bucket, key, idempotency) if idempotency is not None else None
            held = Held(self._held(cursor, bucket, key, values=False), fence_and_clock[0][0])
            self._saw_change(fence_and_clock[0][2])
            if stage is not None:
                self.check_view(view, stage)
            if idempotency is not None:
                self._replay_if_recorded(record, idempotency, held, self.name)
            version = decide(held)
            self._after_fence(fence_and_clock, version)
            if idempotency is not None:
                self._record_outcome(cursor, bucket, key, idempotency, version, not live(held))
            self.check_chunks(cursor, version)
            self._store(cursor, bucket, key, [v.version_id for v in held if version.supersedes(v)], version)
            return held, version
        return self._transaction(work, [(bucket, key)])

    def mark_pending(self, bucket, key, version_id):
        """Mark a version this partition holds as not yet on every replica
        (again, for a write replayed by its Idempotency-Key: one marker)."""
        def mark():
            with self._cursor() as cursor:
                self._execute(cursor, self.insert_if_absent + ' INTO pending (bucket, key_name, version_id, created)'
                              ' VALUES (?, ?, ?, ?)',
                              (bucket.encode(), key.encode(), version_id.encode(), time.time_ns() // 1000))
        self._retrying(mark)

    def clear_pending(self, markers):
        """Drop the pending markers [(bucket, key, version_id)]: an autocommit
        DELETE of up to PENDING_CLEARED at once, one commit (an fsync) for
        them all, where one each cost a w=1 run a third of an fsync a write
        (issue 24).  In key order, as every such DELETE: two that meet wait
        for one another rather than deadlock."""
        rows = sorted({(b.encode(), k.encode(), v.encode()) for b, k, v in markers})
        with self._cursor() as cursor:
            for start in range(0, len(rows), PENDING_CLEARED):
                batch = rows[start:start + PENDING_CLEARED]
                self._execute(cursor, 'DELETE FROM pending WHERE (bucket, key_name, version_id) IN (%s)'
                              % ', '.join(['(?, ?, ?)'] * len(batch)), [value for row in batch for value in row])

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
            held_ids = self._transaction(lambda cursor: self._replace(cursor, bucket, key, version, superseded),
                                         [(bucket, key)])
            return self._keep_applied(bucket, key, version, superseded, held_ids)

        def work(cursor):
            held = self._held(cursor, bucket, key)
            self.check_chunks(cursor, version)
            drop_ids, store = reconcile(held, version)
            self._store(cursor, bucket, key, drop_ids, version if store else None)
            return store or (version.version_id in {v.version_id for v in held} - set(drop_ids))
        return self._transaction(work, [(bucket, key)])

    def _replace(self, cursor, bucket, key, version, superseded):
        """Lock the key's rows (first, as the coordinator does: writers of one
        key then queue rather than deadlock on InnoDB's gap locks), drop the
        superseded, add the version: the ids held before."""
        self._execute(cursor, self._locked_ids_query, (bucket.encode(), key.encode()))
        held_ids = [as_text(row[0]) for row in cursor.fetchall()]
        self.check_chunks(cursor, version)
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

    def answer_shared(self, sent):
        """Whether other threads may read the answer on answer_socket(sent)."""
        return False

    def scan(self, bucket, prefix, after, limit):
        """Up to `limit` version rows of keys > after that start with prefix, in
        key byte order: Held([(key, version_id, deleted, modified, expires,
        Version with its value left out)], the bucket's fence).  Tombstones and
        expired values included, so that the caller can tell a deleted key from
        a stale replica's copy.  The Version is built only when asked for (a
        call): a listing needs it only where replicas disagree."""
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
        return self.send_query(self._with_fence(self.scan_columns, 'objects', ' AND '.join(clauses),
                                                ' ORDER BY key_name LIMIT ?'), [bucket.encode()] + args + [limit])

    def finish_scan(self, sent):
        fence, rows = self._fenced_rows(self.finish_query(sent))
        rows = sorted(map(self._scanned, rows))   # a UNION's rows come in no promised order
        return Held([(key.decode(), version_id, deleted, int(modified), int(expires),
                      functools.partial(listed_version, version_id, deleted, clock, modified, size, content_type,
                                        expires))
                     for key, version_id, deleted, clock, modified, size, content_type, expires in rows], fence)

    # The columns a listing reads; MySQLEngine packs them into one.
    scan_columns = 'key_name, version_id, deleted, clock, modified, size, content_type, expires'

    @staticmethod
    def _scanned(row):
        return row

