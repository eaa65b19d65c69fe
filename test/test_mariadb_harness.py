"""The test harness itself: private MariaDB servers that really run."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import unittest

import pymysql

from test.mariadb import MariaDBCluster, mariadbd_available, shared_cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive for our purposes.
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().split(')')[-1].split()[0] != 'Z'
    except OSError:
        return False


def wait_gone(pid, timeout=5.0):
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not pid_alive(pid)


class TestCluster(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.cluster = MariaDBCluster(2)
        try:
            cls.cluster.start()
        except Exception:
            cls.cluster.stop(graceful=False)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def setUp(self):
        # Give back whatever an earlier test broke.
        self.cluster.start()

    def query(self, server, sql, *args, **connect_args):
        conn = server.connect(autocommit=True, **connect_args)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args or None)
                return cur.fetchall()
        finally:
            conn.close()

    def test_available(self):
        self.assertTrue(mariadbd_available())

    def test_servers(self):
        self.assertEqual(len(self.cluster.servers), 2)
        self.assertEqual([s.name for s in self.cluster.servers], ['p1', 'p2'])
        self.assertIs(self.cluster[1], self.cluster.servers[1])
        ports = set()
        for server in self.cluster:
            self.assertEqual(server.host, '127.0.0.1')
            self.assertEqual(server.user, 'root')
            self.assertEqual(server.password, '')
            self.assertTrue(server.is_running())
            ports.add(server.port)
            self.assertEqual(self.query(server, 'SELECT @@port')[0][0], server.port)
        self.assertEqual(len(ports), 2)

    def test_plain_pymysql_connect_as_root(self):
        # What the application will do: root, empty password, over TCP.
        for server in self.cluster:
            conn = pymysql.connect(host=server.host, port=server.port,
                                   user=server.user, password=server.password,
                                   ssl_disabled=True)
            try:
                with conn.cursor() as cur:
                    cur.execute('SELECT CURRENT_USER(), @@character_set_server')
                    user, charset = cur.fetchone()
            finally:
                conn.close()
            self.assertEqual(user, 'root@127.0.0.1')
            self.assertEqual(charset, 'utf8mb4')

    def test_create_insert_select_on_each(self):
        for i, server in enumerate(self.cluster):
            self.query(server, 'DROP DATABASE IF EXISTS harness_crud')
            self.query(server, 'CREATE DATABASE harness_crud')
            self.query(server, 'CREATE TABLE harness_crud.kv (k VARCHAR(64) PRIMARY KEY, '
                               'v VARBINARY(1024)) ENGINE=InnoDB')
            self.query(server, 'INSERT INTO harness_crud.kv VALUES (%s, %s)',
                       'key', b'value-%d' % i)
        for i, server in enumerate(self.cluster):
            rows = self.query(server, 'SELECT k, v FROM harness_crud.kv')
            self.assertEqual(rows, (('key', b'value-%d' % i),))

    def test_kill_then_restart_keeps_committed_data(self):
        server = self.cluster[0]
        self.query(server, 'CREATE DATABASE IF NOT EXISTS harness_crash')
        self.query(server, 'CREATE TABLE IF NOT EXISTS harness_crash.t '
                           '(id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB')
        self.query(server, 'REPLACE INTO harness_crash.t VALUES (1, %s)', 'committed')
        port, pid = server.port, server.pid

        server.kill()
        self.assertFalse(server.is_running())
        self.assertIsNone(server.pid)
        self.assertTrue(wait_gone(pid))
        with self.assertRaises(pymysql.err.OperationalError):
            server.connect(connect_timeout=1, read_timeout=1)
        # The other server does not care.
        self.assertEqual(self.query(self.cluster[1], 'SELECT 1'), ((1,),))

        server.restart()
        self.assertTrue(server.is_running())
        self.assertEqual(server.port, port)
        self.assertEqual(self.query(server, 'SELECT v FROM harness_crash.t WHERE id = 1'),
                         (('committed',),))

    def test_stop_then_restart(self):
        server = self.cluster[1]
        self.query(server, 'CREATE DATABASE IF NOT EXISTS harness_stop')
        self.query(server, 'CREATE TABLE IF NOT EXISTS harness_stop.t (id INT PRIMARY KEY)')
        self.query(server, 'REPLACE INTO harness_stop.t VALUES (7)')
        server.stop()
        self.assertFalse(server.is_running())
        with self.assertRaises(pymysql.err.OperationalError):
            server.connect(connect_timeout=1, read_timeout=1)
        server.restart()
        self.assertEqual(self.query(server, 'SELECT id FROM harness_stop.t'), ((7,),))

    def test_pause_times_out_then_resume(self):
        server = self.cluster[1]
        server.pause()
        try:
            self.assertTrue(server.is_running())
            self.assertTrue(server.is_paused())
            started = time.monotonic()
            # The kernel completes the TCP handshake of a stopped server, so
            # connect_timeout alone would wait forever for its greeting:
            # read_timeout is what makes the connect give up.
            with self.assertRaises(pymysql.err.OperationalError):
                server.connect(connect_timeout=1, read_timeout=1)
            elapsed = time.monotonic() - started
            self.assertGreaterEqual(elapsed, 0.9)
            self.assertLess(elapsed, 5)
        finally:
            server.resume()
        self.assertFalse(server.is_paused())
        self.assertEqual(self.query(server, 'SELECT 1'), ((1,),))


class TestSharedCluster(unittest.TestCase):

    def test_singleton_heals_servers(self):
        cluster = shared_cluster(1)
        self.assertIs(shared_cluster(1), cluster)
        server = cluster[0]
        port = server.port

        server.kill()
        self.assertFalse(server.is_running())
        self.assertIs(shared_cluster(1), cluster)
        self.assertTrue(server.is_running())
        self.assertEqual(server.port, port)

        server.pause()
        self.assertIs(shared_cluster(1), cluster)
        self.assertFalse(server.is_paused())
        conn = server.connect(connect_timeout=1, read_timeout=2)
        conn.close()


class TestCleanup(unittest.TestCase):

    def test_stop_removes_everything(self):
        cluster = MariaDBCluster(1).start()
        pid = cluster[0].pid
        self.assertTrue(pid_alive(pid))
        cluster.stop()
        self.assertTrue(wait_gone(pid))
        self.assertFalse(os.path.exists(cluster.base_dir))

    def run_child(self, body):
        code = textwrap.dedent('''
            import os, sys, time
            from test.mariadb import shared_cluster
            cluster = shared_cluster(1)
            print(cluster[0].pid, cluster.base_dir, flush=True)
        ''') + textwrap.dedent(body)
        return subprocess.Popen([sys.executable, '-c', code], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def read_pid(self, child):
        line = child.stdout.readline().split()
        self.assertEqual(len(line), 2, child.stderr.read() if not line else line)
        return int(line[0]), line[1]

    def test_no_server_survives_a_failing_process(self):
        child = self.run_child('raise SystemExit("boom")\n')
        pid, base_dir = self.read_pid(child)
        child.communicate(timeout=30)
        self.assertNotEqual(child.returncode, 0)
        self.assertTrue(wait_gone(pid), 'mariadbd %d survived' % pid)
        self.assertFalse(os.path.exists(base_dir))

    def test_no_server_survives_sigterm(self):
        child = self.run_child('time.sleep(60)\n')
        pid, base_dir = self.read_pid(child)
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=30)
        self.assertEqual(child.returncode, -signal.SIGTERM)
        self.assertTrue(wait_gone(pid), 'mariadbd %d survived' % pid)
        self.assertFalse(os.path.exists(base_dir))

    def test_orphans_of_a_sigkilled_process_are_reaped(self):
        child = self.run_child('time.sleep(60)\n')
        pid, base_dir = self.read_pid(child)
        child.kill()
        child.communicate(timeout=30)
        self.assertTrue(pid_alive(pid))  # nobody could clean up
        # The next cluster made anywhere reaps it.
        MariaDBCluster(1).stop()
        self.assertTrue(wait_gone(pid), 'mariadbd %d survived' % pid)
        self.assertFalse(os.path.exists(base_dir))


if __name__ == '__main__':
    unittest.main()
