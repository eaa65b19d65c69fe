"""The change log the feed reads (GET /buckets/B/changes): every version this
partition stores, numbered in the order the stores commit.

A part of SQLEngine (sql.py), on its plumbing (_cursor, _execute, _transaction).
Keys._store logs each version it stores (_log_change) in the same transaction:
the version's number is taken from change_log.top, whose row stays locked
until the commit, so numbers are handed out in commit order.  A reader
share-locks that row (read_changes): every number up to top is then
committed or was rolled back, and no later write gets one lower, or a
`logged` time earlier than the reader's clock.
"""
from kvstore.engines.rows import INCARNATION, as_text

LOG_ROW = 'FROM change_log WHERE id = 1'
CHANGE_COLUMNS = 'seq, key_name, version_id, clock, deleted, content_type, size, modified, logged'
MAX_INLINE_VALUE = 64 * 1024   # bytes: a change carries its value (values=True) only up to this


class Feed:
    """The change log's SQL: written by _store, read by the feed, trimmed by gc."""

    # The clock a change is logged by, read when the statement runs (MariaDB's
    # NOW() is the time the statement, or a compound statement, began).
    log_clock_clause = None   # the dialect's; None: now_clause

    @property
    def _log_clock(self):
        return self.log_clock_clause or self.now_clause

    def _log_change(self, cursor, bucket, key, version_id):
        """Log the version (bytes in) _store just stored, unless a fence
        refused it: a number, and the row, from the version's own row.  Sent
        with the commit (MariaDB holds statements that answer nothing until
        then), so change_log's row is locked only for the commit's round trip."""
        self._execute(cursor, 'UPDATE change_log SET top = top + 1 WHERE id = 1')
        self._execute(cursor, 'INSERT INTO changes (seq, bucket, key_name, version_id, clock, deleted,'
                      ' content_type, size, modified, logged) SELECT (SELECT top ' + LOG_ROW + '), bucket,'
                      ' key_name, version_id, clock, deleted, content_type, size, modified, ' + self._log_clock
                      + ' FROM objects WHERE bucket = ? AND key_name = ? AND version_id = ?',
                      (bucket, key, version_id))

    def _log_many(self, cursor, items):
        """Log [(bucket, key, version_id)] (bytes) just stored in bulk (insert_many)."""
        self._execute(cursor, 'UPDATE change_log SET top = top + ? WHERE id = 1', (len(items),))
        self._execute(cursor, 'SELECT top, ' + self._log_clock + ' ' + LOG_ROW)
        top, now = cursor.fetchall()[0]
        first = int(top) - len(items) + 1
        for i, (bucket, key, version_id) in enumerate(items):
            self._execute(cursor, 'INSERT INTO changes (seq, bucket, key_name, version_id, clock, deleted,'
                          ' content_type, size, modified, logged) SELECT ?, bucket, key_name, version_id, clock,'
                          ' deleted, content_type, size, modified, ? FROM objects'
                          ' WHERE bucket = ? AND key_name = ? AND version_id = ?',
                          (first + i, int(now), bucket, key, version_id))

    def change_log_head(self):
        """Where the log stands: {incarnation, top, trimmed, now}."""
        return self._transaction(self._head)

    def _head(self, cursor):
        self._execute(cursor, 'SELECT top, trimmed, ' + self._log_clock + ', (SELECT value FROM metadata'
                      ' WHERE name = ?) ' + LOG_ROW + self.share_lock_clause, (INCARNATION.encode(),))
        top, trimmed, now, incarnation = cursor.fetchall()[0]
        return {'incarnation': as_text(incarnation), 'top': int(top), 'trimmed': int(trimmed), 'now': int(now)}

    def read_changes(self, bucket, after, incarnation, limit, values=False):
        """The changes of bucket logged after number `after` (None: from the
        oldest kept), up to limit, oldest first, with where the log stands
        (change_log_head's) and:
          reset: the log is not the one `after` is a position in (another
                 incarnation, or it went back: a restore), so it is read from
                 its oldest change kept instead;
          gone:  changes after `after` were trimmed (no rows then).
        rows: (seq, key, version_id, clock, deleted, content_type, size,
        modified, logged[, value: bytes up to MAX_INLINE_VALUE inline, else None])."""
        def work(cursor):
            head = self._head(cursor)
            start = after
            head['reset'] = after is not None and (incarnation != head['incarnation'] or after > head['top'])
            if start is None or head['reset']:
                start = head['trimmed']
            head['gone'] = start < head['trimmed']
            head['rows'] = [] if head['gone'] else self._changes_after(cursor, bucket, start, head['top'], limit,
                                                                       values)
            return head
        return self._transaction(work)

    def _changes_after(self, cursor, bucket, after, top, limit, values):
        columns = ', '.join('c.' + c for c in CHANGE_COLUMNS.split(', '))
        joined, args = '', []
        if values:
            columns += ', CASE WHEN o.chunk_size = 0 AND o.size <= ? THEN o.value END'
            joined = (' LEFT JOIN objects o ON o.bucket = c.bucket AND o.key_name = c.key_name'
                      ' AND o.version_id = c.version_id')
            args.append(MAX_INLINE_VALUE)
        self._execute(cursor, 'SELECT ' + columns + ' FROM changes c' + joined +
                      ' WHERE c.bucket = ? AND c.seq > ? AND c.seq <= ? ORDER BY c.seq LIMIT ?',
                      args + [bucket.encode(), after, top, limit])
        return [(int(seq), as_text(key), as_text(version_id), bytes(clock), bool(int(deleted)), as_text(content_type),
                 int(size), int(modified), int(logged)) + ((None if rest[0] is None else bytes(rest[0]),) if values else ())
                for seq, key, version_id, clock, deleted, content_type, size, modified, logged, *rest
                in cursor.fetchall()]

    def trim_changes(self, before, keep, limit):
        """Remove up to limit of the oldest changes logged before `before`
        (microseconds) or beyond the newest `keep`: how many went.  trimmed
        moves with them, in the same transaction."""
        def work(cursor):
            self._execute(cursor, 'SELECT top ' + LOG_ROW)
            top = int(cursor.fetchall()[0][0])
            # logged follows seq (numbers and times are taken under one lock):
            # the rows logged before `before` are the oldest, up to this one
            self._execute(cursor, 'SELECT seq FROM changes WHERE logged < ? ORDER BY logged DESC LIMIT 1', (before,))
            cut = max([top - keep] + [int(row[0]) for row in cursor.fetchall()])
            self._execute(cursor, 'SELECT seq FROM changes WHERE seq <= ? ORDER BY seq LIMIT ?', (cut, limit))
            found = [int(row[0]) for row in cursor.fetchall()]
            if not found:
                return 0
            self._execute(cursor, 'DELETE FROM changes WHERE seq <= ?', (found[-1],))
            self._execute(cursor, 'UPDATE change_log SET trimmed = ? WHERE id = 1 AND trimmed < ?',
                          (found[-1], found[-1]))
            return len(found)
        return self._transaction(work)
