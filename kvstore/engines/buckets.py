"""Buckets: their records (properties), and dropping a bucket's keys.

A part of SQLEngine (sql.py), on its plumbing (_cursor, _execute, _transaction).
"""
import json
import time

from kvstore.coordinator.versions import now_micros
from kvstore.engines.rows import as_text


class Buckets:
    """Bucket records, and the keys of a bucket as a whole."""

    def drop_keys(self, bucket, dropped=None):
        """Remove every version of a bucket's keys, the hints held for them, the
        chunks of their large values and their pending markers (which would
        have sync.py push the dropped versions back), and fence the bucket off:
        from then on a version of its keys modified at or before `dropped`
        (microseconds; at least every version held here) is refused wherever it
        comes from (keys.py, _store; hints.py), as one written before the drop.
        One transaction: a write of the bucket that commits here first is
        removed, one that comes after meets the fence.  Without `dropped`, the
        rows only (as a partition that lost them: the tests)."""
        b = bucket.encode()

        def work(cursor):
            if dropped is None:
                return self._drop_rows(cursor, b)
            fence = dropped
            for table in ('bucket_fences', 'objects', 'hints'):
                column = 'dropped' if table == 'bucket_fences' else 'modified'
                self._execute(cursor, 'SELECT MAX(%s) FROM %s WHERE bucket = ?' % (column, table), (b,))
                fence = max(fence, int(cursor.fetchall()[0][0] or 0))
            self._set_fence(cursor, b, fence)
            self._drop_rows(cursor, b)
        return self._transaction(work)

    def fence_bucket(self, bucket, fence):
        """Take a fence another partition holds (a forced delete through a front
        end that did not know this partition: sync.py, read repair): raise this
        partition's fence of the bucket to `fence` and remove what it covers,
        the versions, hints, idempotency records and bucket record written at
        or before it, and the pending markers of the versions removed.  What
        was written after it stays (the bucket created again).  True when the
        fence was raised."""
        b = bucket.encode()

        def work(cursor):
            self._execute(cursor, 'SELECT dropped FROM bucket_fences WHERE bucket = ?' + self.lock_clause, (b,))
            held = cursor.fetchall()
            if held and int(held[0][0]) >= fence:
                return False
            self._set_fence(cursor, b, fence)
            for table, column in (('objects', 'bucket'), ('hints', 'bucket'), ('idempotency', 'bucket'),
                                  ('buckets', 'name')):
                self._execute(cursor, 'DELETE FROM %s WHERE %s = ? AND modified <= ?' % (table, column), (b, fence))
            self._execute(cursor, 'DELETE FROM pending WHERE bucket = ? AND NOT EXISTS (SELECT 1 FROM objects'
                          ' WHERE objects.bucket = pending.bucket AND objects.key_name = pending.key_name'
                          ' AND objects.version_id = pending.version_id)', (b,))
            return True
        return self._transaction(work)

    def bucket_fences(self):
        """{bucket: fence} of the buckets force-deleted here."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT bucket, dropped FROM bucket_fences')
            return {as_text(b): int(d) for b, d in cursor.fetchall()}

    def _set_fence(self, cursor, b, fence):
        self._execute(cursor, 'DELETE FROM bucket_fences WHERE bucket = ?', (b,))
        self._execute(cursor, 'INSERT INTO bucket_fences (bucket, dropped) VALUES (?, ?)', (b, fence))

    def _drop_rows(self, cursor, b):
        for table in ('objects', 'pending', 'hints', 'chunks', 'idempotency'):
            self._execute(cursor, 'DELETE FROM %s WHERE bucket = ?' % table, (b,))

    def _fence_and_clock(self, cursor, bucket):
        """At the start of a key's write transaction: the bucket's fence,
        this partition's clock, for _after_fence, and its newest change number,
        for sql.py's check of a restored partition (MariaDB: read by the
        statement that takes the key's lock, in the locking read's round trip)."""
        return self._prefetch_values(cursor, '(SELECT dropped FROM bucket_fences WHERE bucket = ?), '
                                     + self.now_clause + ', (SELECT MAX(seq) FROM objects)', (bucket.encode(),))

    @staticmethod
    def _after_fence(fence_and_clock, version):
        """A new version coordinated here is dated after the bucket's fence, if
        any (a front end whose clock is behind the one that dropped it); a
        tombstone no earlier than this partition's clock, since gc reaps it by
        its age (a front end whose clock is behind would have it reaped early).
        fence_and_clock: the rows of _fence_and_clock.  (A fence committed after
        it was read, a drop crossing the write, still refuses the version:
        _store's unfenced_clause; the write then counts as one before the drop.)"""
        fence, now, _ = fence_and_clock[0]
        if fence is not None and version.modified <= int(fence):
            version.modified = int(fence) + 1
        if version.deleted:
            version.modified = max(version.modified, int(now))

    def bucket_names(self, now=None):
        """The buckets recorded here, and those holding a value at `now`
        (microseconds; default this process's clock)."""
        now = now_micros() if now is None else now
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT name FROM buckets')
            names = {as_text(row[0]) for row in cursor.fetchall()}
            self._execute(cursor, 'SELECT DISTINCT bucket FROM objects WHERE deleted = 0'
                          ' AND (expires = 0 OR expires > ?)', (now,))
            return names | {as_text(row[0]) for row in cursor.fetchall()}

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

    def bucket_records(self):
        """{bucket: (properties JSON text, modified)} of the records held here."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT name, properties, modified FROM buckets')
            return {as_text(n): (as_text(p), int(m)) for n, p, m in cursor.fetchall()}

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
