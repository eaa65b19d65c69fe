"""The pages a person reads (HTML linked index -> buckets -> bucket -> keys ->
record and back, the cluster page) and the cluster documents behind them:
GET /cluster and GET /cluster/locate.  In process over SQLite, then in a
real headless browser against the real server."""
import base64
import hashlib
import html.parser
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import zlib

from kvstore.coordinator import gossip
from kvstore.coordinator.ring import key_point
from test import support
from test.mariadb import shared_cluster
from test.mariadb_grants import drop_user, without_privilege
from test.server import REPO, StoreServer
from test.test_access import SECRET, token_section
from test.test_server import CONFIGURATION

HTML = {'Accept': 'text/html'}
HOSTILE = ('<img src=x onerror=alert(1)>', '"\'><script>alert(1)</script>')
ARTIFACTS = os.path.join(REPO, 'test-artifacts')


def solid_png(width, height, rgb):
    """An 8-bit RGB PNG of one colour."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    rows = b''.join(b'\x00' + bytes(rgb) * width for _ in range(height))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


PNG = solid_png(64, 48, (255, 0, 0))


class Page(html.parser.HTMLParser):
    """What a page holds that a test looks at: links (href, rel, text), tags with their attributes, text."""

    def __init__(self, text):
        super().__init__()
        self.links, self.tags, self.texts, self.anchor = [], [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == 'a' and 'href' in attrs:
            self.anchor = [attrs['href'], attrs.get('rel'), '']
            self.links.append(self.anchor)

    def handle_endtag(self, tag):
        if tag == 'a':
            self.anchor = None

    def handle_data(self, data):
        self.texts.append(data)
        if self.anchor is not None:
            self.anchor[2] += data

    def hrefs(self):
        return [href for href, _, _ in self.links]

    def rel(self, name):
        return next((href for href, rel, _ in self.links if rel == name), None)

    def linked(self, texts):
        """The links' texts that are among texts, in page order."""
        return [text for _, _, text in self.links if text in texts]

    def text(self):
        return ''.join(self.texts)


def record_path(bucket, key):
    return '/buckets/%s/keys/%s?as=record' % (bucket, urllib.parse.quote(key, safe='/'))


class PagesOnSQLite(support.OnSQLite, support.StoreSpecification, unittest.TestCase):
    def put(self, key, body=b'v', content_type='text/plain'):
        return self.app.put('/buckets/%s/keys/%s' % (self.bucket, urllib.parse.quote(key, safe='')), body,
                            headers={'Content-Type': content_type})

    def page(self, path, status=200):
        response = self.app.get(path, headers=HTML, status=status)
        self.assertTrue(response.headers['Content-Type'].startswith('text/html'), path)
        return Page(response.text)

    def test_every_page_links_to_its_neighbours(self):
        self.put('k')
        record = record_path(self.bucket, 'k')
        listing = '/buckets/%s/keys' % self.bucket
        bucket = '/buckets/%s' % self.bucket
        expected = {'/': ['/buckets', '/cluster'], '/buckets': [bucket, '/cluster', '/'],
                    bucket: [listing, '/buckets', '/'], listing: [record, bucket, '/buckets', '/'],
                    record: ['/buckets/%s/keys/k' % self.bucket, listing, bucket, '/cluster/locate?bucket=%s&key=k'
                             % self.bucket, '/'],
                    '/cluster': ['/', '/buckets'],
                    '/cluster/locate?bucket=%s&key=k' % self.bucket: [record, listing, '/cluster']}
        for path, neighbours in expected.items():
            hrefs = self.page(path).hrefs()
            for neighbour in neighbours:
                self.assertIn(neighbour, hrefs, 'the page %s links to %s' % (path, neighbour))
                self.app.get(neighbour, headers=HTML)   # and each link leads somewhere

    def test_the_listing_pages_link_next_and_previous_both_ways(self):
        keys = ['k%02d' % i for i in range(8)]
        for key in keys:
            self.put(key)
        pages, path = [], '/buckets/%s/keys?limit=3' % self.bucket
        while path:
            page = self.page(path)
            pages.append(page.linked(keys))
            path = page.rel('next')
        self.assertEqual(pages, [keys[0:3], keys[3:6], keys[6:8]])
        # And back, from the last page.
        back, path = [], page.rel('prev')
        while path:
            page = self.page(path)
            back.append(page.linked(keys))
            path = page.rel('prev')
        self.assertEqual(back, [keys[3:6], keys[0:3]])
        # JSON clients get the same: previous_cursor and Link rel="prev".
        second = self.app.get('/buckets/%s/keys?limit=3&cursor=%s' % (
            self.bucket, self.app.get('/buckets/%s/keys?limit=3' % self.bucket).json['next_cursor']))
        self.assertIn('rel="prev"', second.headers['Link'])
        first = self.app.get('/buckets/%s/keys?limit=3&before=%s' % (self.bucket, second.json['previous_cursor']))
        self.assertEqual((first.json['keys'], first.json['previous_cursor']), (keys[0:3], None))
        for query in ('cursor=%s&before=%s' % (second.json['next_cursor'], second.json['previous_cursor']),
                      'before=not-a-cursor!'):
            self.assertEqual(self.app.get('/buckets/%s/keys?%s' % (self.bucket, query), status=400).json['code'],
                             'bad_parameter')

    def assertInert(self, page, hostile):
        """The hostile text is on the page as text, and made no element of its own."""
        self.assertIn(hostile, page.text())
        self.assertNotIn('script', [tag for tag, _ in page.tags])
        for tag, attrs in page.tags:
            self.assertNotIn('onerror', attrs, (tag, attrs))
            if tag == 'img':
                self.assertNotEqual(attrs.get('src'), 'x')

    def test_hostile_keys_are_text_on_every_page(self):
        for key in HOSTILE:
            self.put(key, body=key.encode())
        listing = self.app.get('/buckets/%s/keys' % self.bucket, headers=HTML)
        for header, value in (('Content-Security-Policy', 'sandbox allow-forms'), ('X-Content-Type-Options', 'nosniff')):
            self.assertEqual(listing.headers[header], value)
        for key in HOSTILE:
            self.assertInert(Page(listing.text), key)
            for path in (record_path(self.bucket, key),
                         '/cluster/locate?' + urllib.parse.urlencode({'bucket': self.bucket, 'key': key})):
                self.assertInert(self.page(path), key)
            # A link to a hostile key leads to that key's record.
            page = self.page('/buckets/%s/keys' % self.bucket)
            self.assertIn(record_path(self.bucket, key), page.hrefs())

    def test_a_record_page_links_the_raw_value_and_shows_an_image_inline(self):
        self.put('picture.png', PNG, 'image/png')
        raw = '/buckets/%s/keys/picture.png' % self.bucket
        page = self.page(record_path(self.bucket, 'picture.png'))
        self.assertIn(raw, page.hrefs())
        self.assertIn(('img', {'class': 'value', 'src': raw, 'alt': 'picture.png'}), page.tags)
        self.assertNotIn(base64.b64encode(PNG).decode(), self.app.get(record_path(self.bucket, 'picture.png'),
                                                                      headers=HTML).text)
        self.assertEqual(self.app.get(raw).body, PNG)   # what the <img> loads
        # Without ?as=record the same Accept gets the value's bytes, as before.
        self.assertEqual(self.app.get(raw, headers={'Accept': 'text/html,*/*;q=0.8'}).body, PNG)
        self.assertEqual(self.app.get(raw + '?as=bytes', status=400).json['code'], 'bad_parameter')

    def test_locate_names_owners_fallbacks_and_what_each_holds(self):
        receipt = self.put('where').json
        doc = self.app.get('/cluster/locate?bucket=%s&key=where' % self.bucket).json
        self.assertEqual(set(doc), {'bucket', 'key', 'point', 'owners', 'fallbacks', 'replicas'})
        self.assertEqual((doc['bucket'], doc['key'], doc['point']), (self.bucket, 'where', key_point(self.bucket,
                                                                                                      'where')))
        self.assertEqual(doc['owners'], receipt['preference_list'])
        self.assertEqual(sorted(doc['owners'] + doc['fallbacks']), sorted(self.partitions))
        self.assertEqual(list(doc['replicas']), doc['owners'] + doc['fallbacks'])
        for name in doc['owners']:
            replica = doc['replicas'][name]
            self.assertEqual(replica['state'], 'ok')
            [version] = replica['versions']
            self.assertEqual((version['etag'], version['deleted'], version['size'], version['clock']),
                             (receipt['etag'], False, 1, receipt['clock']))
            self.assertEqual(version['sha256'], hashlib.sha256(b'v').hexdigest())
            self.assertRegex(version['modified'], r'\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z')
        for name in doc['fallbacks']:
            self.assertEqual(doc['replicas'][name], {'state': 'ok', 'versions': []})
        down = doc['owners'][1]
        self.store.health.failed(down, 'a test says so')
        try:
            doc = self.app.get('/cluster/locate?bucket=%s&key=where' % self.bucket).json
            self.assertEqual(doc['replicas'][down], {'state': 'down'})
        finally:
            self.store.health.succeeded(down)

    def test_locate_without_a_bucket_or_key_is_400(self):
        for query, code in (('', 'bad_parameter'), ('bucket=b', 'bad_parameter'), ('key=k', 'bad_parameter'),
                            ('bucket=&key=k', 'bad_parameter'), ('bucket=Bad!&key=k', 'bad_bucket'),
                            ('bucket=b&key=' + 'x' * 2000, 'bad_key'), ('bucket=b&key=%FF', 'bad_parameter')):
            response = self.app.get('/cluster/locate?' + query, status=400)
            self.assertEqual((response.json['code'], response.json['status']), (code, 400), query)
            self.assertTrue(response.json['message'])

    def test_the_cluster_page_draws_the_ring_coloured_by_health(self):
        down = 'p3'
        self.store.health.failed(down, 'a test says so')
        try:
            page = self.page('/cluster')
        finally:
            self.store.health.succeeded(down)
        arcs = [attrs for tag, attrs in page.tags if tag == 'path']
        self.assertEqual(len(arcs), 4)
        self.assertEqual(sorted(a['stroke'] for a in arcs), ['#2e8b57'] * 3 + ['#c0392b'])
        self.assertIn('p3: down', page.text())


class ClusterCounts(support.StoreSpecification):
    """A store of its own (keys, bytes and pending markers are counted once a
    minute), with this test the only one to ask for /cluster."""

    def test_the_cluster_document_counts_and_dates_what_it_reports(self):
        for i in range(6):
            self.app.put('/buckets/%s/keys/c%d?w=all' % (self.bucket, i), b'12345',
                         headers={'Content-Type': 'text/plain'})
        doc = self.app.get('/cluster').json
        partitions = {p['name']: p for p in doc['partitions']}
        self.assertAlmostEqual(sum(p['share'] for p in partitions.values()), 1.0, places=3)
        self.assertTrue(all(0.1 < p['share'] < 0.4 for p in partitions.values()), partitions)
        for name, engine in self.store.engines.items():
            held = engine.usage()
            self.assertEqual((partitions[name]['keys'], partitions[name]['bytes']), (held['keys'], held['bytes']), name)
        self.assertEqual(sum(p['keys'] for p in partitions.values()), 6 * 3)
        self.assertEqual(sum(p['bytes'] for p in partitions.values()), 6 * 5 * 3)
        for p in partitions.values():
            self.assertEqual(p['state'], 'up')
            self.assertEqual(p['observer'], doc['front_end'])
            self.assertLess(p['observed_seconds_ago'], 60)
            self.assertIsInstance(p['pending'], int)
        self.assertIn('sync', doc)
        self.assertIn('state', doc['rebalance'])
        self.assertEqual(set(doc['ring']), {'vnodes', 'digest'})


class ClusterCountsOnSQLite(support.OnSQLite, ClusterCounts, unittest.TestCase):
    pass


class ClusterCountsOnMariaDB(support.OnMariaDB, ClusterCounts, unittest.TestCase):
    pass


class GossipObserver(support.OnSQLite, support.StoreSpecification, unittest.TestCase):
    store_sections = {'cluster': {'secret': SECRET}}

    def test_an_observation_from_gossip_keeps_its_maker_and_age(self):
        observed = time.time() - 5
        body = json.dumps({'partitions': {'p2': {'state': 'down', 'since': observed, 'observed': observed,
                                                 'last_error': 'refused', 'observer': 'fe-2:8080/77'}}}).encode()
        self.app.post('/cluster/gossip', body, headers=dict(
            gossip.signed_headers(SECRET, gossip.REQUEST, 'localhost:80', body), **{'Content-Type': 'application/json'}))
        p2 = {p['name']: p for p in self.app.get('/cluster').json['partitions']}['p2']
        self.assertEqual((p2['state'], p2['observer'], p2['last_error']), ('down', 'fe-2:8080/77', 'refused'))
        self.assertGreaterEqual(p2['observed_seconds_ago'], 5)
        self.assertLess(p2['observed_seconds_ago'], 60)


TOKENS = {'reader': 'read:open-*', 'admin': 'admin:*'}


class LocateNeedsRead(support.OnSQLite, support.StoreSpecification, unittest.TestCase):
    store_sections = {'token-%s' % name: token_section('tok-' + name, roles) for name, roles in TOKENS.items()}

    def test_locate_needs_read_on_its_bucket(self):
        for bucket in ('open-1', 'closed-1'):
            self.app.put('/buckets/%s/keys/k' % bucket, b'v', headers={
                'Content-Type': 'text/plain', 'Authorization': 'Bearer tok-admin'})
        for bucket, token, status in (('open-1', 'reader', 200), ('closed-1', 'reader', 403),
                                      ('closed-1', None, 401), ('closed-1', 'admin', 200)):
            headers = {'Authorization': 'Bearer tok-' + token} if token else {}
            response = self.app.get('/cluster/locate?bucket=%s&key=k' % bucket, headers=headers, status='*')
            self.assertEqual(response.status_int, status, (bucket, token))
            if status == 200:
                self.assertTrue(response.json['replicas'])
            else:
                self.assertNotIn('replicas', response.json)


# -- a real browser ------------------------------------------------------------------

def png_pixels(path):
    """(width, height, [(r, g, b)]) of an 8-bit RGB or RGBA PNG, such as Chromium's screenshots."""
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
    pos, chunks = 8, {}
    while pos < len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        chunks.setdefault(kind, []).append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    width, height, depth, colour = struct.unpack('>IIBB', chunks[b'IHDR'][0][:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    step = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b''.join(chunks[b'IDAT'])), width * step
    rows, previous, pos = [], bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[pos], bytearray(raw[pos + 1:pos + 1 + stride])
        pos += 1 + stride
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up, corner = previous[i], previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(line)
        previous = line
    return width, height, [tuple(row[i:i + 3]) for row in rows for i in range(0, stride, step)]


class Browser:
    """Headless Chromium against cls.server (serve.py), its screenshots kept in test-artifacts/."""

    @classmethod
    def find_browser(cls):
        cls.browser = shutil.which('chromium') or shutil.which('chromium-browser')
        if cls.browser is None:
            raise unittest.SkipTest('chromium is not installed (make browser, or apt-get install chromium)')
        cls.profile = tempfile.mkdtemp(prefix='kvstore-chromium-')
        os.makedirs(ARTIFACTS, exist_ok=True)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()
        shutil.rmtree(cls.profile, ignore_errors=True)

    def chromium(self, path, *options):
        result = subprocess.run(
            [self.browser, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
             '--user-data-dir=' + self.profile, '--virtual-time-budget=3000', *options,
             'http://127.0.0.1:%d%s' % (self.server.port, path)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
        return result.stdout.decode('utf-8')

    def screenshot(self, name, path, size=(1200, 900)):
        shot = os.path.join(ARTIFACTS, name)
        if os.path.exists(shot):
            os.remove(shot)
        self.chromium(path, '--screenshot=' + shot, '--window-size=%d,%d' % size)
        print('screenshot: %s' % shot)
        return png_pixels(shot)


class InABrowser(Browser, unittest.TestCase):
    """It follows the listing's links; screenshots of the cluster page and a listing."""

    @classmethod
    def setUpClass(cls):
        cls.find_browser()
        cls.server = StoreServer.running(CONFIGURATION, workers=1, threads=4)

    def put(self, key, body=b'v', content_type='text/plain', bucket='pages'):
        conn = self.server.connect()
        try:
            conn.request('PUT', '/buckets/%s/keys/' % bucket + urllib.parse.quote(key, safe=''), body,
                         {'Content-Type': content_type})
            self.assertEqual(conn.getresponse().status, 201)
        finally:
            conn.close()

    def test_a_person_pages_through_a_listing_and_sees_the_ring(self):
        keys = sorted(['key-%02d' % i for i in range(5)] + list(HOSTILE))
        for key in keys:
            self.put(key)
        seen, paths, path = [], [], '/buckets/pages/keys?limit=3'
        while path:
            dom = Page(self.chromium(path, '--dump-dom'))   # the page as the browser built it
            self.assertNotIn('script', [tag for tag, _ in dom.tags])
            self.assertFalse([attrs for _, attrs in dom.tags if 'onerror' in attrs])
            seen += dom.linked(keys)
            paths.append(path)
            path = dom.rel('next')
        self.assertEqual(seen, keys)
        self.assertEqual(len(paths), 3)
        width, height, _ = self.screenshot('listing.png', paths[1])   # a page with both neighbours
        self.assertEqual((width, height), (1200, 900))
        self.put('picture.png', PNG, 'image/png')
        _, _, pixels = self.screenshot('record.png', '/buckets/pages/keys/picture.png?as=record')
        self.assertGreaterEqual(pixels.count((255, 0, 0)), 64 * 48, 'the image is shown on its record page')
        width, height, pixels = self.screenshot('cluster.png', '/cluster')
        self.assertEqual((width, height), (1200, 900))
        # The ring is drawn: its arcs are green (every partition is up).
        green = sum(1 for pixel in pixels if pixel == (0x2e, 0x8b, 0x57))
        self.assertGreater(green, 10000, 'the ring of arcs is on the screenshot')


    def test_a_person_browses_keys_by_folder_with_their_details_and_searches_on_a_phone(self):
        for key, body, content_type in (('photos/2024/paris/eiffel tower.jpg', PNG, 'image/png'),
                                        ('photos/2024/rome.jpg', PNG, 'image/png'),
                                        ('photos/readme.txt', b'what is here', 'text/plain'),
                                        ('photos/2023/' + 'a-very-long-file-name-' * 6 + '.txt', b'x', 'text/plain')):
            self.put(key, body, content_type, bucket='browsed')
        top = Page(self.chromium('/buckets/browsed/keys?prefix=photos/&delimiter=/', '--dump-dom'))
        folders = [href for href in top.hrefs() if 'delimiter=' in href and 'prefix=photos%2F20' in href]
        self.assertEqual(sorted(urllib.parse.parse_qs(urllib.parse.urlsplit(h).query)['prefix'][0] for h in folders),
                         ['photos/2023/', 'photos/2024/'])
        self.assertIn('12 bytes', top.text())   # readme.txt's size,
        self.assertIn('text/plain', top.text())  # type
        form = [attrs for tag, attrs in top.tags if tag == 'form']
        self.assertEqual(form, [{'method': 'get', 'action': '/buckets/browsed/keys', 'role': 'search'}])
        self.assertIn(('input', {'type': 'search', 'name': 'prefix', 'value': 'photos/'}), top.tags)
        # The folder one level down, as its link leads, and the search's answer (a GET of the form).
        down = Page(self.chromium(next(h for h in folders if '2024' in h), '--dump-dom'))
        self.assertEqual(down.linked(['paris/', 'rome.jpg']), ['paris/', 'rome.jpg'])
        searched = Page(self.chromium('/buckets/browsed/keys?prefix=photos%2F2024%2Fr&delimiter=%2F', '--dump-dom'))
        self.assertEqual(searched.linked(['rome.jpg']), ['rome.jpg'])
        self.screenshot('keys-by-folder.png', '/buckets/browsed/keys?prefix=photos/&delimiter=/')
        # On a phone's width nothing is cut off at the right edge (a table too wide would be).
        for name, path in (('keys-phone.png', '/buckets/browsed/keys?prefix=photos/2023/&delimiter=/'),
                           ('cluster-phone.png', '/cluster')):
            width, height, pixels = self.screenshot(name, path, size=(390, 844))
            self.assertEqual(width, 390)
            edge = [pixels[y * width + x] for y in range(height) for x in range(width - 6, width)]
            self.assertEqual(set(edge), {(255, 255, 255)}, '%s: the page is wider than the screen' % name)


class ClusterPageWhilePartitionsFail(Browser, unittest.TestCase):
    """The cluster page over real MariaDB servers while one is down (killed),
    one hangs (SIGSTOP) and one refuses writes by its grants: the page the
    operator opens then answers, and its ring shows each in red."""

    states = {'p1': 'refusing', 'p2': 'down', 'p3': 'paused'}

    @classmethod
    def setUpClass(cls):
        cls.find_browser()
        cls.cluster = shared_cluster()
        cls.user = 'refusing_%d' % os.getpid()
        partitions = support.mariadb_partitions(cls.cluster)
        partitions['p1'].update(without_privilege(cls.cluster[0], cls.user, 'UPDATE'))
        cls.server = StoreServer.running(support.config_text(partitions, connect_timeout=0.5, read_timeout=1.0,
                                                             backoff=30, max_backoff=60),
                                         workers=1, threads=4)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shared_cluster()   # restarts the killed server, resumes the paused one
        drop_user(cls.cluster[0], cls.user)

    def request(self, method, path, body=None):
        conn = self.server.connect()
        try:
            conn.request(method, path, body, {'Content-Type': 'text/plain'} if body is not None else {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def test_the_cluster_page_answers_and_colours_each_failing_partition(self):
        # Writes (refused by p1's grants), then reads (which find p2 and p3 failing) tell the front end.
        for i in range(12):
            self.assertEqual(self.request('PUT', '/buckets/failing/keys/k%d' % i, b'v')[0], 201)
        self.cluster[1].kill()
        self.cluster[2].pause()
        for i in range(12):
            self.request('GET', '/buckets/failing/keys/k%d?r=3' % i)
        status, body = self.request('GET', '/cluster')
        partitions = {p['name']: p for p in json.loads(body)['partitions']}
        self.assertEqual({name: partitions[name]['state'] for name in self.states}, dict.fromkeys(self.states, 'down'))
        self.assertIn('refused by its grants', partitions['p1']['last_error'])
        dom = Page(self.chromium('/cluster', '--dump-dom'))
        self.assertIn('The cluster', dom.text())
        arcs = {attrs['stroke'] for tag, attrs in dom.tags if tag == 'path'}
        self.assertEqual(arcs, {'#2e8b57', '#c0392b'})
        self.assertIn('refused by its grants', dom.text())
        width, height, pixels = self.screenshot('cluster-failing.png', '/cluster')
        red = sum(1 for pixel in pixels if pixel == (0xc0, 0x39, 0x2b))
        green = sum(1 for pixel in pixels if pixel == (0x2e, 0x8b, 0x57))
        self.assertGreater(red, 2 * green, 'three partitions of four are red on the ring')
