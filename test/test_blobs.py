"""Blob-grade values: streamed in chunks, ranged, checked, never half-written.

Round trips and HTTP semantics run over SQLite and real MariaDB partitions;
memory, interrupted uploads and Expect run against the real server process;
a MariaDB server with a fixed-size tablespace fills up for real.
"""
import base64
import gzip
import hashlib
import http.client
import os
import signal
import socket
import time
import unittest

from test import support
from test.mariadb import MariaDBServer, shared_cluster
from test.server import StoreServer

CHUNK = 64 * 1024


def pattern(size, seed=0):
    """size bytes that differ from chunk to chunk (so a misplaced chunk shows)."""
    block = hashlib.sha256(b'%d' % seed).digest() * 2048  # 64 KiB
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b'%d-%d' % (seed, i)).digest() + block[:CHUNK - 32]
        i += 1
    return bytes(out[:size])


class BlobSpecification(support.StoreSpecification):
    store_settings = {'chunk_size': CHUNK, 'max_value_bytes': 64 * 1024 * 1024}

    def url(self, key='blob'):
        return '/buckets/%s/keys/%s' % (self.bucket, key)

    def put(self, body, key='blob', headers=None, status=None, params=''):
        h = {'Content-Type': 'application/x-blob'}
        h.update(headers or {})
        return self.app.put(self.url(key) + params, body, headers=h, status=status)

    def test_round_trips_of_every_size_around_the_chunk(self):
        for size in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5):
            body = pattern(size, size)
            receipt = self.put(body, key='k%d' % size)
            self.assertEqual(receipt.json['sha256'], hashlib.sha256(body).hexdigest())
            got = self.app.get(self.url('k%d' % size))
            self.assertEqual(got.headers['Content-Length'], str(size))
            self.assertEqual(got.body, body, size)

    def test_a_fifty_mebibyte_value_round_trips(self):
        store = support.open_store(self.partitions, max_value_bytes=64 * 1024 * 1024)  # 1 MiB chunks
        app = support.web_app(store)
        try:
            body = pattern(50 * 1024 * 1024, 50)
            app.put(self.url('big'), body, headers={'Content-Type': 'application/x-blob'})
            got = app.get(self.url('big'))
            self.assertEqual(len(got.body), len(body))
            self.assertEqual(hashlib.sha256(got.body).digest(), hashlib.sha256(body).digest())
        finally:
            store.close()

    def test_every_replica_holds_every_chunk(self):
        body = pattern(5 * CHUNK + 7, 3)
        receipt = self.put(body, params='?w=all').json
        for owner in receipt['preference_list']:
            engine = self.store.engines[owner]
            version = engine.read(self.bucket, 'blob')[0]
            self.assertEqual((version.size, version.chunk_count), (len(body), 6))
            self.assertEqual(b''.join(engine.iter_value(version)), body, owner)

    def test_ranges(self):
        body = pattern(3 * CHUNK + 100, 7)
        self.put(body)
        for header, first, last in (('bytes=0-9', 0, 9), ('bytes=%d-%d' % (CHUNK - 5, CHUNK + 5), CHUNK - 5, CHUNK + 5),
                                    ('bytes=-50', len(body) - 50, len(body) - 1),
                                    ('bytes=%d-' % (2 * CHUNK), 2 * CHUNK, len(body) - 1),
                                    ('bytes=10-999999999', 10, len(body) - 1)):
            got = self.app.get(self.url(), headers={'Range': header}, status=206)
            self.assertEqual(got.body, body[first:last + 1], header)
            self.assertEqual(got.headers['Content-Range'], 'bytes %d-%d/%d' % (first, last, len(body)))
        refused = self.app.get(self.url(), headers={'Range': 'bytes=%d-' % len(body)}, status=416)
        self.assertEqual(refused.headers['Content-Range'], 'bytes */%d' % len(body))
        self.assertEqual(refused.json['code'], 'range_not_satisfiable')
        stale = self.app.get(self.url(), headers={'Range': 'bytes=0-9', 'If-Range': '"old"'}, status=200)
        self.assertEqual(stale.body, body)
        self.assertEqual(self.app.get(self.url()).headers['Accept-Ranges'], 'bytes')

    def test_several_ranges_of_an_encoded_value_carry_its_encoding_in_each_part(self):
        # RFC 9110 14.1.2: the ranges are of the stored (gzip) bytes; the multipart is not gzip.
        body = gzip.compress(pattern(300, 5))
        self.app.put(self.url('gz'), body, headers={'Content-Type': 'text/plain', 'Content-Encoding': 'gzip'})
        got = self.app.get(self.url('gz'), headers={'Range': 'bytes=0-9,20-29'}, status=206)
        self.assertNotIn('Content-Encoding', got.headers)
        boundary = got.headers['Content-Type'].partition('; boundary=')[2].encode()
        heads = [part.partition(b'\r\n\r\n')[0] for part in got.body.split(b'--' + boundary)[1:-1]]
        self.assertEqual(len(heads), 2)
        for head in heads:
            self.assertIn(b'\r\nContent-Encoding: gzip\r\n', head)
        self.assertEqual(int(got.headers['Content-Length']), len(got.body))

    def test_several_ranges_come_as_multipart_byteranges(self):
        small, big = pattern(100, 3), pattern(3 * CHUNK + 100, 4)
        # Overlapping ranges are coalesced, ranges past the end dropped, parts sorted.
        for key, body, header, expected in (
                ('small', small, 'bytes=70-80,0-9,5-12,-4,500-', [(0, 12), (70, 80), (96, 99)]),
                ('big', big, 'bytes=%d-%d,0-9,-4' % (CHUNK - 5, 2 * CHUNK + 5),
                 [(0, 9), (CHUNK - 5, 2 * CHUNK + 5), (len(big) - 4, len(big) - 1)])):
            self.put(body, key=key)
            got = self.app.get(self.url(key), headers={'Range': header}, status=206)
            [content_type] = got.headers.getall('Content-Type')
            media_type, _, boundary = content_type.partition('; boundary=')
            self.assertEqual(media_type, 'multipart/byteranges')
            self.assertNotIn('Content-Range', got.headers)
            self.assertEqual(int(got.headers['Content-Length']), len(got.body))
            *parts, end = got.body.split(b'--' + boundary.encode())
            self.assertEqual((parts[0], end), (b'', b'--\r\n'))
            for part, (first, last) in zip(parts[1:], expected, strict=True):
                head, _, data = part.partition(b'\r\n\r\n')
                self.assertEqual(head.split(b'\r\n'), [b'', b'Content-Type: application/x-blob',
                                                         b'Content-Range: bytes %d-%d/%d' % (first, last, len(body))])
                self.assertEqual(data, body[first:last + 1] + b'\r\n')
        # Ranges that coalesce into one are a plain 206; too many ranges get the whole value.
        one = self.app.get(self.url('small'), headers={'Range': 'bytes=0-9,5-12,13-20'}, status=206)
        self.assertEqual((one.headers['Content-Range'], one.body), ('bytes 0-20/100', small[:21]))
        many = ','.join('%d-%d' % (i, i) for i in range(0, 66, 2))
        self.assertEqual(self.app.get(self.url('small'), headers={'Range': 'bytes=' + many}, status=200).body, small)

    def test_head_gives_the_length_of_a_chunked_value(self):
        self.put(pattern(2 * CHUNK + 1))
        head = self.app.head(self.url())
        self.assertEqual((head.headers['Content-Length'], head.body), (str(2 * CHUNK + 1), b''))

    def test_metadata_and_cache_control_are_kept(self):
        self.put(b'x' * (CHUNK + 1), headers={'X-Meta-Color': 'blue', 'X-Meta-Owner-Name': 'Ada',
                                              'Cache-Control': 'max-age=60'})
        got = self.app.get(self.url())
        self.assertEqual(got.headers['X-Meta-Color'], 'blue')
        self.assertEqual(got.headers['X-Meta-Owner-Name'], 'Ada')
        self.assertEqual(got.headers['Cache-Control'], 'max-age=60')
        self.app.put('/buckets/' + self.bucket, '{"cache_control": "no-store"}')
        self.put(b'small', key='plain')
        self.assertEqual(self.app.get(self.url('plain')).headers['Cache-Control'], 'no-store')

    def test_conditional_requests_work_for_blobs(self):
        etag = self.put(pattern(2 * CHUNK, 1)).headers['ETag']
        self.app.get(self.url(), headers={'If-None-Match': etag}, status=304)
        self.put(pattern(2 * CHUNK, 2), headers={'If-Match': '"stale"'}, status=412)
        self.assertEqual(self.app.get(self.url()).body, pattern(2 * CHUNK, 1))
        self.put(pattern(2 * CHUNK, 3), headers={'If-Match': etag}, status=200)
        self.put(pattern(2 * CHUNK, 4), headers={'If-None-Match': '*'}, status=412)

    def test_uploads_are_checked_against_the_digests_they_carry(self):
        body = pattern(CHUNK * 2 + 3, 9)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
        self.put(body, headers={'Content-MD5': md5}, status=201)
        self.put(body, headers={'Content-Digest': 'sha-256=:%s:' % sha}, status=200)
        bad = self.put(body + b'!', headers={'Content-MD5': md5}, status=400)
        self.assertEqual(bad.json['code'], 'digest_mismatch')
        bad = self.put(b'tiny', key='small', headers={'Digest': 'SHA-256=%s' % sha}, status=400)
        self.assertEqual(bad.json['code'], 'digest_mismatch')
        bad = self.put(b'tiny', key='small', headers={'Repr-Digest': 'sha-256=:%s:' % sha}, status=400)
        self.assertEqual(bad.json['code'], 'digest_mismatch')
        self.app.get(self.url('small'), status=404)
        self.assertEqual(self.app.get(self.url()).body, body)

    def test_values_over_the_limit_are_413_and_nothing_is_stored(self):
        store = support.open_store(self.partitions, chunk_size=CHUNK, max_value_bytes=3 * CHUNK)
        app = support.web_app(store)
        try:
            response = app.put(self.url(), pattern(3 * CHUNK + 1), status=413,
                               headers={'Content-Type': 'application/x-blob'})
            self.assertEqual(response.json['code'], 'value_too_large')
            app.get(self.url(), status=404)
        finally:
            store.close()

    def test_chunks_that_no_version_points_to_are_collected(self):
        body = pattern(3 * CHUNK, 12)
        self.put(body, key='kept', params='?w=all')
        ghost = 'f' * 32   # the chunks of an upload that never got its version
        engine = self.store.engines['p1']
        engine.write_chunk(self.bucket, 'ghost', ghost, 0, b'lost')
        now = time.time_ns() // 1000 + 1
        self.assertEqual(engine.collect_chunks(now - 60 * 10 ** 6, 1000)[0], 0)  # too young yet
        removed = 0
        for e in self.store.engines.values():
            after = ''
            while after is not None:   # one version at a time: the cursor reaches them all
                found, after = e.collect_chunks(now, 1, after)
                removed += found
        self.assertGreaterEqual(removed, 1)
        self.assertEqual(engine.chunks_held(ghost), 0)
        self.assertEqual(self.app.get(self.url('kept')).body, body)

    def test_a_forced_bucket_delete_takes_the_chunks_with_it(self):
        self.put(pattern(3 * CHUNK, 13), params='?w=all')
        version_id = self.store.get(self.bucket, 'blob').current[0].version_id
        self.app.delete('/buckets/%s?force=true' % self.bucket)
        self.assertEqual([e.chunks_held(version_id) for e in self.store.engines.values()], [0] * 4)

    def test_damaged_bytes_are_never_served(self):
        body = pattern(2 * CHUNK + 10, 4)
        receipt = self.put(body, params='?w=all').json
        version = self.store.get(self.bucket, 'blob').current[0]
        # Damage one chunk on every replica, behind the store's back.
        for owner in receipt['preference_list']:
            engine = self.store.engines[owner]
            engine.write_chunk(self.bucket, 'blob', version.version_id, 1, b'X' * CHUNK)
            with engine._cursor() as cursor:   # the digest stored with it stays the old one
                engine._execute(cursor, 'UPDATE chunks SET digest = ? WHERE version_id = ? AND seq = 1',
                                (hashlib.sha256(body[CHUNK:2 * CHUNK]).hexdigest().encode(),
                                 version.version_id.encode()))
        with self.assertRaises(Exception):
            b''.join(self.store.open_value(self.store.get(self.bucket, 'blob').current[0]))


class TestBlobsOnSQLite(support.OnSQLite, BlobSpecification, unittest.TestCase):
    pass


class TestBlobsOnMariaDB(support.OnMariaDB, BlobSpecification, unittest.TestCase):
    def test_a_hint_carries_the_chunks_to_its_owner(self):
        key = 'hinted'
        owners = self.store.ring.preference_list(self.bucket, key, 3)
        victim = shared_cluster().servers[int(owners[2][1:]) - 1]
        body = pattern(4 * CHUNK + 3, 11)
        victim.kill()
        try:
            receipt = self.put(body, key=key, params='?w=all').json
            self.assertIn(owners[2], receipt['hints'])
        finally:
            victim.restart()
        self.store.health.succeeded(owners[2])
        self.store.hand_off(owners[2])   # or it is under way already, since the owner is back
        engine = self.store.engines[owners[2]]
        self.assertTrue(support.wait_until(lambda: engine.read(self.bucket, key), 10))
        version = engine.read(self.bucket, key)[0]
        self.assertEqual(b''.join(engine.iter_value(version)), body)


class TestFullPartition(unittest.TestCase):
    """A MariaDB server whose tablespace cannot grow: writes answer 507."""

    @classmethod
    def setUpClass(cls):
        cls.directory = support.TemporaryDirectory()
        cls.server = MariaDBServer(cls.directory.path, 'tiny', options=[
            '--innodb-data-file-path=ibdata1:24M', '--innodb-file-per-table=0']).start()
        fields = {'engine': 'mysql', 'host': cls.server.host, 'port': cls.server.port,
                  'user': cls.server.store_user, 'password': cls.server.store_password,
                  'database': 'kv_full'}
        cls.store = support.open_store({'tiny': fields}, replicas=1, r=1, w=1, chunk_size=CHUNK,
                                       max_value_bytes=256 * 1024 * 1024)
        cls.app = support.web_app(cls.store)

    @classmethod
    def tearDownClass(cls):
        cls.store.close()
        cls.server.destroy()
        cls.directory.remove()

    def test_a_full_partition_answers_507_and_keeps_the_old_value(self):
        self.app.put('/buckets/b/keys/keep', b'old value', headers={'Content-Type': 'text/plain'})
        big = pattern(64 * 1024 * 1024, 5)
        refused = self.app.put('/buckets/b/keys/keep', big, headers={'Content-Type': 'application/x-blob'},
                               status=507)
        self.assertEqual(refused.json['code'], 'insufficient_storage')
        self.assertEqual(self.app.get('/buckets/b/keys/keep').body, b'old value')
        # Fill what room is left with small values until the table is full too.
        for i in range(10000):
            response = self.app.put('/buckets/b/keys/small%d' % i, b'v' * 60000,
                                    headers={'Content-Type': 'text/plain'}, status='*')
            if response.status_int != 201:
                break
        self.assertEqual(response.status_int, 507, response.text)
        self.assertEqual(response.json['code'], 'insufficient_storage')
        self.app.get('/buckets/b/keys/small%d' % i, status=404)
        self.assertEqual(self.app.get('/buckets/b/keys/keep').body, b'old value')


class TestServingBlobs(unittest.TestCase):
    """The real server (serve.py, as `make run` starts it) streaming large values."""

    @classmethod
    def setUpClass(cls):
        config = '[store]\nreplicas = 3\nr = 2\nw = 2\nchunk_size = 1048576\nmax_value_bytes = 536870912\n'
        config += ''.join('[partition-%s]\nengine = sqlite\npath = %s\n' % (name, fields['path'])
                          for name, fields in support.sqlite_partitions('data').items())
        cls.server = StoreServer(config, workers=1)
        cls.server.start()
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def worker_pid(self):
        return self.server.worker_pids()[0]

    def peak_rss(self, pid):
        for line in open('/proc/%d/status' % pid):
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=120)
        conn.request(method, path, body=body, headers=headers or {})
        return conn, conn.getresponse()

    def test_a_256_mebibyte_value_streams_in_and_out_in_bounded_memory(self):
        size, piece = 256 * 1024 * 1024, pattern(1024 * 1024, 256)
        self.request('GET', '/')[1].read()  # the worker has started and served once
        worker = self.worker_pid()
        before = self.peak_rss(worker)

        def body():
            for _ in range(size // len(piece)):
                yield piece
        conn, response = self.request('PUT', '/buckets/big/keys/v', body=body(),
                                      headers={'Content-Type': 'application/x-blob',
                                               'Content-Length': str(size)})
        self.assertEqual(response.status, 201, response.read())
        response.read()
        conn, response = self.request('GET', '/buckets/big/keys/v')
        self.assertEqual(int(response.getheader('Content-Length')), size)
        digest, received = hashlib.sha256(), 0
        while True:
            data = response.read(1024 * 1024)
            if not data:
                break
            digest.update(data)
            received += len(data)
        self.assertEqual(received, size)
        expected = hashlib.sha256()
        for data in body():
            expected.update(data)
        self.assertEqual(digest.hexdigest(), expected.hexdigest())
        grown = self.peak_rss(worker) - before
        # A few chunks of 1 MiB in flight, not the value: far below its 256 MiB.
        self.assertLess(grown, 48 * 1024 * 1024, 'peak RSS grew by %d MiB' % (grown // 2 ** 20))

    def half_upload(self, path):
        """Store 'old' at path, then start replacing it with 8 MiB and send 3:
        the socket of the upload left hanging."""
        conn, response = self.request('PUT', path, body=b'old', headers={'Content-Type': 'text/plain'})
        self.assertEqual(response.status, 201)
        sock = socket.create_connection(('127.0.0.1', self.port))
        sock.sendall(b'PUT %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/plain\r\n'
                     b'Content-Length: %d\r\n\r\n' % (path.encode(), self.port, 8 * 1024 * 1024))
        sock.sendall(b'n' * (3 * 1024 * 1024))
        return sock

    def test_an_upload_cut_off_midway_leaves_the_old_value(self):
        sock = self.half_upload('/buckets/cut/keys/v')
        sock.close()
        time.sleep(1)
        conn, response = self.request('GET', '/buckets/cut/keys/v')
        self.assertEqual((response.status, response.read()), (200, b'old'))

    def test_a_worker_killed_midway_leaves_the_old_value(self):
        sock = self.half_upload('/buckets/killed/keys/v')
        time.sleep(0.5)
        os.kill(self.worker_pid(), signal.SIGKILL)
        sock.close()
        deadline = time.monotonic() + 30
        while True:   # the master starts a new worker
            try:
                conn, response = self.request('GET', '/buckets/killed/keys/v')
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.assertEqual((response.status, response.read()), (200, b'old'))

    def test_a_body_announced_too_large_is_refused_before_it_is_sent(self):
        sock = socket.create_connection(('127.0.0.1', self.port), timeout=10)
        sock.sendall(b'PUT /buckets/huge/keys/v HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/plain\r\n'
                     b'Expect: 100-continue\r\nContent-Length: %d\r\n\r\n' % (self.port, 2 ** 40))
        answer = b''
        while b'413' not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
        sock.close()
        self.assertIn(b' 413 ', answer)
