"""What the reconciler (sync.py) asks of a partition: range digests, scans of
the ring, many keys at once, pending markers, tombstones, counts.

A part of SQLEngine (sql.py), on its plumbing (_cursor, _execute, _transaction).
"""
from kvstore.coordinator.ring import RING_SIZE, key_point
from kvstore.coordinator.versions import EMPTY_DIGEST, reconcile
from kvstore.engines.rows import COLUMNS, as_text, row_to_version


class Reconciliation:
    """The reconciler's queries."""

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
            return [(as_text(row[0]), as_text(row[1]), row_to_version(row[2:], self)) for row in cursor.fetchall()]

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
                    found[(as_text(row[0]), as_text(row[1]))].append(row_to_version(row[2:], self))
        return found

    def apply_many(self, items):
        """apply() each (bucket, key, version) of items in one transaction: [stored]."""
        order = sorted(range(len(items)), key=lambda i: (items[i][0], items[i][1]))
        for bucket, key, version in items:
            self.copy_chunks(bucket, key, version)

        def work(cursor):
            # Every read first, then every store: the stores log their changes
            # (feed.py), and the change log stays locked from the first to the commit.
            held = {}
            for bucket, key, version in sorted(items, key=lambda item: item[:2]):
                if (bucket, key) not in held:
                    held[bucket, key] = self._held(cursor, bucket, key)
                self.check_chunks(cursor, version)
            stored = [False] * len(items)
            for i in order:
                bucket, key, version = items[i]
                drop_ids, keep = reconcile(held[bucket, key], version)
                self._store(cursor, bucket, key, drop_ids, version if keep else None)
                held[bucket, key] = [v for v in held[bucket, key] if v.version_id not in drop_ids] + (
                    [version] if keep else [])
                stored[i] = keep
            return stored
        return self._transaction(work, [(bucket, key) for bucket, key, _ in items]) if items else []

    def insert_many(self, items):
        """Store [(bucket, key, version)] of keys this partition holds no version
        of, inline values only, in one transaction of multi-row INSERTs: a bulk
        load (tests, imports), with exactly the rows apply() would write."""
        def work(cursor):
            seqs = self._sequence_numbers(cursor, len(items))
            statement = self._sql('INSERT INTO objects (bucket, key_name, ' + COLUMNS + ', point'
                                  + (', seq' if seqs else '') + ') VALUES (%s)'
                                  % ', '.join(['?'] * (COLUMNS.count(',') + 4 + bool(seqs))))
            rows = [(b.encode(), k.encode()) + self._version_columns(v) + (key_point(b, k),)
                    + ((seqs[i],) if seqs else ()) for i, (b, k, v) in enumerate(items)]
            cursor.executemany(statement, rows)
            self._log_many(cursor, [(b.encode(), k.encode(), v.version_id.encode()) for b, k, v in items])
        self._transaction(work)

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
            return [(as_text(b), as_text(k), as_text(v), int(c)) for b, k, v, c in cursor.fetchall()]

    def pending_count(self):
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT COUNT(*) FROM pending')
            return int(cursor.fetchone()[0])

    def tombstones(self, before, limit, after=None):
        """Up to limit tombstones modified (and, those of expired values,
        expired) before `before`, oldest first, after the (modified, bucket,
        key, version_id) cursor: [(modified, bucket, key, version_id)]."""
        clauses, args = ['deleted = 1', 'modified < ?', 'expires < ?'], [before, before]
        if after is not None:
            clause, more = self._after(('modified', 'bucket', 'key_name', 'version_id'),
                                       [after[0]] + [a.encode() for a in after[1:]])
            clauses.append(clause)
            args += more
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT modified, bucket, key_name, version_id FROM objects WHERE '
                          + ' AND '.join(clauses) +
                          ' ORDER BY modified, bucket, key_name, version_id LIMIT ?', args + [limit])
            return [(int(m), as_text(b), as_text(k), as_text(v)) for m, b, k, v in cursor.fetchall()]

    # Values that expired before a time, found by the index objects_expiry (deleted, expires).
    expired_clause = ' WHERE deleted = 0 AND expires > 0 AND expires < ?'
    expired_query = 'SELECT bucket, key_name, version_id FROM objects' + expired_clause + ' ORDER BY expires LIMIT ?'

    def reap_expired(self, before, limit):
        """Turn up to limit values that expired before `before` (microseconds)
        into their tombstones, in place (Version.tombstone: the same version,
        its value gone; chunks then belong to no version, and collect_chunks
        takes them).  Each row is changed by a statement of its own, which
        checks again that it still holds its value.  Returns how many were found."""
        tombstone = (b'', EMPTY_DIGEST.encode(), b'', b'')
        with self._cursor() as cursor:
            self._execute(cursor, self.expired_query, (before, limit))
            found = cursor.fetchall()
            self._each(cursor, 'UPDATE objects SET deleted = 1, content_type = ?, digest = ?, value = ?,'
                       ' metadata = ?, size = 0, chunk_size = 0'
                       ' WHERE bucket = ? AND key_name = ? AND version_id = ? AND deleted = 0',
                       [tombstone + tuple(row) for row in found])
        return len(found)

    def count_expired(self, before):
        """How many values held here expired before `before` (reap_expired's, in a dry run)."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT COUNT(*) FROM objects' + self.expired_clause, (before,))
            return int(cursor.fetchone()[0])

    def changes(self, after, limit):
        """Up to limit of the versions stored after change number `after`, in
        the order they were stored: [(seq, bucket, key)] (the change sequence:
        sql.py, add_change_sequence)."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT seq, bucket, key_name FROM objects WHERE seq > ? ORDER BY seq LIMIT ?',
                          (after, limit))
            return [(int(s), as_text(b), as_text(k)) for s, b, k in cursor.fetchall()]

    # Seconds within which a write transaction that took a change number has
    # committed (MariaDB numbers a row at its insert, not at its commit);
    # SQLite's writes are serialized, so its numbers follow the commits: 0.
    changes_settle_seconds = 60.0

    def changes_settle(self):
        return self.changes_settle_seconds

    def last_change(self):
        """The change number of the version stored last (0: none)."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT COALESCE(MAX(seq), 0) FROM objects')
            return int(cursor.fetchone()[0])

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
