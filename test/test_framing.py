"""Request framing and cheap outages, against the real server (serve.py under
Granian): malformed framing is refused before anything is stored, and slow,
broken or killed requests hold no thread.

A request the HTTP parser (hyper, in Granian) refuses is answered by it, with
a status line and no document; what it passes on and the store refuses gets
the store's error document.  Either way the connection is closed.

Malformed input goes over raw sockets; streaming uploads through `requests`.
The server waits at most BODY_TIMEOUT s for a body's next byte and wants
MIN_BODY_RATE bytes a second on average after that.
"""
import concurrent.futures
import json
import os
import signal
import socket
import sqlite3
import threading
import time
import unittest

import requests

from test.server import StoreServer
from test.support import read_body, read_head, wait_until

BODY_TIMEOUT = 1
MIN_BODY_RATE = 1000
CONFIGURATION = """
[store]
replicas = 3
r = 2
w = 2
max_value_bytes = 8388608
body_timeout = %s
min_body_rate = %s

# The raw requests below name the host without the server's port.
[access]
allowed_hosts = localhost
""" % (BODY_TIMEOUT, MIN_BODY_RATE) + ''.join(
    '\n[partition-p%d]\nengine = sqlite\npath = data/p%d.sqlite3\n' % (i, i) for i in (1, 2, 3, 4))
BUCKET = 'framing'


def key_path(key):
    return '/buckets/%s/keys/%s' % (BUCKET, key)


def read_response(sock):
    """(status code, headers {lowercase name: value}, body) of one response, or
    None when the connection ends before a whole head."""
    head = read_head(sock)
    if head is None:
        return None
    status, fields, rest = head
    return status, fields, read_body(sock, fields, rest)


class TestFraming(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = StoreServer.running(CONFIGURATION, workers=2, threads=4, environment={'ACCESS_LOG': '1'})
        cls.url = 'http://127.0.0.1:%d' % cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def exchange(self, raw, timeout=10):
        """Send raw bytes on a new connection; the response they get, or None."""
        with socket.create_connection(('127.0.0.1', self.server.port), timeout=timeout) as sock:
            sock.sendall(raw)
            return read_response(sock)

    def put_raw(self, key, fields, body=b'abc'):
        return self.exchange(b'PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n%s\r\n%s'
                             % (key_path(key).encode(), b''.join(f + b'\r\n' for f in fields), body))

    def assert_refused(self, response, status, code, parser_status=None):
        """Refused with status and the store's error code, or by the parser
        (with parser_status when it differs) before the store saw it."""
        self.assertIsNotNone(response, 'the connection closed without a response')
        got_status, headers, body = response
        self.assertEqual(headers.get('connection'), 'close')
        if not body and 'server' not in headers:   # hyper's own answer (it names no server)
            self.assertEqual(got_status, parser_status or status)
            return
        self.assertEqual(got_status, status, body)
        self.assertEqual(json.loads(body)['code'], code)

    def assert_absent(self, key):
        response = requests.get(self.url + key_path(key), timeout=10)
        self.assertEqual(response.status_code, 404, 'key %r was stored: %r' % (key, response.content))

    # -- malformed framing stores nothing ----------------------------------------

    def test_an_invalid_content_length_is_400_and_stores_nothing(self):
        for i, value in enumerate([b'+3', b'0x3', b'-1', b'abc', b'', b'3.0']):
            key = 'bad-length-%d' % i
            self.assert_refused(self.put_raw(key, [b'Content-Length: ' + value]), 400, 'bad_framing')
            self.assert_absent(key)
        # RFC 9110 5.5: whitespace after a field value is not part of it.
        self.assertEqual(self.put_raw('length-and-space', [b'Content-Length: 3 '])[0], 201)
        self.assertEqual(requests.get(self.url + key_path('length-and-space'), timeout=10).content, b'abc')

    def test_two_different_content_lengths_are_400_and_store_nothing(self):
        self.assert_refused(self.put_raw('two-lengths', [b'Content-Length: 3', b'Content-Length: 2']),
                            400, 'bad_framing')
        self.assert_absent('two-lengths')
        # RFC 9110 8.6: the same length twice may be refused or read as one.
        response = self.put_raw('same-length-twice', [b'Content-Length: 3', b'Content-Length: 3'])
        if response[0] == 201:
            self.assertEqual(requests.get(self.url + key_path('same-length-twice'), timeout=10).content, b'abc')
        else:
            self.assert_refused(response, 400, 'bad_framing')
            self.assert_absent('same-length-twice')

    def test_a_transfer_coding_other_than_chunked_is_501_and_stores_nothing(self):
        for i, coding in enumerate([b'gzip', b'identity', b'xchunked', b'chunkedx', b'gzip, chunked']):
            key = 'coding-%d' % i
            # (hyper answers 400 where RFC 9112 6.1 says SHOULD 501.)
            self.assert_refused(self.put_raw(key, [b'Transfer-Encoding: ' + coding], b'3\r\nabc\r\n0\r\n\r\n'),
                                501, 'unsupported_transfer_coding', parser_status=400)
            self.assert_absent(key)

    def test_chunked_twice_or_not_last_is_400(self):
        for i, fields in enumerate([[b'Transfer-Encoding: chunked, chunked'],
                                    [b'Transfer-Encoding: chunked', b'Transfer-Encoding: chunked'],
                                    [b'Transfer-Encoding: chunked, gzip']]):
            key = 'chunked-twice-%d' % i
            self.assert_refused(self.put_raw(key, fields, b'3\r\nabc\r\n0\r\n\r\n'), 400, 'bad_framing')
            self.assert_absent(key)

    def test_content_length_with_transfer_encoding_goes_by_chunked_and_closes(self):
        # RFC 9112 6.1: the server may refuse it, or read the body by
        # Transfer-Encoding alone; either way it closes the connection after,
        # so that nothing past the body can be read as another request.
        # hyper does the second: the Content-Length is never what frames it.
        response = self.put_raw('length-and-chunked', [b'Content-Length: 3', b'Transfer-Encoding: chunked'],
                                b'5\r\nabcde\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n')
        self.assertIn(response[0], (201, 400), response)
        self.assertEqual(response[1].get('connection'), 'close')
        if response[0] == 201:
            self.assertEqual(requests.get(self.url + key_path('length-and-chunked'), timeout=10).content, b'abcde')
        else:
            self.assert_absent('length-and-chunked')

    def test_a_malformed_chunked_body_is_400_and_stores_nothing(self):
        for i, body in enumerate([b'zz\r\nabc\r\n0\r\n\r\n',          # not hexadecimal
                                  b'3\r\nabcXY0\r\n\r\n',             # no CRLF after the data
                                  b'3\nabc\r\n0\r\n\r\n',             # a bare LF
                                  b'-3\r\nabc\r\n0\r\n\r\n',
                                  b'\r\nabc\r\n0\r\n\r\n']):          # an empty size
            key = 'bad-chunks-%d' % i
            self.assert_refused(self.put_raw(key, [b'Transfer-Encoding: chunked'], body), 400, 'bad_framing')
            self.assert_absent(key)

    def test_a_chunked_body_with_extensions_and_trailers_is_stored(self):
        response = self.put_raw('chunk-extensions', [b'Transfer-Encoding: Chunked'],
                                b'3;name=value\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n')
        self.assertEqual(response[0], 201, response)
        self.assertEqual(requests.get(self.url + key_path('chunk-extensions'), timeout=10).content, b'abcde')

    def test_a_raw_space_in_the_request_target_is_400_and_stores_nothing(self):
        response = self.exchange(b'PUT /buckets/%s/keys/a b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc'
                                 % BUCKET.encode())
        self.assert_refused(response, 400, 'bad_framing')
        self.assert_absent('a')

    def test_a_request_line_of_two_tokens_is_400(self):
        response = self.exchange(b'GET /\r\nHost: localhost\r\n\r\n')
        self.assert_refused(response, 400, 'bad_framing')

    def test_too_many_header_fields_are_431(self):
        fields = b''.join(b'X-Field-%d: v\r\n' % i for i in range(150))
        response = self.exchange(b'GET / HTTP/1.1\r\nHost: localhost\r\n%s\r\n' % fields)
        self.assert_refused(response, 431, 'header_fields_too_large')

    def test_5000_small_header_fields_are_431_not_a_closed_connection(self):
        fields = b''.join(b'a%d: b\r\n' % i for i in range(5000))
        response = self.exchange(b'GET / HTTP/1.1\r\nHost: localhost\r\n%s\r\n' % fields)
        self.assert_refused(response, 431, 'header_fields_too_large')

    def test_a_request_target_over_16_kib_is_414(self):
        response = self.exchange(b'GET /buckets/%s/keys/%s HTTP/1.1\r\nHost: localhost\r\n\r\n' % (BUCKET.encode(), b'k' * 20000))
        self.assert_refused(response, 414, 'uri_too_long')

    # -- streaming ---------------------------------------------------------------

    def test_a_generator_upload_with_chunks_over_a_mebibyte_is_stored_whole(self):
        pieces = [os.urandom(1024 * 1024 + 1), os.urandom(3 * 1024 * 1024), b'end']

        def generate():
            yield from pieces
        response = requests.put(self.url + key_path('large-chunks'), data=generate(), timeout=60)
        self.assertEqual(response.status_code, 201, response.content)
        got = requests.get(self.url + key_path('large-chunks'), timeout=60)
        self.assertEqual(got.content, b''.join(pieces))

    def test_a_chunked_body_over_max_value_bytes_is_413(self):
        def generate():
            for _ in range(9):
                yield b'x' * (1024 * 1024)
        try:
            response = requests.put(self.url + key_path('too-large-chunked'), data=generate(), timeout=30)
            self.assertEqual(response.status_code, 413, response.content)
        except requests.ConnectionError:
            pass   # the server answered and closed before the client finished sending
        self.assert_absent('too-large-chunked')

    # -- bodies read into memory are bounded ----------------------------------------

    def test_a_large_bucket_properties_or_gossip_body_is_413_before_it_is_read(self):
        for method, path in (('PUT', '/buckets/%s-props' % BUCKET), ('POST', '/cluster/gossip')):
            started = time.monotonic()
            # Only the head: the answer may not wait for 2 MiB of body.
            response = self.exchange(b'%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n'
                                     b'Content-Length: 2097152\r\n\r\n{' % (method.encode(), path.encode()))
            self.assert_refused(response, 413, 'body_too_large')
            self.assertLess(time.monotonic() - started, BODY_TIMEOUT + 2)
            chunked = self.exchange(b'%s %s HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n'
                                    % (method.encode(), path.encode())
                                    + b'100000\r\n' + b' ' * 0x100000 + b'\r\n' + b'10\r\n' + b' ' * 16 + b'\r\n0\r\n\r\n')
            self.assert_refused(chunked, 413, 'body_too_large')
        self.assertEqual(requests.get(self.url + '/buckets/%s-props' % BUCKET, timeout=10).status_code, 404)

    def test_a_large_form_is_413(self):
        response = requests.put(self.url + key_path('large-form'), data={'value': 'x' * (1024 * 1024 + 1)},
                                timeout=30)
        self.assertEqual(response.status_code, 413, response.content)
        self.assertEqual(response.json()['code'], 'value_too_large')
        self.assert_absent('large-form')

    # -- slow, broken and killed requests free their thread ---------------------------

    def probe_seconds(self):
        """How long GET / takes on a new connection (None: no answer in 5 s)."""
        started = time.monotonic()
        try:
            response = requests.get(self.url + '/', timeout=5)
        except requests.RequestException:
            return None
        self.assertEqual(response.status_code, 200)
        return time.monotonic() - started

    def test_a_transfer_encoding_containing_chunked_does_not_hold_a_thread(self):
        # More such requests than the server has threads (8), all at once.
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            started = time.monotonic()
            answers = list(pool.map(lambda i: self.put_raw('xchunked-%d' % i, [b'Transfer-Encoding: xchunked'],
                                                           b'3\r\nabc\r\n'), range(16)))
        self.assertEqual([a and a[0] for a in answers], [400] * 16)   # hyper's (RFC 9112 6.1: SHOULD 501)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIsNotNone(self.probe_seconds())

    def trickle(self, key, seconds, results):
        """A PUT whose body comes one byte every 0.25 s for `seconds`; its status (or None) goes in results."""
        with socket.create_connection(('127.0.0.1', self.server.port), timeout=seconds + 10) as sock:
            sock.sendall(b'PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n' % key_path(key).encode())
            deadline = time.monotonic() + seconds
            try:
                while time.monotonic() < deadline:
                    sock.sendall(b'x')
                    time.sleep(0.25)
            except OSError:
                pass   # the server gave up on the body and closed
            answer = read_response(sock)
            results.append(answer and answer[0])

    def test_trickling_uploads_end_with_408_and_leave_threads_for_other_requests(self):
        # 12 uploads at 4 bytes a second, more than the 8 threads the server has.
        results = []
        tricklers = [threading.Thread(target=self.trickle, args=('trickle-%d' % i, 8, results)) for i in range(12)]
        for thread in tricklers:
            thread.start()
        try:
            time.sleep(0.5)
            probes = []
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                probes.append(self.probe_seconds())
                time.sleep(0.2)
        finally:
            for thread in tricklers:
                thread.join()
        # Each upload's thread is free after about BODY_TIMEOUT s; the probes
        # are answered while the uploads still trickle.
        self.assertNotIn(None, probes)
        self.assertEqual(results, [408] * 12)
        for i in range(12):
            self.assert_absent('trickle-%d' % i)

    def test_a_body_that_stops_early_is_408_and_one_cut_off_is_400_at_once(self):
        with socket.create_connection(('127.0.0.1', self.server.port), timeout=10) as sock:
            sock.sendall(b'PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc' % key_path('stopped').encode())
            started = time.monotonic()
            answer = read_response(sock)
        self.assert_refused(answer, 408, 'request_timeout')
        self.assertLess(time.monotonic() - started, BODY_TIMEOUT + 3)
        self.assert_absent('stopped')
        # A client that goes away mid-body: the store answers 400 at once (its log says).
        with socket.create_connection(('127.0.0.1', self.server.port), timeout=10) as sock:
            sock.sendall(b'PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc' % key_path('cut').encode())
            time.sleep(0.2)
            sock.shutdown(socket.SHUT_WR)
            read_response(sock)
        self.assertTrue(wait_until(lambda: self.logged('PUT %s' % key_path('cut')), 3), self.server.log())
        self.assertIn('(HTTP/1.1 400)', self.logged('PUT %s' % key_path('cut')))
        self.assert_absent('cut')

    def test_a_client_that_half_closes_may_get_no_answer_and_its_retry_is_applied_once(self):
        """hyper, as Granian configures it, ends a connection whose client
        shuts its sending side down while the request is under way: the
        write may have been applied, unanswered, as on a lost connection
        (docs/API.md, "Message framing").  With an Idempotency-Key, the retry
        on a new connection gets the first attempt's outcome, and the key
        holds one version."""
        outcomes = set()
        for i, delay in enumerate([0, 0.001, 0.002, 0.005, 0.01, 0.05] * 3):
            key = 'half-closed-%d' % i
            with socket.create_connection(('127.0.0.1', self.server.port), timeout=10) as sock:
                sock.sendall(b'PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n'
                             b'Idempotency-Key: "half-%d"\r\nContent-Length: 5\r\n\r\nhello' % (key_path(key).encode(), i))
                time.sleep(delay)
                sock.shutdown(socket.SHUT_WR)
                answer = read_response(sock)
            stored = requests.get(self.url + key_path(key), timeout=10)
            outcomes.add((answer is not None, stored.status_code))
            if answer is not None:
                self.assertEqual(answer[0], 201, answer)
                self.assertEqual(stored.headers['ETag'], answer[1]['etag'])
            retry = requests.put(self.url + key_path(key), data=b'hello', timeout=10,
                                 headers={'Content-Type': 'text/plain', 'Idempotency-Key': '"half-%d"' % i})
            self.assertEqual(retry.status_code, 201, retry.text)
            final = requests.get(self.url + key_path(key), timeout=10)
            self.assertEqual((final.status_code, final.content), (200, b'hello'))
            self.assertEqual(final.headers['ETag'], retry.headers['ETag'])
            if stored.status_code == 200:   # the unanswered first attempt was applied: the retry is it
                self.assertEqual(stored.headers['ETag'], retry.headers['ETag'])
        # Never answered yet not applied, or answered: what the docs say can happen.
        self.assertNotIn((True, 404), outcomes)

    def logged(self, request):
        """The access log's line for a request, or ''."""
        with open(self.server.log_path, encoding='utf-8', errors='replace') as f:
            return next((line for line in f if ' %s =>' % request in line), '')


class TestSlowClients(unittest.TestCase):
    """Bodies trickling one byte a second, with the server's default patience
    (a body may pause 5 s): they wait on the workers' event loops, and hold
    none of the 8 threads that serve requests."""

    def test_twenty_trickling_bodies_hold_no_thread(self):
        server = StoreServer.running(CONFIGURATION.replace('body_timeout = %s' % BODY_TIMEOUT, 'body_timeout = 30'),
                                     workers=2, threads=4)
        self.addCleanup(server.cleanup)
        self.addCleanup(server.stop)
        sockets = []
        try:
            for i in range(20):
                sock = socket.create_connection(('127.0.0.1', server.port), timeout=10)
                sockets.append(sock)
                sock.sendall(b'PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n'
                             % key_path('slow-%d' % i).encode())
            for second in range(4):
                for sock in sockets:
                    sock.sendall(b'x')
                # Every other request is answered while the bodies trickle.
                response = requests.put('%s%s' % ('http://127.0.0.1:%d' % server.port, key_path('fast-%d' % second)),
                                        data=b'fast', headers={'Content-Type': 'text/plain'}, timeout=5)
                self.assertEqual(response.status_code, 201, response.content)
                time.sleep(1)
        finally:
            for sock in sockets:
                sock.close()


class TestWorkerKilled(unittest.TestCase):

    def test_a_kept_alive_client_of_a_killed_worker_is_closed_at_once(self):
        server = StoreServer(CONFIGURATION, workers=2, threads=4)
        try:
            server.start()
            with socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
                sock.sendall(b'GET / HTTP/1.1\r\nHost: localhost\r\n\r\n')
                self.assertEqual(read_response(sock)[0], 200)
                # Every partition locked: the next write waits inside a worker.
                locks = []
                for i in (1, 2, 3, 4):
                    lock = sqlite3.connect(os.path.join(server.directory, 'data', 'p%d.sqlite3' % i),
                                           isolation_level=None)
                    lock.execute('BEGIN IMMEDIATE')
                    locks.append(lock)
                sock.sendall(b'PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc' % key_path('killed').encode())
                time.sleep(0.5)
                for pid in server.worker_pids():
                    os.kill(pid, signal.SIGKILL)
                sock.settimeout(4)
                started = time.monotonic()
                try:
                    answer = read_response(sock)
                except socket.timeout:
                    self.fail('the client waited more than 4 s on a connection whose worker died')
                self.assertIn(answer and answer[0], (None, 502))
                self.assertLess(time.monotonic() - started, 4)
                for lock in locks:
                    lock.rollback()
                    lock.close()
        finally:
            server.stop()
            server.cleanup()


if __name__ == '__main__':
    unittest.main()
