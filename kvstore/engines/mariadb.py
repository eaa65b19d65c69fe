"""MariaDB: a partition in one database of a MariaDB server.

Every query's answer is read by mysqlwire (the one reader, on hot and cold
paths alike); PyMySQL connects, escapes values and carries the bytes.
"""
import contextlib
import functools
import hashlib
import re
import select

import pymysql

from kvstore.engines import mysqlwire
from kvstore.engines.coalescing import ApplyQueue, Ticket
from kvstore.engines.failures import BAD_DATA, FULL, LOCK_CONFLICT, REFUSED, PartitionError
from kvstore.coordinator.ring import key_point
from kvstore.engines.rows import COLUMNS, as_text, row_to_version
from kvstore.engines.sql import SQLEngine

# MySQL errors worth retrying a transaction for: deadlock, lock wait timeout.
RETRYABLE_MYSQL = (1213, 1205)
# MySQL errors of a full partition: table full, disk full, out of space.
MYSQL_FULL = (1114, 1021, 1030)
# MySQL errors the request's own data causes (a value too long for its column,
# out of range, not valid for it): the partition is as healthy as before.
MYSQL_BAD_DATA = (1048, 1264, 1265, 1292, 1366, 1406)
# MySQL errors of a privilege the user lacks (database, table, column, routine,
# command denied): the partition's grants, not the request.
MYSQL_DENIED = (1044, 1142, 1143, 1227, 1370)


class Sent:
    """A MySQL query sent and not yet answered: the connection its answers
    come on (and what was asked, when reading the answer needs it)."""
    __slots__ = ('conn', 'request')

    def __init__(self, conn, request=None):
        self.conn, self.request = conn, request


class BatchingCursor(mysqlwire.Cursor):
    """A MySQL write transaction in as few round trips as it can take.

    Statements that return nothing are held back and sent with the next one
    that does, or with the COMMIT, as one multi-statement: START TRANSACTION
    travels with the first (locking) read, and the writes with the COMMIT:
    two round trips instead of five.  A replica's write, built here and sent
    whole (statements(), inside one compound statement), takes one.

    locks: the names of the user locks (GET_LOCK) of the keys it writes.  Such
    a transaction is READ COMMITTED, the session's level (set once per
    connection: MySQLEngine.params): its locking reads take no gap locks (gap
    locks made writers of neighbouring new keys deadlock), and the key's own
    lock, taken before it starts and released after it ends, queues writers
    of one key, even of a key no row stands for yet.  A transaction without
    keys (buckets, metadata, fences, chunk gc, hints, bulk loads) is
    REPEATABLE READ, as before: the gap locks of its locking reads and deletes
    are what serialize it with its like (two creators of one bucket record).
    """

    def __init__(self, conn, locks=()):
        super().__init__(conn)
        # (rows list, leading columns not its own) of each prefetch, filled when its batch is answered
        self._prefetched = []
        self._locks = locks
        self._held = key_transaction_start(locks)
        self._release = key_transaction_end(locks)
        self.connection = self   # SQLEngine._transaction commits through it, as on sqlite3's cursors

    def execute(self, statement, args=None):
        if not statement.lstrip().upper().startswith('SELECT'):
            self.hold(statement, args)
            return
        self._send(statement if args is None else self.bind(statement, args))

    def hold(self, statement, args=None):
        """Send statement with the next batch, or with the others as one
        (statements()).  Only the batch's last result set can be fetched."""
        self._held.append(statement if args is None else self.bind(statement, args))

    def prefetch(self, statement, args=None):
        """Send a SELECT with the next batch (the key's locking read) rather
        than in a round trip of its own: a list, its rows once that is answered."""
        rows = []
        self._prefetched.append((rows, 0))
        self.hold(statement, args)
        return rows

    def prefetch_values(self, expressions, args=None):
        """The values of SQL expressions that lock nothing (a subquery's plain
        read, the clock), read by the statement that takes the keys' user
        locks (a SELECT of GET_LOCK and them, in place of its DO), after them:
        neither a round trip nor a statement of their own.  A list, one row,
        once answered.  Once, first; without locks, as prefetch."""
        expressions = expressions if args is None else self.bind(expressions, args)
        if not (self._locks and self._held and self._held[0] == key_transaction_start(self._locks)[0]):
            return self.prefetch('SELECT ' + expressions)
        rows = []
        self._prefetched.insert(0, (rows, len(self._locks)))   # the first result set
        self._held[0] = 'SELECT %s, %s' % (lock_calls(self._locks), expressions)
        return rows

    def executemany(self, statement, rows):
        self._send()
        super().executemany(statement, rows)

    def _send(self, last=None):
        """Send the held statements (and last); keep last's rows to fetch."""
        statements = self._held + ([last] if last else [])
        prefetched, self._held, self._prefetched = self._prefetched, [], []
        if statements:
            super().execute(';\n'.join(statements))
            for (rows, skip), answered in zip(prefetched, self.result_sets):
                rows[:] = [row[skip:] for row in answered] if skip else answered

    def statements(self):
        """What is held, COMMIT and the keys' locks released: the SQL to send as one query."""
        return self._held + ['COMMIT'] + self._release

    def commit(self):
        self._held += ['COMMIT'] + self._release
        self._send()

    def rollback(self):
        self._held = []
        super().execute(';\n'.join(['ROLLBACK'] + self._release))


# How long a writer waits for a key's user lock: longer than any client waits
# for an answer (read_timeout), so that GET_LOCK never gives up (returning 0,
# unnoticed in a multi-statement); the client gives up first and drops the
# connection, which releases whatever it held.
KEY_LOCK_WAIT = 3600


def key_transaction_start(locks):
    if not locks:
        return ['SET TRANSACTION ISOLATION LEVEL REPEATABLE READ', 'START TRANSACTION']
    return ['DO ' + lock_calls(locks), 'START TRANSACTION']


def lock_calls(locks):
    return ', '.join("GET_LOCK('%s', %d)" % (name, KEY_LOCK_WAIT) for name in locks)


@functools.lru_cache(maxsize=4096)   # a hot key's writes take it again and again
def key_lock(database, bucket, key):
    """The name of a key's user lock (hex: nothing to escape).  User locks
    are server-wide: the name says whose database it is."""
    return hashlib.md5(b'\0'.join((database.encode(), bucket.encode(), key.encode()))).hexdigest()


def key_transaction_end(locks):
    return ['DO ' + ', '.join("RELEASE_LOCK('%s')" % name for name in locks)] if locks else []


class MySQLEngine(SQLEngine):
    """A partition in one MySQL/MariaDB database."""
    placeholder = '%s'
    lock_clause = ' FOR UPDATE'
    share_lock_clause = ' LOCK IN SHARE MODE'
    now_clause = 'CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)'
    log_clock_clause = 'CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED)'   # feed.py
    issued_changes_clause = ("(SELECT AUTO_INCREMENT - 1 FROM information_schema.TABLES"
                             " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'objects')")
    unfenced_clause = ' FROM DUAL' + SQLEngine.unfenced_clause
    if_absent_clause = ' ON DUPLICATE KEY UPDATE version_id = version_id'
    insert_if_absent = 'INSERT IGNORE'
    db_errors = (pymysql.Error,)

    def __init__(self, name, host, port, user, password, database, connect_timeout, read_timeout):
        self.params = dict(host=host, port=port, user=user, password=password,
                           connect_timeout=connect_timeout, read_timeout=read_timeout,
                           write_timeout=read_timeout, autocommit=True, charset='utf8mb4',
                           ssl_disabled=True, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
                           # the key transactions' level (BatchingCursor), once per
                           # connection instead of a statement in each of them
                           init_command='SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED')
        self.database = database
        super().__init__(name)
        self._applies = ApplyQueue(name, self._send_applies, self._read_applies, self.pool.discard)

    def _connect(self):
        try:
            return pymysql.connect(database=self.database, **self.params)
        except pymysql.OperationalError as e:
            if e.args[0] != 1049:  # unknown database: a fresh server, or it was dropped
                raise
        self._schema_ready = False   # new tables, and a new incarnation (_open)
        conn = pymysql.connect(**self.params)
        cursor = mysqlwire.Cursor(conn)
        cursor.execute('CREATE DATABASE IF NOT EXISTS `%s`' % self.database.replace('`', '``'))
        cursor.execute('USE `%s`' % self.database.replace('`', '``'))
        return conn

    _new_cursor = mysqlwire.Cursor

    def _begin(self, cursor, keys=()):
        return BatchingCursor(cursor.conn, self._key_locks(keys))

    def _key_locks(self, keys):
        """The user locks of keys [(bucket, key)], in one order for every writer."""
        return sorted({key_lock(self.database, bucket, key) for bucket, key in keys})

    def _insert(self, cursor, bucket, key, version, if_absent=False):
        """Keys._insert, bound once a write (the database numbers the rows:
        no seq): its values are bytes and numbers, which every connection
        escapes alike, so the coordinator and each replica send one text
        (binding it anew was a tenth of a PUT's Python, py-spy)."""
        if version.stored_as is None:
            version.stored_as = {}
        statement = version.stored_as.get((bucket, key))
        if statement is None:
            statement = version.stored_as[bucket, key] = cursor.bind(self._sql(self._insert_statement()),
                                                                     self._insert_args(bucket, key, version))
        cursor.execute(statement + (self.if_absent_clause if if_absent else ''))

    def add_change_sequence(self, cursor):
        """objects.seq, an AUTO_INCREMENT the inserts leave out (InnoDB never
        hands a number out twice); added in place to an older partition (which
        rebuilds the table once)."""
        cursor.execute("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
                       " AND TABLE_NAME = 'objects' AND COLUMN_NAME = 'seq'")
        if not cursor.fetchone()[0]:
            cursor.execute('ALTER TABLE objects ADD COLUMN IF NOT EXISTS seq BIGINT NOT NULL AUTO_INCREMENT,'
                           ' ADD INDEX IF NOT EXISTS objects_seq (seq)')

    def add_column(self, cursor, table, column, definition):
        cursor.execute('ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s' % (table, column, definition))

    def _each(self, cursor, statement, rows):
        statement = self._sql(statement)
        for start in range(0, len(rows), 100):
            batch = rows[start:start + 100]
            cursor.execute(';\n'.join(cursor.bind(statement, row) for row in batch))

    # A query in two halves (mysqlwire.send, mysqlwire.read_rows), so that one
    # thread can have several partitions working at once.
    def send_query(self, statement, args):
        return self._send(lambda conn: mysqlwire.bind(conn, self._sql(statement), args))

    def _send(self, statement):
        """Send statement(conn), SQL, as one query; finish_query reads every
        answer and returns the rows of the last result set."""
        try:
            conn = self.pool.take()
        except self.db_errors as e:
            raise self._failure(e) from None
        with self._dropped_on_failure(conn):
            mysqlwire.send(conn, statement(conn))
        return Sent(conn)

    def finish_query(self, sent):
        # Read once: the connection goes back to the pool (or is dropped), and
        # abandon_query then has nothing to close.
        conn, sent.conn = sent.conn, None
        with self._dropped_on_failure(conn):
            rows = mysqlwire.read_rows(conn)
        self.pool.release(conn)
        return rows

    sends_apart = True

    def send_apply(self, bucket, key, version, superseded):
        if version.chunk_size:   # its chunks are copied first, in this call
            return self.apply(bucket, key, version, superseded)
        return self._applies.send((bucket, key, version, superseded), len(version.value))

    def _send_applies(self, requests):
        """Send replica writes [(bucket, key, version, superseded)] as one
        transaction (coalescing.py): _replace for each, in one compound
        statement (MariaDB's BEGIN NOT ATOMIC), answered only once it has
        committed (a multi-statement answers statement by statement, so its
        socket would turn readable at once).  The answer: the ids each
        locking read found.  The connection it went on."""
        def statement(conn):
            batch = BatchingCursor(conn, self._key_locks([(b, k) for b, k, _, _ in requests]))
            for i, (bucket, key, version, superseded) in enumerate(requests):
                batch.hold(self._sql('SELECT GROUP_CONCAT(version_id) INTO held%d FROM objects'
                                     ' WHERE bucket = ? AND key_name = ?' % i + self.lock_clause),
                           (bucket.encode(), key.encode()))
                self._store(batch, bucket, key, superseded, version, if_absent=True)
            held = ', '.join('held%d' % i for i in range(len(requests)))
            return 'BEGIN NOT ATOMIC DECLARE %s LONGBLOB; %s; SELECT %s; END' % (
                held, ';\n'.join(batch.statements()), held)
        return self._send(statement).conn

    def _read_applies(self, conn, count):
        with self._dropped_on_failure(conn):
            [row] = mysqlwire.read_rows(conn)
        self.pool.release(conn)
        return [as_text(held).split(',') if held else [] for held in row[:count]]

    def send_read_many(self, bucket, keys, parsed=None):
        sent, _ = super().send_read_many(bucket, keys)
        sent.request = parsed
        return sent

    def _read_many_answer(self, sent):
        parsed = sent.request
        return self.finish_query(sent), parsed

    def send_apply_many(self, bucket, items):
        """A batch's versions for this replica [(key, version, superseded)],
        as one transaction in one multi-statement: the keys' locks, one
        locking read of their ids (its rows the answer), the superseded
        dropped and the versions added (_store_many), the commit."""
        keys = [key for key, _, _ in items]

        def statement(conn):
            batch = BatchingCursor(conn, self._key_locks([(bucket, key) for key in keys]))
            batch.hold('SELECT key_name, version_id FROM objects WHERE bucket = %%s AND key_name IN (%s)%s'
                       % (', '.join(['%s'] * len(keys)), self.lock_clause), [bucket.encode()] + [k.encode() for k in keys])
            self._store_many(batch, bucket, [(key, version_id) for key, _, superseded in items for version_id in superseded],
                             [(key, version) for key, version, _ in items], if_absent=True)
            return ';\n'.join(batch.statements())
        return Sent(self._send(statement).conn, (bucket, items, statement))

    def finish_apply_many(self, sent):
        bucket, items, statement = sent.request
        try:
            rows = self.finish_query(sent)
        except PartitionError as e:
            if e.reason != LOCK_CONFLICT:
                raise
            # InnoDB chose it as a deadlock's victim (its locks were rolled
            # back with it): sent again, with backoff, as a transaction is.
            rows = self._retrying(lambda: self.finish_query(self._send(statement)))
        held = {}
        for key, version_id in rows:
            held.setdefault(as_text(key), []).append(as_text(version_id))
        return self._kept_many(bucket, items, [held.get(key, []) for key, _, _ in items])

    def _store_many(self, cursor, bucket, drops, versions, if_absent=False):
        """_store for many keys in a few statements whatever their number:
        one DELETE of the superseded, one multi-row INSERT, then, in place of
        _store's unfenced_clause, one DELETE of the rows just added that a
        forced bucket delete fenced off (dated at or before its fence: the
        same check, at the same point of the transaction), and the versions
        logged for the change feed as _log_change logs one."""
        b = bucket.encode()
        if drops:
            self._execute(cursor, 'DELETE FROM objects WHERE bucket = ? AND (%s)' % ' OR '.join(
                ['(key_name = ? AND version_id = ?)'] * len(drops)),
                [b] + [part for key, version_id in drops for part in (key.encode(), version_id.encode())])
        if not versions:
            return
        row = '(%s)' % ', '.join(['?'] * (COLUMNS.count(',') + 4))
        self._execute(cursor, 'INSERT INTO objects (bucket, key_name, ' + COLUMNS + ', point) VALUES '
                      + ', '.join([row] * len(versions)) + (self.if_absent_clause if if_absent else ''),
                      [part for key, version in versions for part in
                       (b, key.encode()) + self._version_columns(version) + (key_point(bucket, key),)])
        # A join from the fence: with no fence (nearly always) no row of
        # objects is read, and none locked (a locking scan of others' rows
        # would have writers of neighbouring keys deadlock).
        self._execute(cursor, 'DELETE objects FROM bucket_fences JOIN objects ON objects.bucket = bucket_fences.bucket'
                      ' WHERE bucket_fences.bucket = ? AND objects.key_name IN (%s) AND objects.version_id IN (%s)'
                      ' AND objects.modified <= bucket_fences.dropped'
                      % (', '.join(['?'] * len(versions)), ', '.join(['?'] * len(versions))),
                      [b] + [key.encode() for key, _ in versions] + [v.version_id.encode() for _, v in versions])
        # The change feed (feed.py, _log_change): a number each, in one go.
        self._execute(cursor, 'UPDATE change_log SET top = top + ? WHERE id = 1', (len(versions),))
        self._execute(cursor, 'INSERT INTO changes (seq, bucket, key_name, version_id, clock, deleted, content_type,'
                      ' size, modified, logged) SELECT (SELECT top FROM change_log WHERE id = 1) - ? + ROW_NUMBER()'
                      ' OVER (ORDER BY key_name, version_id), bucket, key_name, version_id, clock, deleted,'
                      ' content_type, size, modified, ' + self._log_clock + ' FROM objects WHERE bucket = ? AND (%s)'
                      % ' OR '.join(['(key_name = ? AND version_id = ?)'] * len(versions)),
                      [len(versions), b] + [part for key, version in versions
                                            for part in (key.encode(), version.version_id.encode())])

    def finish_apply(self, sent):
        if not isinstance(sent, Ticket):
            return sent
        bucket, key, version, superseded = sent.request
        try:
            held_ids = self._applies.finish(sent)
        except PartitionError as e:
            if e.reason != LOCK_CONFLICT:
                raise
            return self.apply(bucket, key, version, superseded)   # retried, with backoff
        return self._keep_applied(bucket, key, version, superseded, held_ids)

    def answer_socket(self, sent):
        if isinstance(sent, Ticket):
            batch = self._applies.socket_batch(sent)
            conn = batch.conn if batch is not None else None
        else:
            conn = sent.conn if isinstance(sent, Sent) else None
        return mysqlwire.socket_of(conn) if conn else None

    def answer_shared(self, sent):
        return isinstance(sent, Ticket) and self._applies.shared(sent)

    @contextlib.contextmanager
    def _dropped_on_failure(self, conn):
        """A connection that failed mid-query is not reused; a database error
        becomes a PartitionError."""
        try:
            yield
        except self.db_errors as e:
            self.pool.discard(conn)
            raise self._failure(e) from None
        except BaseException:
            self.pool.discard(conn)
            raise

    def abandon_query(self, sent):
        """A sent query that will not be read: its connection cannot be reused."""
        if isinstance(sent, Ticket):
            self._applies.abandon(sent)
        elif isinstance(sent, Sent) and sent.conn:
            self.pool.discard(sent.conn)
            sent.conn = None

    @staticmethod
    def _stale(conn):
        """An idle connection has nothing to read unless the server closed it
        (a restart, a kill): then it is dropped before a request fails on it."""
        sock = mysqlwire.socket_of(conn)
        return sock is None or bool(select.select([sock], [], [], 0)[0])

    # Reading an answer costs per column (a description, a value), more than
    # per byte: the columns other than the value travel as one, separated by 0x1f (which no
    # column can hold: hex, numbers, JSON with control characters escaped, and
    # media types).
    held_columns = 'CONCAT_WS(0x1f, %s), value' % COLUMNS.replace(', value', '')
    held_columns_without_value = held_columns.replace(', value', ", x''")
    # A listing reads one column a row, for the same reason.  The key goes last, as
    # it alone may hold a 0x1f byte (a clock is JSON, which escapes it; a media
    # type holds no control character).
    scan_columns = 'CONCAT_WS(0x1f, version_id, deleted, clock, modified, size, content_type, expires, key_name)'

    @staticmethod
    def _scanned(row):
        version_id, deleted, clock, modified, size, content_type, expires, key = row[0].split(b'\x1f', 7)
        return key, version_id, int(deleted), clock, modified, size, content_type, expires

    def _held_version(self, row):
        fields = row[0].split(b'\x1f')
        fields[2] = int(fields[2])   # deleted, a number like the others
        return row_to_version(fields[:6] + [row[1]] + fields[6:], self)

    def _describe(self, error):
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        if code in RETRYABLE_MYSQL:
            return LOCK_CONFLICT
        if code in MYSQL_FULL:
            return FULL
        if code in MYSQL_BAD_DATA:
            return BAD_DATA
        if code in MYSQL_DENIED:
            # The statement denied, not the user and host the message names.
            denied = re.match(r'\s*(\w+) command denied', str(error.args[1]) if len(error.args) > 1 else '')
            return '%s (MySQL error %s%s)' % (REFUSED, code, ': %s denied' % denied.group(1) if denied else '')
        if not code:
            return 'connection lost'
        if isinstance(error, pymysql.OperationalError):
            return 'unreachable or failing (MySQL error %s)' % code
        return 'MySQL error %s' % code

    # -- reconciliation (sync.py) -----------------------------------------------
    digest_hash_sql = ('CAST(CONV(LEFT(MD5(CONCAT(bucket, 0x00, key_name, 0x00, version_id)), 15), 16, 10)'
                       ' AS UNSIGNED)')
    digest_xor_sql = 'BIT_XOR'
    divide_sql = ' DIV '

    def try_lock(self, name):
        """GET_LOCK on a connection of its own, named after the database (the
        lock is server-wide); the server releases it if the connection dies."""
        lock = ('%s.%s' % (self.database, name))[-64:]
        conn = None
        try:
            conn = self._connect()
            cursor = mysqlwire.Cursor(conn)
            cursor.execute('SELECT GET_LOCK(%s, 0)', (lock,))
            taken = cursor.fetchone()[0] == 1
        except self.db_errors as e:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            raise PartitionError(self.name, self._describe(e)) from None
        if not taken:
            conn.close()
            return None
        return conn

    def unlock(self, handle):
        with contextlib.suppress(Exception):
            handle.close()   # the server releases the lock with the connection
