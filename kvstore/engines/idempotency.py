"""Idempotency records: the outcome of a write sent with an Idempotency-Key.

A part of SQLEngine (sql.py), on its plumbing (_cursor, _execute).  A record is
written in the transaction that stores the write's version on the partition
that decides it (the key's first owner: coordinator/writes.py), so it exists
exactly when the write does; a retry finds it under the same lock.
"""
import time

from kvstore.engines.failures import Recorded
from kvstore.engines.rows import as_text


class Idempotency:
    """The outcomes of writes with an idempotency key, kept `window` seconds."""

    def _read_record(self, cursor, bucket, key, idempotency):
        """In the key's write transaction, before its locking read (and in its
        round trip: _prefetch): the write's idempotency record, if any (the
        key's user lock, taken first, queues it behind a retry recording it)."""
        return self._prefetch(cursor, 'SELECT fingerprint, version_id, digest, modified, deleted, created_key,'
                              ' recorded FROM idempotency WHERE bucket = ? AND key_name = ? AND idempotency_key = ?',
                              (bucket.encode(), key.encode(), idempotency[0].encode()))

    @staticmethod
    def _replay_if_recorded(rows, idempotency, held, partition):
        """Recorded(the record, held, this partition) if this write's idempotency key has a
        record here (rows: _read_record's) younger than its window."""
        window = idempotency[2]
        if rows and int(rows[0][6]) >= time.time_ns() // 1000 - window * 10 ** 6:
            fingerprint, version_id, digest, modified, deleted, created, _ = rows[0]
            raise Recorded(dict(fingerprint=as_text(fingerprint), version_id=as_text(version_id),
                                digest=as_text(digest), modified=int(modified), deleted=bool(int(deleted)),
                                created=bool(int(created))), held, partition)

    def _record_outcome(self, cursor, bucket, key, idempotency, version, created):
        """Record the write's outcome beside its version (an expired record of
        the same key is replaced)."""
        idempotency_key, fingerprint, _ = idempotency
        args = (bucket.encode(), key.encode(), idempotency_key.encode())
        self._execute(cursor, 'DELETE FROM idempotency WHERE bucket = ? AND key_name = ? AND idempotency_key = ?',
                      args)
        self._execute(cursor, 'INSERT INTO idempotency (bucket, key_name, idempotency_key, fingerprint, version_id,'
                      ' digest, modified, deleted, created_key, recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                      args + (fingerprint.encode(), version.version_id.encode(), version.digest.encode(),
                              version.modified, int(version.deleted), int(created), time.time_ns() // 1000))

    def collect_idempotency(self, before):
        """Delete the records written before `before` (microseconds): how many."""
        with self._cursor() as cursor:
            self._execute(cursor, 'DELETE FROM idempotency WHERE recorded < ?', (before,))
            return max(cursor.rowcount, 0)
