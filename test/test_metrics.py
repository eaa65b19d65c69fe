"""GET /metrics: Prometheus' text format, read with prometheus_client's own parser.

The real server (serve.py under Granian, four workers) is sent a known set of
requests over many connections, so that several workers answer them, and
its counts are compared with what the client saw.  Beside three SQLite
partitions it has one, `gone`, whose MySQL server is not there (a closed
port): every call to it fails or is refused, and writes it owns leave hints.
"""
import collections
import concurrent.futures
import hashlib
import json
import importlib.util
import os
import signal
import sqlite3
import time
import unittest

from prometheus_client.parser import text_string_to_metric_families

from test import support
from test.mariadb import shared_cluster
from test.server import StoreServer, pid_alive

PROMETHEUS_ACCEPT = ('application/openmetrics-text;version=1.0.0;q=0.6,text/plain;version=0.0.4;q=0.3,'
                     '*/*;q=0.2')
SQLITE = ('p1', 'p2', 'p3')


def gone_partition():
    """A MySQL partition nothing listens for: each connect is refused at once."""
    return {'engine': 'mysql', 'host': '127.0.0.1', 'port': support.free_port(), 'user': 'kv',
            'password': 'kv', 'database': 'kv'}


def samples(text):
    """{(sample name, ((label, value), ...)): value} of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def replica_calls_between(before, after):
    """{partition: (calls answered, calls failed, refused or timed out)} from one scrape to a later one."""
    delta = collections.defaultdict(lambda: [0, 0])
    for scrape, sign in ((after, 1), (before, -1)):
        for labels, v in labelled(scrape, 'kvstore_replica_calls_total').items():
            labels = dict(labels)
            delta[labels['partition']][labels['outcome'] != 'ok'] += sign * v
    return {partition: tuple(counts) for partition, counts in delta.items()}


def labelled(found, name):
    """{labels: value} of one sample name."""
    return {dict_labels: v for (n, dict_labels), v in found.items() if n == name}


class TestMetricsOfTheRealServer(unittest.TestCase):
    WORKERS = 4
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        partitions = {name: {'engine': 'sqlite', 'path': 'data/%s.sqlite3' % name} for name in SQLITE}
        partitions['gone'] = gone_partition()
        cls.server = StoreServer.running(support.config_text(partitions), workers=cls.WORKERS, threads=2,
                                         environment={'ACCESS_LOG': '1'})

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def scrape(self):
        conn = self.server.connect()
        try:
            conn.request('GET', '/metrics', headers={'Accept': PROMETHEUS_ACCEPT})
            response = conn.getresponse()
            body = response.read().decode()
        finally:
            conn.close()
        self.assertEqual(response.status, 200, body)
        self.assertEqual(response.getheader('Content-Type'), 'text/plain; version=0.0.4; charset=utf-8')
        return samples(body)

    def served(self, requests, connections=24):
        """Send [(method, path, body)] spread over fresh connections from 8
        threads; a Counter of (route, method, status) as the client saw them."""
        batches = [requests[i::connections] for i in range(connections)]

        def send(batch):
            seen = collections.Counter()
            conn = self.server.connect()
            try:
                for method, path, body, route in batch:
                    conn.request(method, path, body=body, headers={'Content-Type': 'text/plain'} if body else {})
                    response = conn.getresponse()
                    response.read()
                    seen[(route, 'other' if method == 'BREW' else method, str(response.status))] += 1
                    if response.getheader('Connection') == 'close':
                        conn.close()
                        conn = self.server.connect()
            finally:
                conn.close()
            return seen
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return sum(pool.map(send, batches), collections.Counter())

    def traffic(self, bucket, keys=12):
        """Requests of every route kind, method and several statuses."""
        requests = []
        for i in range(keys):
            path = '/buckets/%s/keys/k%d' % (bucket, i)
            requests += [('PUT', path, b'value %d' % i, 'key'), ('GET', path, None, 'key'),
                         ('HEAD', path, None, 'key'), ('GET', path + '-missing', None, 'key'),
                         ('PATCH', path, b'x', 'key')]
        requests += [('GET', '/', None, 'index'), ('GET', '/health', None, 'health'),
                     ('GET', '/nowhere', None, 'none'), ('GET', '/buckets/%s/keys' % bucket, None, 'keys'),
                     ('DELETE', '/buckets/%s/keys/k0' % bucket, None, 'key'), ('BREW', '/', None, 'index')] * 3
        return requests

    def http_counts(self, found):
        """{(route, method, status): count} of kvstore_http_requests_total, scrapes left out."""
        return {(labels['route'], labels['method'], labels['status']): v
                for labels, v in ((dict(k), v) for k, v in labelled(found, 'kvstore_http_requests_total').items())
                if labels['route'] != 'metrics'}

    def settled(self):
        """(a scrape, the replica calls a scrape makes) once the background
        calls of earlier writes (hints, pending markers) are over: when each
        scrape adds the same calls as the one before (its own reads of the
        partitions: hints held, sync.py's last runs)."""
        scrapes = [self.scrape(), self.scrape()]
        for _ in range(20):
            time.sleep(0.5)
            scrapes.append(self.scrape())
            cost = replica_calls_between(scrapes[-2], scrapes[-1])
            if cost == replica_calls_between(scrapes[-3], scrapes[-2]):
                return scrapes[-1], cost
        self.fail('replica calls did not settle: %s' % cost)

    def test_counts_of_every_worker_add_up_to_the_requests_sent(self):
        before = self.scrape()
        served_before = self.server.served()
        sent = self.served(self.traffic(support.unique()))
        after = self.scrape()
        counted = collections.Counter(self.http_counts(after))
        counted.subtract(self.http_counts(before))
        self.assertEqual({k: v for k, v in counted.items() if v}, dict(sent))
        self.assertIn(('key', 'PATCH', '501'), sent)   # a method no resource takes (RFC 9110 15.6.2)
        answered = [pid for pid, n in self.server.served().items() if n > served_before.get(pid, 0)]
        self.assertGreaterEqual(len(answered), 2, 'several workers answered')
        # The latency histogram counts each request once, in its +Inf bucket too.
        puts = sum(n for (route, method, _), n in sent.items() if (route, method) == ('key', 'PUT'))
        for name, labels in (('kvstore_http_request_duration_seconds_count', {}),
                             ('kvstore_http_request_duration_seconds_bucket', {'le': '+Inf'})):
            self.assertEqual(value(after, name, route='key', method='PUT', **labels)
                             - value(before, name, route='key', method='PUT', **labels), puts)
        # Scrapes are counted too: each one by the next.
        scrapes = value(after, 'kvstore_http_requests_total', route='metrics', method='GET', status='200')
        self.assertEqual(scrapes - value(before, 'kvstore_http_requests_total', route='metrics', method='GET',
                                         status='200'), 1)

    def test_replica_calls_are_counted_per_partition_by_outcome(self):
        self.served([('PUT', '/buckets/%s/keys/k%d' % (support.unique(), i), b'v', 'key') for i in range(12)])
        before, scrape_cost = self.settled()
        # A bucket listing asks every partition once (one that fails leaves out no key).
        listings = 10
        sent = self.served([('GET', '/buckets', None, 'buckets')] * listings, connections=5)
        self.assertEqual(sent, {('buckets', 'GET', '200'): listings})
        after = self.scrape()
        calls = replica_calls_between(before, after)
        for name in SQLITE:   # each call answered
            self.assertEqual(calls[name], (listings + scrape_cost[name][0], 0), name)
        self.assertEqual(calls['gone'], (0, listings + scrape_cost['gone'][1]))
        self.assertGreater(value(after, 'kvstore_replica_calls_total', partition='gone', outcome='error'), 0)
        # As the answering worker sees them (`gone` down once it has called it).
        up = {dict(k)['partition']: v for k, v in labelled(after, 'kvstore_partition_up').items()}
        self.assertEqual((up.pop('p1'), up.pop('p2'), up.pop('p3'), list(up)), (1, 1, 1, ['gone']))

    def test_every_series_of_each_partition_is_there_at_zero_before_it_counts(self):
        found = self.scrape()
        partitions = SQLITE + ('gone',)
        calls = {(dict(k)['partition'], dict(k)['outcome']) for k in labelled(found, 'kvstore_replica_calls_total')}
        self.assertLessEqual({(p, o) for p in partitions for o in ('ok', 'error', 'timeout', 'refused')}, calls)
        hints = {dict(k)['partition'] for k in labelled(found, 'kvstore_hints_stored_total')}
        self.assertLessEqual(set(partitions), hints)

    def test_the_hints_written_for_a_partition_are_those_waiting_for_it(self):
        bucket = support.unique()
        self.served([('PUT', '/buckets/%s/keys/k%d' % (bucket, i), b'v', 'key') for i in range(12)])
        found, _ = self.settled()
        stored = value(found, 'kvstore_hints_stored_total', partition='gone')
        self.assertGreater(stored, 0)
        self.assertEqual(value(found, 'kvstore_hints_waiting', partition='gone'), stored)
        for name in SQLITE:
            self.assertEqual(value(found, 'kvstore_hints_stored_total', partition=name), 0)
            self.assertEqual(value(found, 'kvstore_hints_waiting', partition=name), 0)

    def test_a_killed_worker_s_counts_stay_and_its_successor_counts_on(self):
        # The rule: a request is counted once, when its response's head is
        # ready; a worker's counts are in its own files, which outlive it.  So
        # a SIGKILL loses only requests it had not answered yet (none here).
        self.served(self.traffic(support.unique(), keys=4))
        before = self.http_counts(self.scrape())
        victim, loaded = self.server.worker_pids()[0], self.server.apps_loaded()
        os.kill(victim, signal.SIGKILL)
        self.assertTrue(support.wait_until(lambda: not pid_alive(victim) and len(self.server.worker_pids())
                                           == self.WORKERS and self.server.apps_loaded() > loaded, 15),
                        self.server.log())
        self.assertEqual(self.http_counts(self.scrape()), before)
        sent = self.served(self.traffic(support.unique(), keys=4))
        counted = collections.Counter(self.http_counts(self.scrape()))
        counted.subtract(before)
        self.assertEqual({k: v for k, v in counted.items() if v}, dict(sent))

    def test_sighup_s_new_workers_count_on_from_the_old_ones_counts(self):
        self.served(self.traffic(support.unique(), keys=2))
        old, loaded = set(self.server.worker_pids()), self.server.apps_loaded()
        before = self.http_counts(self.scrape())
        os.kill(self.server.process.pid, signal.SIGHUP)
        self.assertTrue(support.wait_until(lambda: len(set(self.server.worker_pids()) - old) == self.WORKERS
                                           and self.server.apps_loaded() >= loaded + self.WORKERS, 30),
                        self.server.log())
        self.assertEqual(self.http_counts(self.scrape()), before)


# -- in one process (no Granian), through WebTest ----------------------------------------

class TestOneFrontEndOnePicture(unittest.TestCase):
    """Issue #27: /metrics and /cluster show what the front end knows, not what
    the worker that answers happened to see (workers.py)."""

    def test_a_partition_one_worker_saw_fail_is_down_on_every_worker(self):
        partitions = {name: {'engine': 'sqlite', 'path': 'data/%s.sqlite3' % name} for name in SQLITE}
        partitions['gone'] = gone_partition()
        server = StoreServer.running(support.config_text(partitions, backoff=60, max_backoff=60),
                                     workers=3, threads=2)
        try:
            # One request, so one worker, finds 'gone' down.
            conn = server.connect()
            key = next(k for k in ('k%d' % i for i in range(100)))
            conn.request('PUT', '/buckets/one/keys/' + key, body=b'v', headers={'Content-Type': 'text/plain'})
            conn.getresponse().read()
            conn.close()
            # A scrape reads the gauge before asking the partitions for their
            # hints (which shows a worker 'gone' down by itself): so each
            # worker's first scrape says what it knew before.
            for _ in range(30):
                conn = server.connect()
                try:
                    conn.request('GET', '/metrics')
                    found = samples(conn.getresponse().read().decode())
                finally:
                    conn.close()
                self.assertEqual(value(found, 'kvstore_partition_up', partition='gone'), 0.0)
            answered_by = set()
            for _ in range(30):
                conn = server.connect()
                try:
                    conn.request('GET', '/cluster', headers={'Accept': 'application/json'})
                    document = json.loads(conn.getresponse().read())
                finally:
                    conn.close()
                answered_by.add(document['front_end'])
                states = {p['name']: p['state'] for p in document['partitions']}
                self.assertNotEqual(states['gone'], 'up', (document['front_end'], states))
            self.assertGreater(len(answered_by), 1, 'one worker answered every request')
        finally:
            server.stop()
            server.cleanup()


class InProcess(unittest.TestCase):
    """The application over three SQLite partitions and `gone`."""
    sections = {}

    def setUp(self):
        self.directory = support.TemporaryDirectory()
        self.partitions = support.sqlite_partitions(self.directory.path, count=3)
        self.partitions['gone'] = gone_partition()
        # `gone` fails when first called, then is refused for the rest of the test.
        self.store = support.open_store(self.partitions, self.sections, backoff=60)
        self.app = support.web_app(self.store)

    def tearDown(self):
        self.store.close()
        self.directory.remove()

    def scrape(self, **headers):
        response = self.app.get('/metrics', headers=headers)
        self.assertEqual(response.content_type, 'text/plain')
        return samples(response.text)

    def key_owned_by(self, bucket, partition, first):
        """A key `partition` owns, as its first owner or not."""
        for i in range(1000):
            preference, _ = self.store.placement(bucket, 'k%d' % i)
            if partition in preference and (preference[0] == partition) == first:
                return 'k%d' % i, preference
        raise AssertionError('no such key')


class TestMetricsInProcess(InProcess):
    def test_siblings_served_and_read_repairs_made(self):
        bucket = support.unique()
        key, preference = self.key_owned_by(bucket, 'gone', first=False)
        path = '/buckets/%s/keys/%s' % (bucket, key)
        before = self.scrape()
        context = self.app.put(path, b'base', headers={'Content-Type': 'text/plain'}).headers['X-Context']
        for text in (b'left', b'right'):   # both over base: siblings
            self.app.put(path, text, headers={'Content-Type': 'text/plain', 'X-Context': context})
        self.assertEqual(self.app.get(path, status=300).status_int, 300)
        self.app.get(path, headers={'Accept': 'multipart/mixed'}, status=300)
        # A replica that lost the key is sent it back by the next read.
        stale = [p for p in preference if p != 'gone'][-1]
        with sqlite3.connect(self.partitions[stale]['path']) as db:
            self.assertGreater(db.execute('DELETE FROM objects WHERE key_name = ?', (key.encode(),)).rowcount, 0)
        self.app.get(path, status=300)
        after = self.scrape()
        self.assertEqual(value(after, 'kvstore_siblings_served_total')
                         - value(before, 'kvstore_siblings_served_total'), 3)
        self.assertEqual(value(after, 'kvstore_read_repairs_total') - value(before, 'kvstore_read_repairs_total'), 2)

    def test_a_write_a_partition_misses_leaves_a_hint_counted_for_it(self):
        bucket = support.unique()
        key, _ = self.key_owned_by(bucket, 'gone', first=False)
        before = self.scrape()
        self.app.put('/buckets/%s/keys/%s' % (bucket, key), b'v', headers={'Content-Type': 'text/plain'})

        def hints_stored():   # the hint may be written after the answer (w = 2 replicas had it)
            return (value(self.scrape(), 'kvstore_hints_stored_total', partition='gone')
                    - value(before, 'kvstore_hints_stored_total', partition='gone'))
        support.wait_until(lambda: hints_stored() > 0, 5)
        self.assertEqual(hints_stored(), 1)
        after = self.scrape()
        self.assertEqual(value(after, 'kvstore_hints_waiting', partition='gone'), 1)
        calls = {outcome: value(after, 'kvstore_replica_calls_total', partition='gone', outcome=outcome)
                 - value(before, 'kvstore_replica_calls_total', partition='gone', outcome=outcome)
                 for outcome in ('ok', 'error', 'refused', 'timeout')}
        # Failed when first called (by calls at once, maybe more than one), refused after.
        self.assertEqual((calls['ok'], calls['timeout']), (0, 0))
        self.assertGreater(calls['error'], 0)
        self.assertGreater(calls['refused'], 0)
        self.assertEqual(value(after, 'kvstore_partition_up', partition='gone'), 0)
        self.assertEqual(value(after, 'kvstore_partition_up', partition='p1'), 1)
        idle = {dict(k)['partition'] for k, v in labelled(after, 'kvstore_pool_connections').items()
                if dict(k)['state'] == 'idle' and v > 0}
        self.assertEqual(idle, {'p1', 'p2', 'p3'})

    def test_a_read_is_one_call_to_each_replica_read(self):
        bucket = support.unique()
        key = next('k%d' % i for i in range(1000) if 'gone' not in self.store.placement(bucket, 'k%d' % i)[0])
        owners = self.store.placement(bucket, key)[0]
        path = '/buckets/%s/keys/%s' % (bucket, key)
        self.app.put(path + '?w=all', b'v', headers={'Content-Type': 'text/plain'})
        self.app.get(path)   # the bucket's properties are read once, then cached
        first, second = self.scrape(), self.scrape()
        scrape_cost = replica_calls_between(first, second)
        self.app.get(path + '?r=3')   # sent to the three owners at once, then each answer read
        calls = replica_calls_between(second, self.scrape())
        # (The counters are this process's: other tests' stores had partitions of these names too.)
        self.assertEqual({p: (calls[p][0] - scrape_cost[p][0], calls[p][1] - scrape_cost[p][1])
                          for p in self.partitions}, {p: (1 if p in owners else 0, 0) for p in self.partitions})

    @unittest.skipUnless(importlib.util.find_spec('kvstore.coordinator.sync_runs'),
                         'sync.py records its runs from the reconciler split (#15) on')
    def test_the_last_run_of_each_sync_job_as_recorded_in_the_partitions(self):
        from kvstore.coordinator.sync_runs import record_runs
        from kvstore.reconciler.results import JobResult
        finished = round(time.time() - 3600, 3)
        record_runs(self.store, [JobResult('hints', {}, {}, False, 'delivered 0 hints'),
                                 JobResult('repair', {}, {}, False, 'failed', error='p2 did not answer')], finished)
        found = self.scrape()
        self.assertEqual({dict(k)['job']: v for k, v in
                          labelled(found, 'kvstore_sync_last_run_timestamp_seconds').items()},
                         {'hints': finished, 'repair': finished})
        self.assertEqual({dict(k)['job']: v for k, v in labelled(found, 'kvstore_sync_last_run_success').items()},
                         {'hints': 1, 'repair': 0})

    def test_only_the_text_format_is_offered(self):
        response = self.app.get('/metrics', headers={'Accept': 'application/json'}, status=406)
        self.assertEqual(response.json['code'], 'not_acceptable')
        self.assertIn('kvstore_http_requests_total', self.app.get('/metrics').text)
        self.assertEqual(self.app.head('/metrics').body, b'')


class TestAnAnswerNotWaitedFor(unittest.TestCase):
    """A MariaDB partition that hangs (SIGSTOP) with a read sent to it: the
    read waits read_timeout for its answer, then counts a timeout.

    The counts are read from this process's registry, not from scrapes: a
    scrape asks the partitions too, and a call of a scrape (or of the read)
    that is not waited for is counted when it ends, which on a busy machine
    can be after the next scrape."""
    OUTCOMES = ('timeout', 'ok', 'error', 'refused')

    def setUp(self):
        self.cluster = shared_cluster()
        self.store = support.open_store(support.mariadb_partitions(self.cluster), read_timeout=1.0, backoff=60)
        self.app = support.web_app(self.store)
        self.addCleanup(self.store.close)

    def calls(self, partition):
        from kvstore import metrics
        return [metrics.COUNTED.get_sample_value('kvstore_replica_calls_total',
                                                 {'partition': partition, 'outcome': outcome}) or 0.0
                for outcome in self.OUTCOMES]

    def settled_calls(self, partition):
        """The partition's counts once no call to it is still under way."""
        seen = [self.calls(partition)]

        def unchanged():
            time.sleep(0.3)
            seen.append(self.calls(partition))
            return seen[-1] == seen[-2]
        self.assertTrue(support.wait_until(unchanged, 15), 'calls to %s went on' % partition)
        return seen[-1]

    def test_a_read_of_a_hung_partition_counts_a_timeout(self):
        bucket = support.unique()
        key = next('k%d' % i for i in range(1000) if 'p4' in self.store.placement(bucket, 'k%d' % i)[0])
        path = '/buckets/%s/keys/%s' % (bucket, key)
        self.app.put(path + '?w=all', b'v', headers={'Content-Type': 'text/plain'})
        self.app.get(path)   # the bucket's properties cached, and a connection to p4 kept
        before = self.settled_calls('p4')
        self.cluster.servers[3].pause()
        try:
            self.app.get(path + '?r=3')
        finally:
            self.cluster.servers[3].resume()
        after = self.settled_calls('p4')
        self.assertEqual([a - b for a, b in zip(after, before)], [1, 0, 0, 0],
                         'the read\'s calls to p4 by outcome %s' % (self.OUTCOMES,))


def token_section(token, roles):
    return {'sha256': hashlib.sha256(token.encode()).hexdigest(), 'roles': roles}


class TestMetricsNeedTheAdminToken(InProcess):
    """With tokens configured, /metrics is the admin's, as /cluster is: it names
    the partitions and which are down."""
    sections = {'token-admin': token_section('tok-admin', 'admin:*'),
                'token-reader': token_section('tok-reader', 'read:*')}

    def test_no_token_is_401_a_reader_is_403_the_admin_gets_them(self):
        self.app.authorization = None
        self.assertEqual(self.app.get('/metrics', status=401).json['code'], 'unauthenticated')
        self.app.authorization = ('Bearer', 'tok-reader')
        self.assertEqual(self.app.get('/metrics', status=403).json['code'], 'forbidden')
        self.app.authorization = ('Bearer', 'tok-admin')
        self.assertIn('kvstore_partition_up', self.app.get('/metrics').text)

