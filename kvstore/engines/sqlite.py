"""SQLite: a partition in one local file, the embedded default."""
import fcntl
import hashlib
import sqlite3

from kvstore.engines.failures import BAD_DATA, FULL, LOCK_CONFLICT, PartitionError
from kvstore.engines.sql import SQLEngine


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

    def _begin(self, cursor, keys=()):
        # IMMEDIATE takes the write lock now, so the read that follows is locked.
        cursor.execute('BEGIN IMMEDIATE')

    def add_change_sequence(self, cursor):
        """objects.seq, numbered from a counter row (objects_sequence): a rowid
        or MAX(seq) + 1 would hand out again the number of a row deleted last."""
        cursor.execute('BEGIN IMMEDIATE')   # one change with the numbering below
        try:
            if 'seq' not in [row[1] for row in cursor.execute('PRAGMA table_info(objects)').fetchall()]:
                cursor.execute('ALTER TABLE objects ADD COLUMN seq INTEGER NOT NULL DEFAULT 0')
                # The rows already held are numbered in the order they were stored.
                cursor.execute('UPDATE objects SET seq = rowid')
            cursor.execute('COMMIT')
        except BaseException:
            cursor.execute('ROLLBACK')
            raise
        cursor.execute('CREATE INDEX IF NOT EXISTS objects_seq ON objects (seq)')
        cursor.execute('CREATE TABLE IF NOT EXISTS objects_sequence (value INTEGER NOT NULL)')
        cursor.execute('INSERT INTO objects_sequence (value) SELECT COALESCE(MAX(seq), 0) FROM objects'
                       ' WHERE NOT EXISTS (SELECT 1 FROM objects_sequence)')

    def add_column(self, cursor, table, column, definition):
        cursor.execute('BEGIN IMMEDIATE')   # checked and added under the write lock: another opener waits
        try:
            if column not in [row[1] for row in cursor.execute('PRAGMA table_info(%s)' % table).fetchall()]:
                cursor.execute('ALTER TABLE %s ADD COLUMN %s %s' % (table, column, definition))
            cursor.execute('COMMIT')
        except BaseException:
            cursor.execute('ROLLBACK')
            raise

    changes_settle_seconds = 0.0

    def _sequence_numbers(self, cursor, count):
        # Writes to a SQLite file are serialized, so the numbers follow the commits.
        cursor.execute('UPDATE objects_sequence SET value = value + ?', (count,))
        last = cursor.execute('SELECT value FROM objects_sequence').fetchone()[0]
        return range(last - count + 1, last + 1)

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
