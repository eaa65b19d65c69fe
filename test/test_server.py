"""The real server: gunicorn started the way `make run` starts it, over HTTP.

The store runs as `gunicorn --config gunicorn.conf.py` from the repository,
with two worker processes over four SQLite partitions in a temporary
directory, and is spoken to over a socket with http.client: nothing here
goes through a WSGI test client.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from test import support
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

CONFIGURATION = """
[store]
replicas = 3
r = 2
w = 2
""" + ''.join('\n[partition-p%d]\nengine = sqlite\npath = data/p%d.sqlite3\n' % (i, i) for i in (1, 2, 3, 4))






def pid_alive(pid):
    """A process that exists and is not a zombie."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def children(pid):
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry) as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != 'Z':
                found.append(int(entry))
    return sorted(found)


class Server:
    """A gunicorn master and its workers, in a process group of their own."""

    def __init__(self, workers=2):
        self.directory = tempfile.mkdtemp(prefix='kvstore-server-')
        self.config_path = os.path.join(self.directory, 'configuration.cfg')
        with open(self.config_path, 'w') as f:
            f.write(CONFIGURATION)
        self.port = support.free_port()
        self.log_path = os.path.join(self.directory, 'gunicorn.log')
        self.workers = workers
        self.process = None
        self.pids = set()

    def start(self):
        env = dict(os.environ, STORE_CONFIG=self.config_path, BIND='127.0.0.1:%d' % self.port,
                   WORKERS=str(self.workers),
                   # gunicorn's control socket goes here rather than in $HOME,
                   # so that servers of concurrent test runs do not share one.
                   XDG_RUNTIME_DIR=self.directory)
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                support.gunicorn_command() + ['--config', 'gunicorn.conf.py'], cwd=REPO, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pids.add(self.process.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError('gunicorn exited with %s before accepting connections:\n%s'
                                     % (self.process.returncode, self.log()))
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=1).close()
            except OSError:
                pass
            else:
                # Accepting: wait for every worker to have booted too.
                if len(self.worker_pids()) == self.workers:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError('gunicorn did not accept connections within %d s:\n%s'
                                     % (START_TIMEOUT, self.log()))
            time.sleep(0.05)

    def worker_pids(self):
        pids = children(self.process.pid)
        self.pids.update(pids)
        return pids

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s.  Returns (graceful, pids still alive)."""
        graceful = True
        if self.process is None:
            return graceful, []
        if self.process.poll() is None:
            self.worker_pids()
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                graceful = False
        # Whatever is left of the group (a worker the master did not reap) goes too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        deadline = time.monotonic() + 5
        while any(pid_alive(pid) for pid in self.pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        return graceful, [pid for pid in self.pids if pid_alive(pid)]

    def cleanup(self):
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self):
        try:
            with open(self.log_path, encoding='utf-8', errors='replace') as f:
                return f.read()[-4000:]
        except OSError:
            return ''

    def connect(self):
        return http.client.HTTPConnection('127.0.0.1', self.port, timeout=10)

    def serving_worker(self, conn):
        """The pid of the worker holding this client connection's other end."""
        client_port = conn.sock.getsockname()[1]
        wanted = '0100007F:%04X' % self.port, '0100007F:%04X' % client_port
        inode = None
        for _ in range(100):
            with open('/proc/net/tcp') as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if (fields[1], fields[2]) == wanted and fields[9] != '0':
                        inode = fields[9]
            if inode:
                break
            time.sleep(0.01)
        for pid in self.worker_pids():
            try:
                fds = os.listdir('/proc/%d/fd' % pid)
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink('/proc/%d/fd/%s' % (pid, fd)) == 'socket:[%s]' % inode:
                        return pid
                except OSError:
                    continue
        return None


def key_url(bucket, key):
    return '/buckets/%s/keys/%s' % (bucket, urllib.parse.quote(key, safe='/'))


def request(conn, method, url, body=None, headers=None):
    conn.request(method, url, body=body, headers=headers or {})
    response = conn.getresponse()
    return response, response.read()


class TestServer(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = Server(workers=2)
        try:
            cls.server.start()
        except BaseException:
            cls.server.stop()
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        graceful, left = cls.server.stop()
        cls.server.cleanup()
        if left:
            raise AssertionError('processes left behind after stopping gunicorn: %s' % left)

    def setUp(self):
        self.conn = self.server.connect()

    def tearDown(self):
        self.conn.close()

    def put(self, url, value, content_type, conn=None, headers=None):
        return request(conn or self.conn, 'PUT', url, value, dict(headers or {}, **{'Content-Type': content_type}))

    def test_a_put_creates_with_201_and_replaces_with_200(self):
        url = key_url('server', 'created-then-replaced')
        response, body = self.put(url, b'first', 'text/plain')
        self.assertEqual(response.status, 201, body)
        self.assertEqual(response.getheader('Location'), url)
        receipt = json.loads(body)
        self.assertEqual(receipt['key'], 'created-then-replaced')
        # w = 2: at least two of the key's three replicas hold the value.
        self.assertGreaterEqual(len(receipt['acknowledged']), 2)
        self.assertTrue(set(receipt['acknowledged']) <= set(receipt['preference_list']), receipt)
        self.assertEqual(len(receipt['preference_list']), 3)
        response, body = self.put(url, b'second', 'text/plain')
        self.assertEqual(response.status, 200, body)
        response, body = request(self.conn, 'GET', url)
        self.assertEqual(body, b'second')

    def test_a_value_comes_back_byte_identical_with_its_content_type(self):
        url = key_url('server', 'blob')
        value = bytes(range(256)) * 64 + b'\r\n\x00end'
        response, body = self.put(url, value, 'image/png')
        self.assertIn(response.status, (200, 201), body)
        etag = response.getheader('ETag')
        response, body = request(self.conn, 'GET', url)
        self.assertEqual(response.status, 200)
        self.assertEqual(body, value)
        self.assertEqual(response.getheader('Content-Type'), 'image/png')
        self.assertEqual(response.getheader('ETag'), etag)
        # Sent chunked (gunicorn does when the application sets no length) or
        # with the right length.
        if response.getheader('Content-Length') is not None:
            self.assertEqual(response.getheader('Content-Length'), str(len(value)))
        else:
            self.assertEqual(response.getheader('Transfer-Encoding'), 'chunked')

    def test_a_key_with_slashes_and_non_ascii_characters_in_a_percent_encoded_url(self):
        key = 'photos/2024/été naïve ü/日本語 100%.txt'
        url = key_url('server', key)
        self.assertIn('/%C3%A9t%C3%A9%20na%C3%AFve', url)
        value = 'Grüße, 世界\n'.encode('utf-8')
        response, body = self.put(url, value, 'text/plain; charset=utf-8')
        self.assertEqual(response.status, 201, body)
        self.assertEqual(json.loads(body)['key'], key)
        self.assertEqual(response.getheader('Location'), url)
        response, body = request(self.conn, 'GET', url)
        self.assertEqual(response.status, 200, body)
        self.assertEqual(body, value)
        self.assertEqual(response.getheader('Content-Type'), 'text/plain; charset=utf-8')
        # The key is listed under its own name.
        response, body = request(self.conn, 'GET', '/buckets/server/keys?prefix=' + urllib.parse.quote('photos/'))
        self.assertEqual(response.status, 200, body)
        self.assertEqual(json.loads(body)['keys'], [key])

    def test_head_gives_the_length_and_type_without_a_body(self):
        url = key_url('server', 'headed')
        value = b'x' * 1000
        self.put(url, value, 'application/octet-stream')
        response, body = request(self.conn, 'HEAD', url)
        self.assertEqual(response.status, 200)
        self.assertEqual(body, b'')
        self.assertEqual(response.getheader('Content-Length'), '1000')
        self.assertEqual(response.getheader('Content-Type'), 'application/octet-stream')
        self.assertIsNotNone(response.getheader('ETag'))
        # Had the server sent body bytes after the HEAD response, they would be
        # read as the start of the next response on this connection.
        response, body = request(self.conn, 'GET', url)
        self.assertEqual(response.status, 200)
        self.assertEqual(body, value)

    def test_a_get_with_a_matching_if_none_match_is_304_not_modified(self):
        url = key_url('server', 'conditional')
        response, _ = self.put(url, b'cached', 'text/plain')
        etag = response.getheader('ETag')
        self.assertTrue(etag and etag.startswith('"'), etag)
        response, body = request(self.conn, 'GET', url, headers={'If-None-Match': etag})
        self.assertEqual(response.status, 304)
        self.assertEqual(body, b'')
        self.assertEqual(response.getheader('ETag'), etag)
        response, body = request(self.conn, 'GET', url, headers={'If-None-Match': '"another", W/%s' % etag})
        self.assertEqual(response.status, 304)
        response, body = request(self.conn, 'GET', url, headers={'If-None-Match': '"another"'})
        self.assertEqual(response.status, 200)
        self.assertEqual(body, b'cached')

    def test_a_deleted_key_is_404_with_a_json_error_document(self):
        url = key_url('server', 'deleted')
        self.put(url, b'short-lived', 'text/plain')
        response, body = request(self.conn, 'DELETE', url)
        self.assertEqual(response.status, 200, body)
        self.assertTrue(json.loads(body)['deleted'])
        response, body = request(self.conn, 'GET', url)
        self.assertEqual(response.status, 404)
        self.assertTrue(response.getheader('Content-Type').startswith('application/json'))
        error = json.loads(body)
        self.assertEqual(error['code'], 'not_found')
        self.assertIsInstance(error['message'], str)
        self.assertTrue(error['message'])
        self.assertNotIn(b'Traceback', body)
        self.assertNotIn(b'File "', body)
        response, body = request(self.conn, 'DELETE', url)
        self.assertEqual(response.status, 404)
        self.assertEqual(json.loads(body)['code'], 'not_found')

    def test_a_keep_alive_connection_serves_several_requests(self):
        url = key_url('server', 'kept-alive')
        response, _ = request(self.conn, 'GET', '/')
        self.assertEqual(response.status, 200)
        sock = self.conn.sock
        self.assertIsNotNone(sock, 'the server closed the connection after one request')
        local = sock.getsockname()
        steps = [('PUT', b'one'), ('GET', None), ('PUT', b'two'), ('HEAD', None), ('GET', None),
                 ('DELETE', None), ('GET', None)]
        statuses = []
        for method, body in steps:
            headers = {'Content-Type': 'text/plain'} if body is not None else {}
            response, _ = request(self.conn, method, url, body, headers)
            statuses.append(response.status)
            self.assertIs(self.conn.sock, sock, 'the connection was not kept alive after %s' % method)
        self.assertEqual(statuses, [201, 200, 200, 200, 200, 200, 404])
        self.assertEqual(self.conn.sock.getsockname(), local)

    def test_a_write_through_one_worker_is_read_through_the_other(self):
        # Hold connections open until both worker processes hold one.
        by_worker = {}
        opened = []
        try:
            for _ in range(60):
                conn = self.server.connect()
                opened.append(conn)
                response, _ = request(conn, 'GET', '/')
                self.assertEqual(response.status, 200)
                by_worker.setdefault(self.server.serving_worker(conn), conn)
                by_worker.pop(None, None)
                if len(by_worker) == 2:
                    break
            self.assertEqual(len(by_worker), 2, 'every connection landed on one worker: %s' % list(by_worker))
            (one, via_one), (other, via_other) = sorted(by_worker.items())
            url = key_url('server', 'across-workers')
            response, body = self.put(url, b'written by %d' % one, 'text/plain', conn=via_one)
            self.assertEqual(response.status, 201, body)
            response, body = request(via_other, 'GET', url)
            self.assertEqual((response.status, body), (200, b'written by %d' % one))
            self.assertEqual(self.server.serving_worker(via_other), other)
            response, body = self.put(url, b'written by %d' % other, 'text/plain', conn=via_other)
            self.assertEqual(response.status, 200, body)
            response, body = request(via_one, 'GET', url)
            self.assertEqual((response.status, body), (200, b'written by %d' % other))
        finally:
            for conn in opened:
                conn.close()

    def test_a_write_is_visible_from_fresh_connections(self):
        url = key_url('server', 'fresh')
        response, body = self.put(url, b'for everyone', 'text/plain')
        self.assertEqual(response.status, 201, body)
        for _ in range(10):
            conn = self.server.connect()
            try:
                response, body = request(conn, 'GET', url)
            finally:
                conn.close()
            self.assertEqual((response.status, body), (200, b'for everyone'))


class TestServerStops(unittest.TestCase):

    def test_sigterm_stops_the_master_and_every_worker(self):
        server = Server(workers=2)
        try:
            server.start()
            workers = server.worker_pids()
            self.assertEqual(len(workers), 2)
            conn = server.connect()
            response, _ = request(conn, 'GET', '/')
            self.assertEqual(response.status, 200)
            conn.close()
            started = time.monotonic()
            graceful, left = server.stop()
            self.assertTrue(graceful, 'gunicorn needed SIGKILL:\n%s' % server.log())
            self.assertLess(time.monotonic() - started, STOP_TIMEOUT)
            self.assertEqual(left, [])
            for pid in [server.process.pid] + workers:
                self.assertFalse(pid_alive(pid), pid)
        finally:
            server.stop()
            server.cleanup()


if __name__ == '__main__':
    unittest.main()
