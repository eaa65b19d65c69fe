"""Chunks: the bytes of large values, written before their version.

A part of SQLEngine (sql.py), on its plumbing (_cursor, _execute).
"""
import hashlib
import logging
import time

from kvstore.engines.failures import CORRUPT, PartitionError
from kvstore.engines.rows import as_text

log = logging.getLogger('kvstore.engines')


class Chunks:
    """A large value's chunks: written, read back checked, copied, collected."""

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
        if row is None or hashlib.sha256(row[0]).hexdigest() != as_text(row[1]):
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
        removed = sum(self._transaction(lambda cursor: self._collect_one(cursor, row, before)) for row in candidates)
        last = as_text(candidates[-1][0]) if len(candidates) == limit else None
        return removed, last

    def _collect_one(self, cursor, candidate, before):
        """In one transaction, checked again under locks: delete a version's
        chunks unless one was written since `before`, or a version row or hint
        points to them.  Its chunks locked first: a version committed after the
        check (its coordinator checks its chunks under a share lock,
        check_chunks) waits for the delete and then finds them gone, or commits
        first and is seen here.  True when they went."""
        version_id, bucket, key = candidate
        self._execute(cursor, 'SELECT MAX(created) FROM chunks WHERE version_id = ?' + self.lock_clause,
                      (version_id,))
        newest = cursor.fetchall()[0][0]
        if newest is None or int(newest) >= before:
            return False
        # (chunk_size > 0: a version turned into its tombstone, reap_expired, keeps its id)
        for table, lock in (('objects', self.share_lock_clause), ('hints', '')):
            self._execute(cursor, 'SELECT COUNT(*) FROM %s WHERE bucket = ? AND key_name = ? AND version_id = ?'
                          ' AND chunk_size > 0%s' % (table, lock), (bucket, key, version_id))
            if int(cursor.fetchall()[0][0]):
                return False
        self._execute(cursor, 'DELETE FROM chunks WHERE version_id = ?', (version_id,))
        return True

    def check_chunks(self, cursor, version):
        """In the transaction that stores a large version: refuse it unless
        every chunk of it is here, share-locked until the commit (so that
        gc, _collect_one, cannot take them in between)."""
        if not version.chunk_count:
            return
        self._execute(cursor, 'SELECT COUNT(*) FROM chunks WHERE version_id = ?' + self.share_lock_clause,
                      (version.version_id.encode(),))
        if int(cursor.fetchall()[0][0]) != version.chunk_count:
            raise PartitionError(self.name, 'chunks of the value are missing (removed before the '
                                 'upload ended?)', unavailable=False)

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

