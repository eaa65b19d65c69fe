"""Reading MariaDB's answers off a PyMySQL connection (mysqlwire), against a
real server: the rows are the values PyMySQL itself reads, of every type, in
every length encoding and across 16 MiB packets; every answer of a
multi-statement is read; errors, timeouts and killed connections are
PyMySQL's exceptions.

What mysqlwire relies on of PyMySQL beyond its public API
(mysqlwire.PYMYSQL_INTERNALS), each checked as it is used (TestPyMySQLInternals):
these fail first when a PyMySQL release changes one of them.
"""
import io
import select
import socket
import time
import unittest

import pymysql
from pymysql.constants import COMMAND, FIELD_TYPE

from kvstore.engines import mysqlwire
from test.mariadb import shared_cluster

MIB = 1024 * 1024


def rows_of(conn, sql):
    conn._execute_command(pymysql.constants.COMMAND.COM_QUERY, sql)
    return mysqlwire.read_rows(conn)


def pymysql_rows(conn, sql):
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()]


class OnAServer(unittest.TestCase):
    """Connections to the first server of the shared cluster, closed after each test."""

    @classmethod
    def setUpClass(cls):
        cls.server = shared_cluster()[0]

    def connect(self, **kwargs):
        conn = self.server.connect(autocommit=True, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
                                   **kwargs)
        self.addCleanup(conn.close)
        return conn


class TestPyMySQLInternals(OnAServer):
    """mysqlwire.PYMYSQL_INTERNALS, each as mysqlwire uses it."""

    def test_a_connection_has_every_attribute_relied_on(self):
        conn = self.connect()
        self.assertEqual([name for name in mysqlwire.PYMYSQL_INTERNALS if not hasattr(conn, name)], [])
        self.assertIsInstance(conn._sock, socket.socket)
        self.assertIsInstance(conn._rfile, io.BufferedReader)   # read1
        # What a column's values are made of (mysqlwire._decoder).
        self.assertEqual((conn.use_unicode, conn.encoding), (True, 'utf8'))
        self.assertEqual(conn.decoders[FIELD_TYPE.LONGLONG]('12'), 12)

    def test_execute_command_sends_a_query_and_reads_nothing(self):
        conn = self.connect()
        self.assertIsNone(conn._execute_command(COMMAND.COM_QUERY, "SELECT x'61'"))
        self.assertEqual(conn._next_seq_id, 1)   # the sequence number of the answer's first packet
        self.assertTrue(select.select([conn._sock], [], [], 5)[0])   # the answer waits, unread
        self.assertEqual(mysqlwire.read_rows(conn), [(b'a',)])

    def test_current_timeout_is_the_sockets_timeout(self):
        conn = self.connect(read_timeout=7, write_timeout=3)
        self.assertEqual(conn._read_timeout, 7)
        conn._execute_command(COMMAND.COM_QUERY, 'DO 1')   # PyMySQL writes with its write timeout
        self.assertEqual((conn._current_timeout, conn._sock.gettimeout()), (3, 3))
        mysqlwire.read_rows(conn)                         # mysqlwire reads with the read timeout
        self.assertEqual((conn._current_timeout, conn._sock.gettimeout()), (7, 7))
        conn._execute_command(COMMAND.COM_QUERY, 'DO 1')
        self.assertEqual(conn._sock.gettimeout(), 3)
        mysqlwire.read_rows(conn)
        self.assertEqual(conn._sock.gettimeout(), 7)

    def test_a_closed_connection_sends_nothing(self):
        conn = self.connect()
        conn._force_close()
        self.assertEqual((conn._sock, conn._rfile), (None, None))
        with self.assertRaises(pymysql.err.InterfaceError):
            conn._execute_command(COMMAND.COM_QUERY, 'DO 1')

    def test_escape_makes_sql_values_read_back_unchanged(self):
        conn = self.connect()
        values = (b"\x00\x1f\xff'\\", "it's \\ \u00fc %s", 5, -2 ** 63, None)
        self.assertEqual(rows_of(conn, mysqlwire.bind(conn, 'SELECT %s, %s, %s, %s, %s', values)), [values])


class TestCursor(OnAServer):
    """mysqlwire.Cursor: the engines' DB-API calls, every answer read by mysqlwire."""

    def test_executemany_inserts_every_row_in_statements_of_bounded_length(self):
        cursor = mysqlwire.Cursor(self.connect())
        cursor.execute('CREATE DATABASE IF NOT EXISTS mysqlwire_test')
        cursor.execute('CREATE TEMPORARY TABLE mysqlwire_test.t (n INT PRIMARY KEY, v LONGBLOB)')
        cursor.execute('USE mysqlwire_test')
        rows = [(n, b'%05d' % n * 1000) for n in range(300)]   # 1.5 MB of values: two statements
        cursor.executemany('INSERT INTO t (n, v) VALUES (%s, %s)', rows)
        self.assertTrue(0 < cursor.rowcount < 300)   # the last statement's
        cursor.execute('SELECT n, v FROM t ORDER BY n')
        self.assertEqual(cursor.fetchall(), rows)
        cursor.executemany('DELETE FROM t WHERE n = %s', [(n,) for n in range(0, 300, 2)])   # one by one
        self.assertEqual(cursor.rowcount, 1)
        cursor.execute('SELECT COUNT(*) FROM t')
        self.assertEqual(cursor.fetchone(), (150,))
        cursor.execute('DELETE FROM t WHERE n < %s', (100,))
        self.assertEqual((cursor.rowcount, cursor.fetchall()), (50, []))


class TestReadingAnswers(OnAServer):
    def test_rows_are_the_bytes_pymysql_reads_at_each_length_encoding(self):
        conn = self.connect()
        # 250 and below take one length byte; 251 means NULL; 252/253 prefix
        # two and three bytes.
        for size in (0, 1, 250, 251, 252, 65535, 65536, MIB):
            sql = "SELECT REPEAT(x'61', %d), NULL, x'1f00ff', REPEAT(x'62', %d)" % (size, size // 2)
            rows = rows_of(conn, sql)
            self.assertEqual(rows, pymysql_rows(conn, sql), size)
            self.assertEqual(rows, [(b'a' * size, None, b'\x1f\x00\xff', b'b' * (size // 2))])

    def test_values_of_every_type_are_what_pymysql_makes_of_them(self):
        conn = self.connect()
        sql = ("SELECT 1, -5, 12345678901234, CAST(7 AS UNSIGNED), 1.5, CAST(2.5 AS DOUBLE), 'text', "
               "_utf8mb4 x'c3bc', NOW(), CURDATE(), CURTIME(), TIMESTAMP'2026-01-02 03:04:05.5', "
               "NULL, x'00ff', CAST(x'61' AS BINARY(3)), JSON_OBJECT('a', 1), b'101', YEAR('2026-05-05'), "
               "CAST(NULL AS SIGNED), CONCAT_WS(0x1f, x'61', 5)")
        rows = rows_of(conn, sql)
        self.assertEqual(rows, pymysql_rows(conn, sql))
        self.assertEqual(rows[0][:7], (1, -5, 12345678901234, 7, pymysql_rows(conn, 'SELECT 1.5')[0][0], 2.5, 'text'))
        self.assertEqual(rows[0][7], '\u00fc')
        self.assertEqual(rows[0][-1], b'a\x1f5')
        # Many rows of mixed types, and a table's own columns.
        sql = ("WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < 300) "
               "SELECT seq, seq * 1.25, CONCAT('k', seq), IF(seq % 3, NULL, x'ff') FROM s")
        self.assertEqual(rows_of(conn, sql), pymysql_rows(conn, sql))

    def test_several_rows_and_no_rows(self):
        conn = self.connect()
        sql = "SELECT x'61' UNION ALL SELECT x'' UNION ALL SELECT NULL"
        self.assertEqual(rows_of(conn, sql), [(b'a',), (b'',), (None,)])
        self.assertEqual(rows_of(conn, "SELECT x'61' FROM DUAL WHERE 1 = 0"), [])
        self.assertEqual(rows_of(conn, 'DO 1'), [])

    def test_a_row_over_16_mib_spans_several_packets(self):
        admin = self.connect()
        admin.query('SELECT @@GLOBAL.max_allowed_packet')
        before = admin._result.rows[0][0]
        admin.query('SET GLOBAL max_allowed_packet = %d' % (64 * MIB))
        self.addCleanup(admin.query, 'SET GLOBAL max_allowed_packet = %d' % before)
        conn = self.connect()   # takes the new limit
        size = 16 * MIB + 100
        rows = rows_of(conn, "SELECT REPEAT(x'63', %d), x'64'" % size)
        self.assertEqual(len(rows), 1)
        self.assertEqual(len(rows[0][0]), size)
        self.assertEqual(rows[0][0][:3] + rows[0][0][-3:], b'cccccc')
        self.assertEqual(rows[0][1], b'd')
        self.assertEqual(rows_of(conn, "SELECT x'65'"), [(b'e',)])

    def test_every_answer_of_a_multi_statement_is_read_and_the_last_result_set_returned(self):
        conn = self.connect()
        rows = rows_of(conn, "SELECT x'61'; SELECT x'62' UNION ALL SELECT x'63'; DO 1")
        self.assertEqual(rows, [(b'b',), (b'c',)])
        self.assertEqual(rows_of(conn, "START TRANSACTION; SELECT x'64'; COMMIT"), [(b'd',)])
        self.assertEqual(rows_of(conn, 'START TRANSACTION; DO 1; COMMIT'), [])
        # Nothing of the last query is left on the connection.
        self.assertEqual(rows_of(conn, "SELECT x'65'"), [(b'e',)])
        self.assertEqual(pymysql_rows(conn, "SELECT x'66'"), [(b'f',)])

    def test_a_compound_statement_answers_its_select(self):
        conn = self.connect()
        rows = rows_of(conn, "BEGIN NOT ATOMIC DECLARE held LONGBLOB; SET held = x'6869'; SELECT held; END")
        self.assertEqual(rows, [(b'hi',)])
        self.assertEqual(rows_of(conn, "SELECT x'65'"), [(b'e',)])

    def test_an_error_is_pymysqls_exception_and_ends_the_answer(self):
        conn = self.connect()
        with self.assertRaises(pymysql.err.ProgrammingError) as raised:
            rows_of(conn, 'SELECT x FROM no_such_database.no_such_table')
        self.assertEqual(raised.exception.args[0], 1146)
        # An error within a multi-statement ends it: the connection is ready.
        with self.assertRaises(pymysql.err.ProgrammingError):
            rows_of(conn, "DO 1; SELECT x FROM no_such_database.no_such_table; SELECT x'61'")
        self.assertEqual(rows_of(conn, "SELECT x'62'"), [(b'b',)])

    def test_a_silent_server_times_out_and_the_connection_is_closed(self):
        conn = self.connect(read_timeout=0.5)
        started = time.monotonic()
        with self.assertRaises(pymysql.err.OperationalError) as raised:
            rows_of(conn, 'SELECT SLEEP(5)')
        self.assertLess(time.monotonic() - started, 4)
        self.assertEqual(raised.exception.args[0], mysqlwire.LOST)
        self.assertIsNone(conn._sock)

    def test_a_killed_connection_is_an_operational_error(self):
        conn = self.connect()
        killer = self.connect()
        conn._execute_command(pymysql.constants.COMMAND.COM_QUERY, 'SELECT SLEEP(5)')
        time.sleep(0.2)
        killer.query('KILL CONNECTION %d' % conn.thread_id())
        with self.assertRaises(pymysql.err.OperationalError):
            mysqlwire.read_rows(conn)


if __name__ == '__main__':
    unittest.main()
