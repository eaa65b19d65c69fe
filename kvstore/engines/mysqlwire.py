"""MariaDB's queries over a PyMySQL connection: sent, and every answer read, here.

PyMySQL connects, authenticates and sets the session up (autocommit, the
character set).  After that every query the engines make goes through this
module, on the hot paths (a key's read, a replica's write, a listing) and on
the cold ones (hints, chunks, buckets, the reconciler's queries) alike.

PyMySQL's public API cannot carry the store's queries: it sends a query and
reads its answer in one call (Connection.query, Cursor.execute), while a
coordinator sends its query to every replica first and reads the answers as
they arrive (send_query, finish_query).  So a query is sent with PyMySQL's
Connection._execute_command and its answers read here, off the connection's
socket.  Reading here is also lean: PyMySQL builds an object for every packet
and parses every column's description in full (for the store's point read a
third of the client's CPU per query, bench/README.md); this takes of a
column's description the type and the character set (at fixed places from
its end) and converts values as PyMySQL does (its decoders; binary strings
stay bytes).  Errors are PyMySQL's own exceptions.
"""
import re

from pymysql import converters, err
from pymysql.connections import TEXT_TYPES
from pymysql.constants import COMMAND, FIELD_TYPE

# What is relied on of a PyMySQL Connection beyond its public API.
# requirements.txt pins the releases tried with them, and
# test/test_mysqlwire.py (TestPyMySQLInternals) fails first when a release
# changes any of them:
#   _execute_command(COMMAND.COM_QUERY, sql)  sends a query and reads nothing;
#                       raises InterfaceError on a closed connection
#   _sock               its socket (None once closed): readiness, timeouts
#   _rfile              the socket's buffered reader (read1)
#   _next_seq_id        the sequence number the next packet read must carry
#   _read_timeout       the read timeout it was opened with
#   _current_timeout    the timeout set on _sock now (PyMySQL switches it
#                       between its read and write timeouts)
#   _force_close()      closes it without a word to the server
# and of its non-underscored internals: escape() (a value as SQL), decoders,
# encoding, use_unicode; pymysql.connections.TEXT_TYPES,
# pymysql.err.raise_mysql_exception, pymysql.converters.through.
PYMYSQL_INTERNALS = ('_execute_command', '_sock', '_rfile', '_next_seq_id', '_read_timeout',
                     '_current_timeout', '_force_close')

BINARY = 63                 # the character set of binary strings
MAX_PACKET = 0xffffff
MORE_RESULTS_EXIST = 0x08   # SERVER_MORE_RESULTS_EXISTS in a status word's low byte
LOST = 2013                 # CR_SERVER_LOST, as PyMySQL reports it
MAX_STATEMENT = 1024000     # executemany's longest multi-row INSERT (PyMySQL's max_stmt_length)
INSERT_VALUES = re.compile(r'(.*\bVALUES\s*)(\([^()]*\))(.*)\Z', re.IGNORECASE | re.DOTALL)


def send(conn, sql):
    """Send sql, one query (several statements: a multi-statement), and
    return without waiting for its answers: read them with read_answers()."""
    conn._execute_command(COMMAND.COM_QUERY, sql)


def bind(conn, statement, args):
    """statement with its %s placeholders replaced by args, as SQL values."""
    return statement % tuple(map(conn.escape, args))


def socket_of(conn):
    """The socket conn's answers arrive on; None once it is closed."""
    return conn._sock


class Cursor:
    """The DB-API calls the engines make (execute, executemany, fetchall,
    fetchone, rowcount) on a PyMySQL connection, through send and read_answers."""

    def __init__(self, conn):
        self.conn = conn
        self.rows, self.result_sets, self.rowcount = [], [], -1

    def bind(self, statement, args):
        return bind(self.conn, statement, args)

    def execute(self, statement, args=None):
        """Run statement (args: its placeholders' values; None: it has none)."""
        send(self.conn, statement if args is None else self.bind(statement, args))
        self.result_sets, self.rowcount = read_result_sets(self.conn)
        self.rows = self.result_sets[-1] if self.result_sets else []

    def executemany(self, statement, rows):
        """statement once for each of rows; an INSERT's VALUES (...) as multi-row
        INSERTs of up to MAX_STATEMENT characters, as PyMySQL's executemany."""
        insert = INSERT_VALUES.match(statement)
        if not insert:
            for row in rows:
                self.execute(statement, row)
            return
        head, values, tail = insert.groups()
        batch, size = [], len(head) + len(tail)
        for row in rows:
            value = self.bind(values, row)
            if batch and size + len(value) + 1 > MAX_STATEMENT:
                self.execute(head + ','.join(batch) + tail)
                batch, size = [], len(head) + len(tail)
            batch.append(value)
            size += len(value) + 1
        if batch:
            self.execute(head + ','.join(batch) + tail)

    def fetchall(self):
        return self.rows

    def fetchone(self):
        """The first row (the engines read one row of an answer at most)."""
        return self.rows[0] if self.rows else None

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def read_rows(conn):
    """The rows of the answers to the query last sent on conn (read_answers)."""
    return read_answers(conn)[0]


def read_answers(conn):
    """Read every answer to the query last sent on conn (a multi-statement or
    compound statement gives several): (the rows, tuples, of the last one that
    is a result set, [] if none is; the rows the last write changed)."""
    sets, changed = read_result_sets(conn)
    return (sets[-1] if sets else []), changed


def read_result_sets(conn):
    """As read_answers, with the rows of every result set: ([rows of each
    result set, in order], the rows the last write changed)."""
    if conn._current_timeout != conn._read_timeout:
        conn._sock.settimeout(conn._read_timeout)
        conn._current_timeout = conn._read_timeout
    packets = Packets(conn)
    sets, changed, more = [], 0, True
    while more:
        answer, more = _result(packets)
        if isinstance(answer, list):
            sets.append(answer)
        else:
            changed = answer
    if packets.pos != len(packets.data):   # the server says nothing unasked
        conn._force_close()
        raise err.InternalError('Unexpected bytes after the last answer')
    return sets, changed


def _result(packets):
    """One answer: (its rows, or the number of rows it changed; whether more
    answers follow)."""
    first = packets.next()
    if first[0] == 0x00:     # OK: affected rows, insert id, then the status word
        changed, i = _length(first, 1)
        _, i = _length(first, i)
        return changed, first[i] & MORE_RESULTS_EXIST
    if first[0] == 0xff:
        err.raise_mysql_exception(first)
    columns, _ = _length(first, 0)
    decoders = [_decoder(packets.conn, packets.next()) for _ in range(columns)]
    packets.next()   # the EOF after the descriptions
    if not any(decoders):
        decoders = None
    rows = []
    while True:
        data = packets.next()
        if data[0] == 0xfe and len(data) < 9:   # EOF: warnings, then the status word
            return rows, data[3] & MORE_RESULTS_EXIST
        if data[0] == 0xff:
            err.raise_mysql_exception(data)
        row, i = [], 0
        for _ in range(columns):
            size = data[i]
            if size < 251:
                i += 1
            elif size == 251:   # NULL
                row.append(None)
                i += 1
                continue
            else:
                size, i = _length(data, i)
            row.append(data[i:i + size])
            i += size
        if decoders:
            row = [value if value is None or decode is None else decode(value)
                   for value, decode in zip(row, decoders)]
        rows.append(tuple(row))


def _decoder(conn, description):
    """How PyMySQL turns a column's raw bytes into its value (None: they stay
    bytes).  A description ends with 13 fixed bytes: 0x0c, the character set
    (2), the length (4), the type (1), flags (2), decimals (1), filler (2)."""
    kind, charset = description[-6], description[-12] | description[-11] << 8
    if not conn.use_unicode:
        encoding = None
    elif kind == FIELD_TYPE.JSON:
        encoding = conn.encoding
    elif kind in TEXT_TYPES:
        encoding = None if charset == BINARY else conn.encoding
    else:
        encoding = 'ascii'
    convert = conn.decoders.get(kind)
    if convert is converters.through:
        convert = None
    if encoding is None:
        return convert
    if convert is None:
        return lambda value: value.decode(encoding)
    return lambda value: convert(value.decode(encoding))


class Packets:
    """The packets of a connection's answers, read in as few reads as the
    socket allows (a listing's thousands of rows come in a few)."""
    __slots__ = ('conn', 'read1', 'data', 'pos')

    def __init__(self, conn):
        self.conn, self.read1 = conn, conn._rfile.read1
        self.data, self.pos = b'', 0

    def next(self):
        """The next packet's payload (joined over 16 MiB continuations),
        checking its sequence number as PyMySQL does."""
        data, pos, conn = self.data, self.pos, self.conn
        if len(data) - pos >= 4:   # the common case: the whole packet is here
            size = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            end = pos + 4 + size
            if end <= len(data) and size < MAX_PACKET and data[pos + 3] == conn._next_seq_id:
                self.pos = end
                conn._next_seq_id = (conn._next_seq_id + 1) % 256
                return data[pos + 4:end]
        parts = []
        while True:
            header = self._take(4)
            size = header[0] | header[1] << 8 | header[2] << 16
            if header[3] != conn._next_seq_id:
                conn._force_close()
                if header[3] == 0:   # MariaDB's error packet when it shuts down
                    raise err.OperationalError(LOST, 'Lost connection to MySQL server during query')
                raise err.InternalError('Packet sequence number wrong - got %d expected %d'
                                        % (header[3], conn._next_seq_id))
            conn._next_seq_id = (conn._next_seq_id + 1) % 256
            parts.append(self._take(size))
            if size < MAX_PACKET:
                return parts[0] if len(parts) == 1 else b''.join(parts)

    def _take(self, size):
        """The next size bytes of the stream."""
        available = len(self.data) - self.pos
        if available >= size:
            self.pos += size
            return self.data[self.pos - size:self.pos]
        parts, missing = [self.data[self.pos:]], size - available
        while missing > 0:
            try:
                chunk = self.read1(max(missing, 65536))
            except OSError as e:   # a timeout or a reset
                self.conn._force_close()
                raise err.OperationalError(LOST, 'Lost connection to MySQL server during query (%s)' % e) from None
            if not chunk:
                self.conn._force_close()
                raise err.OperationalError(LOST, 'Lost connection to MySQL server during query')
            parts.append(chunk)
            missing -= len(chunk)
        self.data, self.pos = b''.join(parts), size
        return self.data[:size]


def _length(data, i):
    """A length-encoded integer at data[i]: (its value, the index after it)."""
    first = data[i]
    if first < 251:
        return first, i + 1
    width = {252: 2, 253: 3, 254: 8}[first]
    return int.from_bytes(data[i + 1:i + 1 + width], 'little'), i + 1 + width
