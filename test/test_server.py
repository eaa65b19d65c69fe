"""The real server: serve.py (Granian) started the way `make run` starts it, over HTTP.

The store runs as `python serve.py` with two worker processes over four
SQLite partitions in a temporary directory, and is spoken to over a socket
with http.client: nothing here goes through a WSGI test client.
"""
import email.utils
import gzip
import json
import socket
import time
import unittest
import urllib.parse

from test.server import STOP_TIMEOUT, StoreServer, pid_alive

CONFIGURATION = """
[store]
replicas = 3
r = 2
w = 2
""" + ''.join('\n[partition-p%d]\nengine = sqlite\npath = data/p%d.sqlite3\n' % (i, i) for i in (1, 2, 3, 4))


def key_url(bucket, key):
    return '/buckets/%s/keys/%s' % (bucket, urllib.parse.quote(key, safe='/'))


def request(conn, method, url, body=None, headers=None):
    conn.request(method, url, body=body, headers=headers or {})
    response = conn.getresponse()
    return response, response.read()


class TestServer(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = StoreServer.running(CONFIGURATION, workers=2, environment={'ACCESS_LOG': '1'})

    @classmethod
    def tearDownClass(cls):
        graceful, left = cls.server.stop()
        cls.server.cleanup()
        if left:
            raise AssertionError('processes left behind after stopping the server: %s' % left)

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
        self.assertEqual(response.getheader('Content-Length'), str(len(value)))
        # RFC 9110 6.6.1: an origin server with a clock sends Date, once.
        self.assertEqual(len(response.headers.get_all('Date')), 1)
        self.assertLess(abs(email.utils.parsedate_to_datetime(response.getheader('Date')).timestamp()
                            - time.time()), 60)

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

    def test_head_ignores_range_and_answers_as_a_whole_get_would(self):
        url = key_url('server', 'headed-range')
        self.put(url, b'y' * 1000, 'application/octet-stream')
        response, body = request(self.conn, 'HEAD', url, headers={'Range': 'bytes=0-9'})
        self.assertEqual((response.status, body), (200, b''))
        self.assertEqual(response.getheader('Content-Length'), '1000')
        self.assertIsNone(response.getheader('Content-Range'))
        # A range past the end is not 416 on HEAD either.
        response, body = request(self.conn, 'HEAD', url, headers={'Range': 'bytes=5000-'})
        self.assertEqual((response.status, body), (200, b''))
        response, body = request(self.conn, 'GET', url, headers={'Range': 'bytes=0-9'})
        self.assertEqual((response.status, body), (206, b'y' * 10))
        # Several ranges: one multipart/byteranges body, then the connection serves on.
        response, body = request(self.conn, 'GET', url, headers={'Range': 'bytes=0-1,10-11'})
        self.assertEqual(response.status, 206)
        self.assertEqual(response.getheader('Content-Type').partition('; boundary=')[0], 'multipart/byteranges', body[:200])
        self.assertEqual((body.count(b'Content-Range: bytes 0-1/1000'), body.count(b'bytes 10-11/1000')), (1, 1))
        response, body = request(self.conn, 'HEAD', url, headers={'Range': 'bytes=0-1,10-11'})
        self.assertEqual((response.status, response.getheader('Content-Length')), (200, '1000'))

    def test_a_get_with_a_matching_if_none_match_is_304_not_modified(self):
        url = key_url('server', 'conditional')
        response, _ = self.put(url, b'cached', 'text/plain')
        etag = response.getheader('ETag')
        self.assertTrue(etag and etag.startswith('"'), etag)
        sock = self.conn.sock
        response, body = request(self.conn, 'GET', url, headers={'If-None-Match': etag})
        self.assertEqual(response.status, 304)
        self.assertEqual(body, b'')
        self.assertEqual(response.getheader('ETag'), etag)
        # RFC 9110 8.6: a Content-Length, when a 304 has one (hyper leaves it
        # out), is the length a 200 would have had.  The connection stays open.
        self.assertIn(response.getheader('Content-Length'), (None, str(len(b'cached'))))
        self.assertIs(self.conn.sock, sock, 'the connection was closed after the 304')
        response, body = request(self.conn, 'GET', url, headers={'If-None-Match': '"another", W/%s' % etag})
        self.assertEqual(response.status, 304)
        response, body = request(self.conn, 'GET', url, headers={'If-None-Match': '"another"'})
        self.assertEqual(response.status, 200)
        self.assertEqual(body, b'cached')

    def test_a_gzip_value_comes_back_with_its_content_encoding(self):
        url = key_url('server', 'gzipped')
        body = gzip.compress(b'hello ' * 100)
        response, answer = self.put(url, body, 'text/plain', headers={'Content-Encoding': 'gzip'})
        self.assertEqual(response.status, 201, answer)
        for method in ('GET', 'HEAD'):
            response, got = request(self.conn, method, url)
            self.assertEqual((response.status, response.getheader('Content-Encoding')), (200, 'gzip'))
            self.assertEqual(response.getheader('Content-Length'), str(len(body)))
            self.assertEqual(got, body if method == 'GET' else b'')

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
        # An error document is a response like any other: it has a Date too.
        self.assertEqual(len(response.headers.get_all('Date')), 1)
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
        # Each new connection goes to one worker; the access log says which
        # answered.  Every worker must read back each write.
        url = key_url('server', 'across-workers')
        for value in (b'first', b'second'):
            response, body = self.put(url, value, 'text/plain', conn=self.server.connect())
            self.assertIn(response.status, (200, 201), body)
            before = self.server.served()
            for _ in range(300):
                response, body = request(self.server.connect(), 'GET', url)
                self.assertEqual((response.status, body), (200, value))
                now = self.server.served()
                if all(now[pid] > before.get(pid, 0) for pid in now):
                    break
            self.assertTrue(all(now[pid] > before.get(pid, 0) for pid in now), (before, now))
            self.assertEqual(len(now), 2)

    def test_a_chunked_upload_is_stored_whole(self):
        url = key_url('server', 'chunked')
        pieces = [b'first piece, ', b'x' * 70000, b', last piece']
        # http.client sends an iterator without a length chunked.
        response, body = self.put(url, iter(pieces), 'text/plain')
        self.assertEqual(response.status, 201, body)
        response, body = request(self.conn, 'GET', url)
        self.assertEqual((response.status, body), (200, b''.join(pieces)))

    def test_a_chunked_upload_cut_off_midway_changes_nothing(self):
        url = key_url('server', 'chunked-cut')
        self.put(url, b'old', 'text/plain')
        with socket.create_connection(('127.0.0.1', self.server.port)) as sock:
            sock.sendall(b'PUT %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/plain\r\n'
                         b'Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n' % (url.encode(), self.server.port))
            time.sleep(0.3)
        time.sleep(0.5)
        response, body = request(self.server.connect(), 'GET', url)
        self.assertEqual((response.status, body), (200, b'old'))

    def test_expect_100_continue_is_answered_before_the_body_is_sent(self):
        url = key_url('server', 'expecting')
        with socket.create_connection(('127.0.0.1', self.server.port), timeout=5) as sock:
            sock.sendall(b'PUT %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/plain\r\n'
                         b'Expect: 100-continue\r\nContent-Length: 5\r\n\r\n' % (url.encode(), self.server.port))
            interim = sock.recv(4096)
            self.assertTrue(interim.startswith(b'HTTP/1.1 100 '), interim)
            sock.sendall(b'hello')
            answer = b''
            while b'\r\n\r\n' not in answer:
                answer += sock.recv(4096)
            self.assertTrue(answer.startswith(b'HTTP/1.1 201 '), answer)
        response, body = request(self.server.connect(), 'GET', url)
        self.assertEqual(body, b'hello')

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
        server = StoreServer(CONFIGURATION, workers=2)
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
            self.assertTrue(graceful, 'the server needed SIGKILL:\n%s' % server.log())
            self.assertLess(time.monotonic() - started, STOP_TIMEOUT)
            self.assertEqual(left, [])
            for pid in [server.process.pid] + workers:
                self.assertFalse(pid_alive(pid), pid)
        finally:
            server.stop()
            server.cleanup()


if __name__ == '__main__':
    unittest.main()
