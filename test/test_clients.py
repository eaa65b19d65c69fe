"""The clients people use, against the real server (serve.py under Granian, as
`make run` starts it) over four SQLite partitions: streaming uploads from
`requests` and `http.client`, curl, a client that waits for `100 Continue`,
and a download cut off and resumed with `Range` and `If-Range`.

Every value is checked whole: the PUT's ETag is the SHA-256 of the bytes sent,
and a streamed GET hashes to the same.
"""
import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import unittest
import uuid

import aiohttp
import httpx
import requests

from test.server import StoreServer
from test.support import read_body, read_head

MiB = 1024 * 1024
MAX_VALUE_BYTES = 64 * MiB
STREAM_BYTES = 20 * MiB
CONFIGURATION = """
[store]
replicas = 3
r = 2
w = 2
max_value_bytes = %d
""" % MAX_VALUE_BYTES + ''.join(
    '\n[partition-p%d]\nengine = sqlite\npath = data/p%d.sqlite3\n' % (i, i) for i in (1, 2, 3, 4))
BUCKET = 'clients'
TIMEOUT = 60


def key_path(name):
    return '/buckets/%s/keys/%s-%s' % (BUCKET, name, uuid.uuid4().hex[:8])


def repr_digest_of(data):
    """RFC 9530 Repr-Digest of data, as the store sends it with a raw value."""
    return 'sha-256=:%s:' % base64.b64encode(hashlib.sha256(data).digest()).decode()


def pieces(total, size):
    """total random bytes as pieces of size (the last may be shorter)."""
    data = os.urandom(total)
    return [data[i:i + size] for i in range(0, total, size)]


class TestClients(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = StoreServer.running(CONFIGURATION, workers=2, threads=4)
        cls.url = 'http://127.0.0.1:%d' % cls.server.port
        cls.directory = tempfile.mkdtemp(prefix='kvstore-clients-')

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()
        shutil.rmtree(cls.directory, ignore_errors=True)

    def file_of(self, data):
        """A file holding data, for clients that upload files."""
        path = os.path.join(self.directory, uuid.uuid4().hex)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def assert_stored(self, path, data, response_etag):
        """The write's ETag names the version a streamed GET gives back, exactly data."""
        digest, length = hashlib.sha256(), 0
        with requests.get(self.url + path, stream=True, timeout=TIMEOUT) as got:
            self.assertEqual(got.status_code, 200, got.content[:500])
            self.assertEqual(got.headers['ETag'], response_etag)
            self.assertEqual(got.headers['Repr-Digest'], repr_digest_of(data))
            for piece in got.iter_content(MiB):
                digest.update(piece)
                length += len(piece)
        self.assertEqual((length, digest.hexdigest()), (len(data), hashlib.sha256(data).hexdigest()))

    # -- requests ----------------------------------------------------------------

    def test_requests_streams_a_generator_of_any_chunk_size(self):
        for size in (64 * 1024, MiB, 8 * MiB):
            with self.subTest(chunk=size):
                parts = pieces(STREAM_BYTES, size)
                path = key_path('generator-%d' % size)
                # A generator has no length: requests sends it chunked, a piece a chunk.
                response = requests.put(self.url + path, data=(p for p in parts), timeout=TIMEOUT,
                                        headers={'Content-Type': 'application/octet-stream'})
                self.assertEqual(response.status_code, 201, response.content[:500])
                self.assertEqual(response.request.headers.get('Transfer-Encoding'), 'chunked')
                self.assert_stored(path, b''.join(parts), response.headers.get('ETag'))

    def test_requests_uploads_an_open_file(self):
        data = os.urandom(STREAM_BYTES)
        path = key_path('file')
        with open(self.file_of(data), 'rb') as f:
            response = requests.put(self.url + path, data=f, timeout=TIMEOUT,
                                    headers={'Content-Type': 'application/octet-stream'})
        self.assertEqual(response.status_code, 201, response.content[:500])
        self.assertEqual(response.request.headers.get('Content-Length'), str(len(data)))
        self.assert_stored(path, data, response.headers.get('ETag'))

    # -- httpx and aiohttp -------------------------------------------------------

    def test_httpx_streams_a_generator_and_downloads_streaming(self):
        parts = pieces(3 * MiB + 5, MiB + 1)
        path = key_path('httpx')
        with httpx.Client(timeout=TIMEOUT) as client:
            response = client.put(self.url + path, content=(p for p in parts),
                                  headers={'Content-Type': 'application/octet-stream'})
            self.assertEqual(response.status_code, 201, response.content[:500])
            self.assertEqual(response.request.headers.get('Transfer-Encoding'), 'chunked')
            with client.stream('GET', self.url + path) as got:
                self.assertEqual(b''.join(got.iter_bytes()), b''.join(parts))
        self.assert_stored(path, b''.join(parts), response.headers.get('ETag'))

    def test_aiohttp_streams_an_async_generator(self):
        parts = pieces(3 * MiB + 5, 2 * MiB)
        path = key_path('aiohttp')

        async def upload():
            async def body():
                for part in parts:
                    yield part
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
                async with session.put(self.url + path, data=body(),
                                       headers={'Content-Type': 'application/octet-stream'}) as response:
                    return response.status, response.headers.get('ETag'), await response.read()
        status, etag, answer = asyncio.run(upload())
        self.assertEqual(status, 201, answer[:500])
        self.assert_stored(path, b''.join(parts), etag)

    # -- http.client -------------------------------------------------------------

    def test_http_client_sends_a_chunked_body(self):
        parts = pieces(3 * MiB + 17, 256 * 1024 + 3)
        path = key_path('http-client-chunked')
        conn = self.server.connect(timeout=TIMEOUT)
        try:
            conn.request('PUT', path, body=iter(parts), encode_chunked=True,
                         headers={'Content-Type': 'application/octet-stream', 'Transfer-Encoding': 'chunked'})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        self.assertEqual(response.status, 201, body[:500])
        self.assert_stored(path, b''.join(parts), response.getheader('ETag'))

    # -- curl --------------------------------------------------------------------

    def curl(self, *arguments):
        """curl's (status, ETag) for a request; it must exit 0."""
        if shutil.which('curl') is None:
            self.skipTest('curl is not installed (apt-get install curl)')
        headers = os.path.join(self.directory, uuid.uuid4().hex + '.headers')
        done = subprocess.run(['curl', '--silent', '--show-error', '--output', os.devnull,
                               '--dump-header', headers, '--write-out', '%{http_code}',
                               '--max-time', str(TIMEOUT)] + list(arguments),
                              capture_output=True, timeout=TIMEOUT + 10)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(headers, encoding='latin-1') as f:
            etags = re.findall(r'^etag:\s*(\S+)', f.read(), re.I | re.M)
        return int(done.stdout), etags[-1] if etags else None

    def test_curl_uploads_a_file_with_dash_t(self):
        data = os.urandom(5 * MiB + 1)
        path = key_path('curl-t')
        # curl -T is a PUT; for a body this size curl sends Expect: 100-continue and waits.
        status, etag = self.curl('-T', self.file_of(data), '-H', 'Content-Type: application/octet-stream',
                                 self.url + path)
        self.assertEqual(status, 201)
        self.assert_stored(path, data, etag)

    def test_curl_posts_a_file_with_data_binary(self):
        data = os.urandom(5 * MiB + 1)
        path = key_path('curl-data-binary')
        # --data-binary is a POST, which creates the key.
        status, etag = self.curl('--data-binary', '@' + self.file_of(data),
                                 '-H', 'Content-Type: application/octet-stream', self.url + path)
        self.assertEqual(status, 201)
        self.assert_stored(path, data, etag)

    # -- Expect: 100-continue ----------------------------------------------------

    def expecting(self, path, length):
        """A socket that has sent a PUT's head asking for 100-continue, and no body."""
        sock = socket.create_connection(('127.0.0.1', self.server.port), timeout=TIMEOUT)
        sock.sendall(b'PUT %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/octet-stream\r\n'
                     b'Content-Length: %d\r\nExpect: 100-continue\r\n\r\n'
                     % (path.encode(), self.server.port, length))
        return sock

    def test_a_client_that_waits_for_100_continue_sends_its_body_after_it(self):
        data = os.urandom(3 * MiB + 5)
        path = key_path('expect')
        with self.expecting(path, len(data)) as sock:
            interim = read_head(sock)
            self.assertIsNotNone(interim, 'the connection closed before 100 Continue')
            self.assertEqual(interim[0], 100, interim)
            self.assertEqual(interim[2], b'', 'bytes after the 100 Continue before the body was sent')
            sock.sendall(data)
            status, fields, rest = read_head(sock)
            body = read_body(sock, fields, rest)
        self.assertEqual(status, 201, body)
        self.assert_stored(path, data, fields.get('etag'))

    def refused_put(self, path, fields=b''):
        """The answer to a PUT whose Content-Length is over max_value_bytes, read
        without sending a byte of the body: (status, fields, body) of every
        response on the connection, interim ones first."""
        answers = []
        with socket.create_connection(('127.0.0.1', self.server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b'PUT %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/octet-stream\r\n'
                         b'Content-Length: %d\r\n%s\r\n' % (path.encode(), self.server.port, MAX_VALUE_BYTES + 1, fields))
            rest = b''
            while not answers or answers[-1][0] < 200:
                head = read_head(sock, rest)
                self.assertIsNotNone(head, 'the connection closed after %r without a final answer' % answers)
                status, head_fields, rest = head
                # An interim response has no body: what follows it is the next response.
                answers.append((status, head_fields, b'' if status < 200 else read_body(sock, head_fields, rest)))
        self.assertEqual(requests.get(self.url + path, timeout=TIMEOUT).status_code, 404)
        return answers

    def assert_too_large(self, answer):
        status, fields, body = answer
        self.assertEqual(status, 413, body)
        self.assertEqual(fields.get('connection'), 'close')
        self.assertEqual(json.loads(body)['code'], 'value_too_large')

    def test_a_body_over_max_value_bytes_is_413_before_it_is_sent(self):
        answers = self.refused_put(key_path('refused'))
        self.assertEqual(len(answers), 1, answers)
        self.assert_too_large(answers[0])

    def test_an_expect_100_continue_over_max_value_bytes_is_413_and_nothing_is_read(self):
        # RFC 9110 10.1.1: the 413 alone, no 100 first (hyper sends 100 only
        # once the store starts reading the body).
        answers = self.refused_put(key_path('refused-expect'), b'Expect: 100-continue\r\n')
        self.assertEqual([status for status, _, _ in answers], [413], answers)
        self.assert_too_large(answers[0])

    # -- a download cut off and resumed ---------------------------------------------

    def put(self, path, data):
        response = requests.put(self.url + path, data=data, timeout=TIMEOUT,
                                headers={'Content-Type': 'application/octet-stream'})
        self.assertEqual(response.status_code, 201, response.content[:500])
        return response.headers['ETag']

    def cut_download(self, path, keep):
        """The ETag and the first `keep` bytes of a streamed GET whose connection is then closed."""
        got = b''
        response = requests.get(self.url + path, stream=True, timeout=TIMEOUT)
        try:
            self.assertEqual(response.status_code, 200)
            for piece in response.iter_content(64 * 1024):
                got += piece
                if len(got) >= keep:
                    break
        finally:
            response.close()
        return response.headers['ETag'], got[:keep]

    def test_a_download_cut_off_resumes_with_range_and_if_range(self):
        data = os.urandom(12 * MiB + 3)
        path = key_path('resumed')
        written = self.put(path, data)
        etag, first = self.cut_download(path, 5 * MiB + 7)
        self.assertEqual(etag, written)
        rest = requests.get(self.url + path, timeout=TIMEOUT,
                            headers={'Range': 'bytes=%d-' % len(first), 'If-Range': etag})
        self.assertEqual(rest.status_code, 206, rest.content[:500])
        self.assertEqual(rest.headers['Content-Range'], 'bytes %d-%d/%d' % (len(first), len(data) - 1, len(data)))
        self.assertEqual(first + rest.content, data)

    def test_a_resume_after_the_value_changed_gets_the_whole_new_value(self):
        path = key_path('changed')
        self.put(path, os.urandom(3 * MiB))
        etag, first = self.cut_download(path, MiB)
        new = os.urandom(2 * MiB + 1)
        response = requests.put(self.url + path, data=new, timeout=TIMEOUT,
                                headers={'Content-Type': 'application/octet-stream'})
        self.assertEqual(response.status_code, 200, response.content[:500])
        rest = requests.get(self.url + path, timeout=TIMEOUT,
                            headers={'Range': 'bytes=%d-' % len(first), 'If-Range': etag})
        self.assertEqual(rest.status_code, 200, rest.content[:500])
        self.assertNotIn('Content-Range', rest.headers)
        self.assertEqual(rest.content, new)
