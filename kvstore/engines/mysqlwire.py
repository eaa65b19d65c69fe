"""Reading a query's answers off a PyMySQL connection, lean.

PyMySQL builds an object for every packet and parses every column's
description in full: for the store's point read that was a third of the
client's CPU per query (bench/README.md).  This reads the text protocol's
answers directly: of a column's description it takes the type and the
character set (at fixed places from its end), and converts values as
PyMySQL does (its decoders; binary strings stay bytes, as the store's hot
queries return them).  PyMySQL still connects, authenticates and sends
(Connection._execute_command); errors are PyMySQL's own exceptions.
"""
from pymysql import converters, err
from pymysql.connections import TEXT_TYPES
from pymysql.constants import FIELD_TYPE

BINARY = 63                 # the character set of binary strings
MAX_PACKET = 0xffffff
MORE_RESULTS_EXIST = 0x08   # SERVER_MORE_RESULTS_EXISTS in a status word's low byte
LOST = 2013                 # CR_SERVER_LOST, as PyMySQL reports it


def read_rows(conn):
    """Read every answer to the query last sent on conn (a multi-statement or
    compound statement gives several) and return the rows (tuples) of the
    last one that is a result set, [] if none is."""
    if getattr(conn, '_current_timeout', None) != conn._read_timeout:
        conn._sock.settimeout(conn._read_timeout)
        conn._current_timeout = conn._read_timeout
    conn._result = None   # nothing of PyMySQL's own is left to read before the next query
    packets = Packets(conn)
    rows, more = [], True
    while more:
        answer, more = _result(packets)
        if answer is not None:
            rows = answer
    if packets.pos != len(packets.data):   # the server says nothing unasked
        conn._force_close()
        raise err.InternalError('Unexpected bytes after the last answer')
    return rows


def _result(packets):
    """One answer: (its rows, whether more answers follow)."""
    first = packets.next()
    if first[0] == 0x00:     # OK: affected rows, insert id, then the status word
        _, i = _length(first, 1)
        _, i = _length(first, i)
        return None, first[i] & MORE_RESULTS_EXIST
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
