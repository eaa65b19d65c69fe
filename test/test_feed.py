"""The change feed (GET /buckets/B/changes) on real MariaDB partitions behind
the real server (serve.py: Granian and its gateway).

- Followed with a cursor while writers write and the chaos test's faults
  happen (worker kills, a partition paused, another killed and restarted, a
  front end's path to a partition black-holed so that the coordinator's
  answers are lost), every acknowledged (key, ETag) is delivered, and each
  key's versions come in causal order (every write is sent with the context
  of the one before it, so it supersedes it).
- A cursor older than the retention (sync.py gc trimmed its changes) is 410
  cursor_expired, never a partial page; forged, cut and other buckets'
  cursors are 400 bad_cursor.
- A Server-Sent Events client (requests, read line by line) resumes with
  Last-Event-ID after the server restarts and misses nothing.
"""
import base64
import collections
import http.client
import json
import os
import random
import tempfile
import threading
import time
import unittest
import uuid

import requests

from kvstore.coordinator.ring import Ring
from test import support
from test.mariadb import shared_cluster
from test.server import StoreServer
from test.sync_support import run_command
from test.test_chaos import STORE, UNKNOWN, Client, Faults, send_until_known

FEED = {'feed': {'poll_interval': 0.1}}
CHAOS_SECONDS = 25.0
CATCH_UP_SECONDS = 120.0      # how long the follower may take, once all is quiet, to deliver every write
WRITERS, KEYS_EACH = 4, 6
BUCKET = 'feed-chaos'


def feed_path(bucket, **params):
    return '/buckets/%s/changes' % bucket + ('?' + '&'.join('%s=%s' % kv for kv in params.items()) if params else '')


class TestFeedFollowsThroughChaos(Faults, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.cluster = shared_cluster(4)
        cls.partitions = support.mariadb_partitions(cls.cluster)
        ring = Ring.of(support.build_config(cls.partitions, **STORE))
        first = ring.preference_list(BUCKET, 'w0-0', 3)[0]
        cls.paused = cls.cluster[int(first[1:]) - 1]                 # paused, and black-holed for B
        cls.killed = next(s for s in cls.cluster if s is not cls.paused)   # killed and restarted
        cls.start_front_ends(first, FEED, workers=2, threads=4)

    def setUp(self):
        self.stop = threading.Event()
        self.errors, self.unexpected = [], []
        self.faults = collections.Counter()
        self.chains = collections.defaultdict(list)   # key: the ETags acknowledged, in the order written
        self.delivered = []                           # (key, ETag) as the follower got them
        config = tempfile.NamedTemporaryFile('w', suffix='.cfg', delete=False)
        with config:
            config.write(support.config_text(self.partitions, **STORE))
        self.sync_config = config.name
        self.addCleanup(os.remove, config.name)

    def write(self, name, port, stats, deadline):
        """PUTs of this writer's keys, each with the context of its last
        acknowledged write (so each supersedes the one before) and an
        Idempotency-Key, repeated until its outcome is known."""
        client, contexts = Client(port), {}
        rng = random.Random()
        while time.monotonic() < deadline:
            key = '%s-%d' % (name, rng.randrange(KEYS_EACH))
            headers = {'Content-Type': 'text/plain', 'Idempotency-Key': '"%s"' % uuid.uuid4()}
            if key in contexts:
                headers['X-Context'] = contexts[key]
            status, response, body = send_until_known(client, 'PUT', '/buckets/%s/keys/%s' % (BUCKET, key),
                                                      uuid.uuid4().hex.encode(), headers, stats, 'writes',
                                                      deadline + 30)
            if status in (200, 201):
                self.chains[key].append(response.getheader('ETag'))
                contexts[key] = response.getheader('X-Context')
                stats['acknowledged'] += 1
            elif status != UNKNOWN:
                self.unexpected.append('PUT %s: %s %r' % (key, status, body[:300]))
            time.sleep(0.02)
        client.close()

    def follow(self, cursor, done):
        """Long polls of the feed from either front end, the cursor kept across failures."""
        clients = [Client(s.port) for s in self.servers]
        turn = 0
        while not done.is_set():
            turn += 1
            try:
                status, _, body = clients[turn % 2].request('GET', feed_path(BUCKET, since=cursor, wait=1,
                                                                              limit=200))
            except (OSError, http.client.HTTPException):
                time.sleep(0.1)
                continue
            if status >= 500:
                time.sleep(0.1)
                continue
            if status != 200:
                self.unexpected.append('GET changes: %d %r' % (status, body[:300]))
                return
            page = json.loads(body)
            self.delivered.extend((c['key'], c['etag']) for c in page['changes'])
            cursor = page['cursor']
        for client in clients:
            client.close()

    # -- faults (and Faults')
    def pause_a_partition(self, rng):
        self.paused.pause()
        try:
            self.stop.wait(1.5)
        finally:
            self.paused.resume()

    def kill_a_partition(self, rng):
        self.killed.kill()
        self.stop.wait(2.0)
        self.killed.restart()

    def black_hole_b(self, rng):
        self.proxy.black_hole()
        try:
            self.stop.wait(rng.uniform(2.0, 3.0))
        finally:
            self.proxy.heal()

    def test_every_acknowledged_write_is_delivered_in_causal_order(self):
        status, _, body = Client(self.servers[0].port).request('GET', feed_path(BUCKET))
        self.assertEqual(status, 200, body)
        follower_done = threading.Event()
        follower = threading.Thread(target=self.guarded(self.follow, json.loads(body)['cursor'], follower_done))
        follower.start()
        stats = [collections.Counter() for _ in range(WRITERS)]
        deadline = time.monotonic() + CHAOS_SECONDS
        writers = [threading.Thread(target=self.guarded(self.write, 'w%d' % i, self.servers[i % 2].port, stats[i],
                                                        deadline)) for i in range(WRITERS)]
        faults = [threading.Thread(target=self.guarded(self.repeat, name, interval, fault))
                  for name, interval, fault in (('worker kills', (1.0, 2.0), self.kill_a_worker),
                                                ('pauses', (3.0, 5.0), self.pause_a_partition),
                                                ('partition kills', (6.0, 9.0), self.kill_a_partition),
                                                ('black holes', (3.0, 5.0), self.black_hole_b))]
        try:
            for thread in writers + faults:
                thread.start()
            for thread in writers:
                thread.join(CHAOS_SECONDS + 90)
        finally:
            self.stop.set()
            for thread in faults:
                thread.join(60)
            self.paused.resume()
            self.proxy.heal()
            if not self.killed.is_running():
                self.killed.restart()
        # Quiet: hints and lazy writes go on through sync.py; the follower catches up.
        result = run_command(self.sync_config)
        self.assertIn(result.returncode, (0, 1), result.stderr[-2000:])
        acknowledged = {(key, etag) for key, etags in self.chains.items() for etag in etags}
        support.wait_until(lambda: acknowledged <= set(self.delivered), CATCH_UP_SECONDS, 0.5)
        follower_done.set()
        follower.join(30)
        self.assertEqual(self.errors, [])
        self.assertEqual(self.unexpected[:10], [])

        first = {}
        for i, delivered in enumerate(self.delivered):
            first.setdefault(delivered, i)
        missing = sorted(acknowledged - set(first))
        out_of_order = ['%s: %s before %s' % (key, later, earlier) for key, etags in self.chains.items()
                        for earlier, later in zip(etags, etags[1:])
                        if (key, earlier) in first and (key, later) in first
                        and first[key, later] < first[key, earlier]]
        print('feed: %d writes acknowledged, %d deliveries (%d distinct), %d missing, %d out of causal order; '
              'faults: %s' % (len(acknowledged), len(self.delivered), len(first), len(missing), len(out_of_order),
                              ', '.join('%d %s' % (n, name) for name, n in sorted(self.faults.items()))))
        self.assertEqual(missing[:10], [])
        self.assertEqual(out_of_order[:10], [])
        self.assertEqual(sorted(self.faults), ['black holes', 'partition kills', 'pauses', 'worker kills'])
        self.assertGreater(len(acknowledged), 100)


class TestFeedCursors(unittest.TestCase):
    """Trimming, bad cursors and an SSE client's resume, on one server over MariaDB."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = shared_cluster(4)
        cls.partitions = support.mariadb_partitions(cls.cluster)
        cls.server = StoreServer.running(support.config_text(cls.partitions, FEED, **STORE), workers=1, threads=4)
        cls.base = 'http://127.0.0.1:%d' % cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def put(self, bucket, key, value=None):
        response = requests.put('%s/buckets/%s/keys/%s' % (self.base, bucket, key), data=value or uuid.uuid4().hex,
                                headers={'Content-Type': 'text/plain'}, timeout=10)
        self.assertIn(response.status_code, (200, 201), response.text)
        return response.headers['ETag']

    def page(self, bucket, **params):
        return requests.get(self.base + feed_path(bucket, **params), timeout=30)

    def test_a_cursor_older_than_the_retention_is_gone(self):
        bucket = support.unique('trim')
        old = self.page(bucket).json()['cursor']
        written = [self.put(bucket, 'k%d' % i) for i in range(5)]
        self.assertEqual([c['etag'] for c in self.page(bucket, since=old).json()['changes']], written)
        # gc with a retention of one change per partition trims what the old cursor points into
        config = os.path.join(self.server.directory, 'trim.cfg')
        with open(config, 'w') as f:
            f.write(support.config_text(self.partitions, {'feed': {'max_rows': 1}}, **STORE))
        result = run_command(config, 'gc')
        self.assertIn(result.returncode, (0, 1), result.stderr[-2000:])
        self.assertIn('changes trimmed', result.stdout + result.stderr)
        gone = self.page(bucket, since=old)
        self.assertEqual(gone.status_code, 410, gone.text)
        self.assertEqual(gone.json()['code'], 'cursor_expired')
        self.assertNotIn('changes', gone.json())   # never a partial page
        # from the oldest change kept: each partition's newest (one row each),
        # so the last write (its replicas kept it) and whichever earlier ones
        # were another partition's newest: in write order, each once.
        kept = [c['etag'] for c in self.page(bucket, since='0').json()['changes']]
        self.assertEqual(kept, [etag for etag in written if etag in kept])
        self.assertIn(written[-1], kept)

    def test_forged_cut_and_foreign_cursors_are_refused(self):
        bucket = support.unique('cursor')
        self.put(bucket, 'k')
        cursor = self.page(bucket, since='0').json()['cursor']
        other = self.page(support.unique('other')).json()['cursor']
        decoded = json.loads(base64.urlsafe_b64decode(cursor + '=' * (-len(cursor) % 4)))
        name = sorted(decoded['p'])[0]
        decoded['p'][name][1] += 1000
        forged = base64.urlsafe_b64encode(json.dumps(decoded).encode()).decode().rstrip('=')
        for bad in (cursor[:-5], forged, other, 'not-a-cursor', 'x' * 5000):
            answer = self.page(bucket, since=bad)
            self.assertEqual((answer.status_code, answer.json()['code']), (400, 'bad_cursor'), bad)
        for params in ({'limit': '0'}, {'limit': 'x'}, {'wait': '-1'}, {'wait': '1e9'}, {'since': '%FF'}):
            answer = self.page(bucket, **params)
            self.assertEqual((answer.status_code, answer.json()['code']), (400, 'bad_parameter'), params)

    def test_long_polls_hold_no_thread(self):
        """More long polls than the server has threads (4) wait, and a GET is
        answered meanwhile; a write then ends every poll with its change."""
        bucket = support.unique('poll')
        cursor = self.page(bucket).json()['cursor']
        pages = []
        polls = [threading.Thread(target=lambda: pages.append(self.page(bucket, since=cursor, wait=50)))
                 for _ in range(8)]
        for poll in polls:
            poll.start()
        time.sleep(1.0)
        answer = requests.get(self.base + '/buckets/%s/keys' % bucket, timeout=20)   # would queue behind the polls
        self.assertEqual((answer.status_code, pages), (404, []))
        etag = self.put(bucket, 'k')
        for poll in polls:
            poll.join(30)
        self.assertEqual([[c['etag'] for c in page.json()['changes']] for page in pages], [[etag]] * 8)

    def test_an_event_source_resumes_after_a_restart_and_misses_nothing(self):
        bucket = support.unique('sse')
        written, events = [self.put(bucket, 'before')], []
        last_id = self.read_events(bucket, None, events, until=lambda: len(events) >= 1, since='0')
        self.assertEqual([e['etag'] for e in events], written)
        # written while no client reads, and while the server restarts
        written += [self.put(bucket, 'while-away-%d' % i) for i in range(3)]
        self.server.stop()
        self.server.start()
        written += [self.put(bucket, 'after-%d' % i) for i in range(3)]
        more = threading.Thread(target=lambda: [time.sleep(0.5)] + [written.append(self.put(bucket, 'live-%d' % i))
                                                                    for i in range(3)])
        more.start()
        self.read_events(bucket, last_id, events, until=lambda: not more.is_alive() and
                         set(written) <= {e['etag'] for e in events})
        more.join()
        self.assertEqual(set(written) - {e['etag'] for e in events}, set())
        self.assertEqual(len({e['etag'] for e in events}), len(written))

    def read_events(self, bucket, last_event_id, events, until, since=None, timeout=30):
        """Read a stream of Server-Sent Events as an EventSource does, resuming
        with Last-Event-ID: the last id seen, once until() holds."""
        headers = {'Accept': 'text/event-stream'}
        if last_event_id:
            headers['Last-Event-ID'] = last_event_id
        url = self.base + feed_path(bucket, **({'since': since} if since else {}))
        deadline = time.monotonic() + timeout
        with requests.get(url, headers=headers, stream=True, timeout=10) as response:
            self.assertEqual(response.status_code, 200, response.text if response.status_code != 200 else '')
            self.assertTrue(response.headers['Content-Type'].startswith('text/event-stream'))
            name, data, block_id = None, [], None
            for line in response.iter_lines(decode_unicode=True):
                if line == '':   # an event ends: it is dispatched, its id becomes the last
                    if name == 'change' and data:
                        events.append(json.loads('\n'.join(data)))
                    if block_id is not None:
                        last_event_id = block_id
                        if until() or time.monotonic() > deadline:
                            return last_event_id
                    name, data, block_id = None, [], None
                elif line.startswith('event:'):
                    name = line[6:].strip()
                elif line.startswith('data:'):
                    data.append(line[5:].strip())
                elif line.startswith('id:'):
                    block_id = line[3:].strip()
        return last_event_id


if __name__ == '__main__':
    unittest.main()
