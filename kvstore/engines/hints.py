"""Hints: versions held for a partition that was down, to hand back later.

A part of SQLEngine (sql.py), on its plumbing (_cursor, _execute, _transaction).
"""
import time

from kvstore.coordinator.versions import Held
from kvstore.engines.rows import COLUMN_PLACEHOLDERS, COLUMNS, as_text, row_to_version


class Hints:
    """Versions held here for another partition (its target)."""

    def store_hint(self, target, bucket, key, version):
        self.copy_chunks(bucket, key, version)

        def work(cursor):
            pk = (target.encode(), bucket.encode(), key.encode(), version.version_id.encode())
            self._execute(cursor, 'DELETE FROM hints WHERE target = ? AND bucket = ? AND key_name = ?'
                          ' AND version_id = ?', pk)
            self._execute(cursor, 'INSERT INTO hints (target, bucket, key_name, ' + COLUMNS + ', created)'
                          ' SELECT ?, ?, ?, ' + COLUMN_PLACEHOLDERS + ', ?' + self.unfenced_clause,
                          pk[:3] + self._version_columns(version) + (time.time_ns() // 1000,)
                          + (pk[1], version.modified))
            return True
        return self._transaction(work)

    def read_hints(self, bucket, key):
        """Held: the versions of a key held here for any target, and its bucket's fence."""
        with self._cursor() as cursor:
            self._execute(cursor, self._with_fence(self.held_columns, 'hints', 'bucket = ? AND key_name = ?'),
                          (bucket.encode(), bucket.encode(), key.encode()))
            fence, rows = self._fenced_rows(cursor.fetchall())
            return Held([self._held_version(row) for row in rows], fence)

    def hints_for(self, target, limit):
        """Up to limit hints for target, oldest first: [(bucket, key, version, created)]."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT bucket, key_name, created, ' + COLUMNS + ' FROM hints'
                          ' WHERE target = ? ORDER BY created LIMIT ?', (target.encode(), limit))
            return [(as_text(row[0]), as_text(row[1]), row_to_version(row[3:], self), int(row[2]))
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
            return {as_text(row[0]): (int(row[1]), int(row[2])) for row in cursor.fetchall()}

    def hinted_keys(self):
        """{(bucket, key)} of every hint held here, whatever its target."""
        with self._cursor() as cursor:
            self._execute(cursor, 'SELECT DISTINCT bucket, key_name FROM hints')
            return {(as_text(b), as_text(k)) for b, k in cursor.fetchall()}
