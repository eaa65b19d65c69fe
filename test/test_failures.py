"""Partitions fail: real mariadbd servers killed, paused and cut off.

Four partitions, N=3, R=2, W=2.  Every test gives its servers back (restarted,
resumed) so the shared cluster is whole for the next one.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

from kvstore.coordinator import gossip
from kvstore.errors import Unavailable
from test import support
from test.mariadb import shared_cluster

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(connect_timeout=0.5, read_timeout=1.0, backoff=0.3, max_backoff=1.0)
CLUSTER_SECRET = 'a-cluster-secret-for-the-tests-only-0123456789'


def keys_on(store, bucket, partition, count, owner=True, prefix='k'):
    """Keys whose preference list does (or does not) include partition."""
    found, i = [], 0
    while len(found) < count:
        key = '%s%d' % (prefix, i)
        if (partition in store.ring.preference_list(bucket, key, 3)) == owner:
            found.append(key)
        i += 1
    return found


def server_of(cluster, name):
    return cluster.servers[int(name[1:]) - 1]




class FailureCase(unittest.TestCase):
    def setUp(self):
        self.cluster = shared_cluster()
        self.partitions = support.mariadb_partitions(self.cluster)
        self.store = support.open_store(self.partitions, **FAST)
        self.app = support.web_app(self.store)
        self.bucket = support.unique()

    def tearDown(self):
        self.store.close()
        shared_cluster()  # restarts killed servers, resumes paused ones

    def put(self, store_app, key, value, status=None, params=''):
        return store_app.put('/buckets/%s/keys/%s%s' % (self.bucket, key, params), value,
                             headers={'Content-Type': 'text/plain'}, status=status)

    def replica_versions(self, key):
        """{owner: [version ids]} read straight from each owner's database."""
        return {p: sorted(v.version_id for v in self.store.engines[p].read(self.bucket, key))
                for p in self.store.ring.preference_list(self.bucket, key, 3)}


class TestOnePartitionKilled(FailureCase):
    def test_writes_and_reads_go_on_and_replicas_converge_after_restart(self):
        victim = 'p2'
        keys = keys_on(self.store, self.bucket, victim, 20) + keys_on(self.store, self.bucket, victim, 10, False)
        for key in keys:
            self.put(self.app, key, b'before')
        server_of(self.cluster, victim).kill()
        for key in keys:
            receipt = self.put(self.app, key, b'after ' + key.encode(), params='?w=all').json
            if victim in receipt['preference_list']:
                self.assertIn(victim, receipt['down'])
                self.assertIn(victim, receipt['hints'])
                self.assertNotIn(receipt['hints'][victim], receipt['preference_list'])
        for key in keys:
            self.assertEqual(self.app.get('/buckets/%s/keys/%s' % (self.bucket, key)).body,
                             b'after ' + key.encode())
        cluster = self.app.get('/cluster').json
        state = {p['name']: p for p in cluster['partitions']}
        self.assertEqual(state[victim]['state'], 'down')
        self.assertEqual(state[victim]['hints_waiting'], 20)

        server_of(self.cluster, victim).restart()
        # The next request after the backoff probes the partition; its recovery
        # starts the hand-off of the hints held for it.
        self.assertTrue(support.wait_until(lambda: (self.app.get('/buckets/%s/keys' % self.bucket) and
                                            not self.store.health.is_down(victim)), 10))
        self.assertTrue(support.wait_until(lambda: {p['name']: p for p in self.app.get('/cluster').json['partitions']}
                                   [victim]['hints_waiting'] == 0, 20))
        for key in keys:
            replicas = self.replica_versions(key)
            self.assertEqual(len(set(map(tuple, replicas.values()))), 1, (key, replicas))
            self.assertEqual(len(next(iter(replicas.values()))), 1)

    def test_a_delete_made_while_a_replica_was_down_stays_deleted(self):
        victim = 'p3'
        key = keys_on(self.store, self.bucket, victim, 1)[0]
        self.put(self.app, key, b'doomed', params='?w=all')
        server_of(self.cluster, victim).kill()
        self.assertEqual(self.app.delete('/buckets/%s/keys/%s' % (self.bucket, key)).status_int, 200)
        server_of(self.cluster, victim).restart()
        # A fresh front end, which knows nothing of hints, reads every replica.
        fresh = support.open_store(self.partitions, **FAST)
        try:
            self.assertEqual(fresh.engines[victim].read(self.bucket, key)[0].value, b'doomed')
            self.assertEqual(fresh.get(self.bucket, key, r=3).current, [])
            self.assertEqual(fresh.list_keys(self.bucket).keys, [])
            # Read repair and the hand-off carry the tombstone to the returned replica.
            fresh.hand_off(victim)
            self.assertTrue(support.wait_until(lambda: fresh.engines[victim].read(self.bucket, key)[0].deleted, 5))
            self.assertEqual(fresh.get(self.bucket, key, r=3).current, [])
        finally:
            fresh.close()


class TestTwoPartitionsDown(FailureCase):
    def test_writes_that_lost_two_replicas_succeed_through_a_hint(self):
        down = ('p1', 'p2')
        keys = [k for k in keys_on(self.store, self.bucket, 'p1', 60)
                if 'p2' in self.store.ring.preference_list(self.bucket, k, 3)][:5]
        self.assertTrue(keys)
        for name in down:
            server_of(self.cluster, name).kill()
        for key in keys:
            # W=2: the one owner left, and a hint on the one partition outside
            # the preference list (each hint of a write takes a partition of its own).
            receipt = self.put(self.app, key, b'hinted').json
            self.assertEqual(len(receipt['acknowledged']), 1)
            self.assertNotIn(receipt['acknowledged'][0], down)
            self.assertEqual(len(receipt['hints']), 1)
            self.assertIn(next(iter(receipt['hints'])), down)
            self.assertNotIn(next(iter(receipt['hints'].values())), receipt['preference_list'])
            self.assertEqual(self.app.get('/buckets/%s/keys/%s' % (self.bucket, key)).body, b'hinted')

    def test_too_few_replicas_is_503_naming_them_with_retry_after(self):
        for name in ('p1', 'p2', 'p3', 'p4'):
            server_of(self.cluster, name).kill()
        response = self.put(self.app, 'k', b'x', status=503)
        self.assertEqual(response.json['code'], 'unavailable')
        self.assertEqual(len(response.json['failed']), 3)
        self.assertEqual(response.headers['Retry-After'], '1')
        response = self.app.get('/buckets/%s/keys/k' % self.bucket, status=503)
        self.assertEqual(response.json['code'], 'unavailable')


class TestRestartedPartition(FailureCase):
    def test_connections_a_restart_closed_are_dropped_before_a_request_uses_them(self):
        victim = 'p2'
        keys = keys_on(self.store, self.bucket, victim, 5)
        for key in keys:   # the store now keeps idle connections to the victim
            self.put(self.app, key, b'before', params='?w=all')
        server_of(self.cluster, victim).kill()
        server_of(self.cluster, victim).restart()   # a tenth of a second
        for key in keys:
            receipt = self.put(self.app, key, b'after', params='?w=all').json
            self.assertIn(victim, receipt['acknowledged'])
            self.assertEqual(receipt['down'], {})
        self.assertFalse(self.store.health.is_down(victim))


class TestPausedPartition(FailureCase):
    def test_requests_finish_within_the_timeout_and_it_is_reported_down(self):
        victim = 'p4'
        keys = keys_on(self.store, self.bucket, victim, 6)
        for key in keys:
            self.put(self.app, key, b'v')
        server_of(self.cluster, victim).pause()
        limit = FAST['connect_timeout'] + FAST['read_timeout'] + 1.0
        for key in keys:
            started = time.monotonic()
            self.put(self.app, key, b'while paused')
            self.assertEqual(self.app.get('/buckets/%s/keys/%s' % (self.bucket, key)).body, b'while paused')
            self.assertLess(time.monotonic() - started, limit, key)
        state = {p['name']: p for p in self.app.get('/cluster').json['partitions']}
        self.assertIn(state[victim]['state'], ('down', 'suspect'))
        self.assertTrue(state[victim]['last_error'])


class TestCoordinatorPausedMidWrite(FailureCase):
    """The key's first owner decides a write and is paused before its commit:
    the front end's wait times out and the next owner coordinates the write
    again, while the paused owner commits the first attempt when it resumes.
    The second attempt must replace the first wherever the two meet: else the
    key holds the value twice, and a delete through an owner that never saw
    the first attempt leaves it standing (found by test_chaos)."""

    def write_while_the_first_owner_pauses(self, key, value):
        """PUT the key, its first owner paused once it decided the write:
        (the receipt, the first owner)."""
        first = self.store.ring.preference_list(self.bucket, key, 3)[0]
        decisions = []

        def pause_after_the_first_decision(current):
            decisions.append(current)
            if len(decisions) == 1:
                server_of(self.cluster, first).pause()
        receipt = self.store.put(self.bucket, key, value, 'text/plain', check=pause_after_the_first_decision)
        self.assertEqual(len(decisions), 2)   # decided on the first owner, then on the next
        self.assertNotEqual(receipt.coordinator, first)
        return receipt, first

    def resume_and_settle(self, first, key):
        """Resume the paused owner, wait until it committed the first attempt
        (the case this is about), and hand it its hints."""
        server_of(self.cluster, first).resume()
        actor = self.store.engines[first].actor
        self.assertTrue(support.wait_until(
            lambda: any(v.dot[0] == actor for v in self.store.engines[first].read(self.bucket, key)), 10),
            'the first attempt was not committed on %s' % first)
        self.assertTrue(support.wait_until(lambda: self.store.hand_off(first) == (0, 0), 10))

    def read_every_owner(self, key):
        """The key's versions read from all three owners (once the resumed one is found up again)."""
        reads = []

        def read():
            try:
                reads.append(self.store.get(self.bucket, key, r=3, pr=3))
            except Unavailable:
                return False
            return True
        self.assertTrue(support.wait_until(read, 10))
        return reads[-1]

    def test_the_write_is_stored_once(self):
        key = support.unique()
        receipt, first = self.write_while_the_first_owner_pauses(key, b'once')
        self.resume_and_settle(first, key)
        versions = self.read_every_owner(key).versions
        self.assertEqual([(v.value, v.version_id) for v in versions], [(b'once', receipt.version.version_id)])

    def test_a_delete_without_a_context_deletes_both_attempts(self):
        key = support.unique()
        self.write_while_the_first_owner_pauses(key, b'doomed')
        deleted = self.store.delete(self.bucket, key)   # coordinated while the first owner is still paused
        self.assertNotEqual(deleted.coordinator, self.store.ring.preference_list(self.bucket, key, 3)[0])
        self.resume_and_settle(deleted.preference_list[0], key)
        self.assertEqual(self.read_every_owner(key).current, [])
        self.assertEqual(self.store.list_keys(self.bucket).keys, [])


class TestDeleteThroughAnOwnerThatMissedAWrite(FailureCase):
    def test_a_delete_without_a_context_deletes_what_a_read_would_return(self):
        key = support.unique()
        first = self.store.ring.preference_list(self.bucket, key, 3)[0]
        self.store.put(self.bucket, key, b'first', 'text/plain', w=3)
        # Another front end believes the first owner down (a cut only it sees):
        # its write goes to the other owners, and a hint holds it for the first.
        other = support.open_store(self.partitions, **dict(FAST, backoff=60.0, max_backoff=60.0))
        try:
            other.health.failed(first, 'cut off')
            second = other.put(self.bucket, key, b'second', 'text/plain')
            self.assertIn(first, second.hints)
        finally:
            other.close()
        # This front end's delete is coordinated by the first owner, which holds only the first value.
        deleted = self.store.delete(self.bucket, key)
        self.assertEqual(deleted.coordinator, first)
        self.store.hand_off(first)
        self.assertEqual(self.store.get(self.bucket, key, r=3, pr=3).current, [])
        self.assertEqual(self.store.list_keys(self.bucket).keys, [])


class TestLazyWrites(FailureCase):
    """A write with w below N answers once W replicas hold it; an owner still
    working then is waited for no longer, and the write is marked pending on
    its coordinator until that owner (or a hint for it) holds it."""

    def setUp(self):
        super().setUp()
        self.key = next(k for k in keys_on(self.store, self.bucket, 'p4', 20)
                        if self.store.ring.preference_list(self.bucket, k, 3)[0] != 'p4')
        self.owners = self.store.ring.preference_list(self.bucket, self.key, 3)
        self.put(self.app, self.key, b'everywhere', params='?w=all')
        self.assertEqual(self.marked(), [])

    def marked(self):
        markers = self.store.engines[self.owners[0]].pending_markers(10, (self.bucket, self.key, ''))
        return [m for m in markers if m[:2] == (self.bucket, self.key)]

    def test_an_owner_held_up_by_a_lock_is_not_waited_for_and_takes_the_write_itself_later(self):
        blocker = server_of(self.cluster, 'p4').connect(database=self.store.engines['p4'].database)
        try:
            with blocker.cursor() as cursor:
                cursor.execute('START TRANSACTION')
                cursor.execute('SELECT version_id FROM objects WHERE bucket = %s AND key_name = %s FOR UPDATE',
                               (self.bucket.encode(), self.key.encode()))
            response = self.put(self.app, self.key, b'lazy', params='?w=2')
            receipt = response.json
            self.assertEqual(sorted(receipt['acknowledged']), sorted(p for p in self.owners if p != 'p4'))
            self.assertEqual((receipt['hints'], receipt['down']), ({}, {}))
            self.assertEqual(len(self.marked()), 1)
        finally:
            blocker.rollback()
            blocker.close()
        # The lock gone, p4 commits the version itself (no hint), and the marker goes.
        self.assertTrue(support.wait_until(lambda: not self.marked(), 10), self.marked())
        self.assertEqual([v.etag for v in self.store.engines['p4'].read(self.bucket, self.key)],
                         [response.headers['ETag']])

    def test_a_hung_owner_leaves_the_write_marked_pending_until_a_hint_holds_it(self):
        fallback = next(p for p in self.store.engines if p not in self.owners)
        server_of(self.cluster, 'p4').pause()
        etag = self.put(self.app, self.key, b'lazy', params='?w=2').headers['ETag']
        # Answered with p4 still out: the marker was written before the answer.
        self.assertEqual(len(self.marked()), 1)
        # p4's answer times out; a hint on the fallback takes its place, and the marker goes.
        self.assertTrue(support.wait_until(lambda: not self.marked(), 10), self.marked())
        self.assertEqual([v.etag for v in self.store.engines[fallback].read_hints(self.bucket, self.key)],
                         [etag])


class TestSplit(FailureCase):
    def test_writes_on_both_sides_of_a_split_become_siblings_and_a_merge_resolves_them(self):
        key = 'split-key'
        owners = self.store.ring.preference_list(self.bucket, key, 3)
        first = self.put(self.app, key, b'base', params='?w=all')
        context = first.headers['X-Context']

        def cut_off(names):
            """A front end that cannot reach the named partitions (a closed port)."""
            dead = socket.socket()
            dead.bind(('127.0.0.1', 0))
            port = dead.getsockname()[1]
            dead.close()
            parts = {n: (dict(f, port=port) if n in names else f) for n, f in self.partitions.items()}
            return support.open_store(parts, **FAST)

        left, right = cut_off(owners[1:]), cut_off(owners[:1])
        try:
            left_app, right_app = support.web_app(left), support.web_app(right)
            for app, value in ((left_app, b'left'), (right_app, b'right')):
                app.put('/buckets/%s/keys/%s?w=1' % (self.bucket, key), value,
                        headers={'Content-Type': 'text/plain', 'X-Context': context})
        finally:
            left.close()
            right.close()
        choices = self.app.get('/buckets/%s/keys/%s?r=all' % (self.bucket, key), status=300)
        self.assertEqual(sorted(s['value'] for s in choices.json['siblings']), ['left', 'right'])
        multipart = self.app.get('/buckets/%s/keys/%s?r=all' % (self.bucket, key),
                                 headers={'Accept': 'multipart/mixed'}, status=300)
        self.assertTrue(multipart.headers['Content-Type'].startswith('multipart/mixed; boundary='))
        self.assertIn(b'\r\n\r\nleft\r\n', multipart.body)
        self.app.put('/buckets/%s/keys/%s?w=all' % (self.bucket, key), b'merged',
                     headers={'Content-Type': 'text/plain', 'X-Context': choices.headers['X-Context']})
        self.assertEqual(self.app.get('/buckets/%s/keys/%s?r=all' % (self.bucket, key)).body, b'merged')

    def test_last_writer_wins_buckets_never_show_siblings(self):
        self.app.put('/buckets/' + self.bucket, json.dumps({'conflicts': 'lww'}))
        context = self.put(self.app, 'k', b'base').headers['X-Context']
        for value in (b'one', b'two'):
            self.app.put('/buckets/%s/keys/k' % self.bucket, value,
                         headers={'Content-Type': 'text/plain', 'X-Context': context})
        self.assertEqual(self.app.get('/buckets/%s/keys/k?r=all' % self.bucket).body, b'two')

    def test_sibling_count_has_a_hard_cap(self):
        store = support.open_store(self.partitions, max_siblings=3, **FAST)
        app = support.web_app(store)
        try:
            context = self.put(app, 'k', b'base').headers['X-Context']
            for i in range(3):
                app.put('/buckets/%s/keys/k' % self.bucket, b'v%d' % i,
                        headers={'Content-Type': 'text/plain', 'X-Context': context})
            refused = app.put('/buckets/%s/keys/k' % self.bucket, b'one too many',
                              headers={'Content-Type': 'text/plain', 'X-Context': context}, status=409)
            self.assertEqual(refused.json['code'], 'too_many_siblings')
            self.assertEqual(len(app.get('/buckets/%s/keys/k' % self.bucket, status=300).json['siblings']), 3)
        finally:
            store.close()


class TestGossip(unittest.TestCase):
    """Two real controller processes that gossip partition health."""

    def setUp(self):
        self.cluster = shared_cluster()
        self.directory = support.TemporaryDirectory()
        self.ports = [support.free_port(), support.free_port()]
        partitions = support.mariadb_partitions(self.cluster)
        self.processes = []
        for i, port in enumerate(self.ports):
            peer = self.ports[1 - i]
            path = os.path.join(self.directory.path, 'front%d.cfg' % i)
            write_config(path, partitions, peers='127.0.0.1:%d' % peer, gossip_interval=0.2)
            env = dict(os.environ, STORE_CONFIG=path, WEBPY_ENV='test')
            self.processes.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, 'controller.py'), '127.0.0.1:%d' % port],
                cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self.assertTrue(support.wait_until(lambda: support.reachable(port), 20))

    def tearDown(self):
        for process in self.processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.directory.remove()
        shared_cluster()

    def view_of(self, port):
        """A front end's view, asked through (signed) gossip so that it probes nothing."""
        body = json.dumps({'partitions': {}}).encode()
        request = urllib.request.Request('http://127.0.0.1:%d/cluster/gossip' % port, data=body, headers=dict(
            gossip.signed_headers(CLUSTER_SECRET, gossip.REQUEST, '127.0.0.1:%d' % port, body),
            **{'Content-Type': 'application/json'}))
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())['partitions']

    def test_a_partition_one_front_end_finds_down_is_reported_down_by_the_other(self):
        first, second = self.ports
        self.assertEqual(self.view_of(second)['p1']['state'], 'up')
        server_of(self.cluster, 'p1').kill()
        # Writes through the first front end meet the dead partition.
        for i in range(10):
            urllib.request.urlopen(urllib.request.Request(
                'http://127.0.0.1:%d/buckets/gossip/keys/k%d' % (first, i), data=b'v', method='PUT',
                headers={'Content-Type': 'text/plain'}), timeout=10).read()
        self.assertEqual(self.view_of(first)['p1']['state'], 'down')
        # Rounds every 0.2 s: within 15 rounds the second one knows too.
        self.assertTrue(support.wait_until(lambda: self.view_of(second)['p1']['state'] == 'down', 3.0))






def write_config(path, partitions, peers='', gossip_interval=1.0):
    lines = ['[store]', 'replicas = 3', 'r = 2', 'w = 2']
    lines += ['%s = %s' % item for item in FAST.items()]
    lines += ['', '[cluster]', 'peers = ' + peers, 'gossip_interval = %s' % gossip_interval,
              'secret = ' + CLUSTER_SECRET]
    for name, fields in partitions.items():
        lines += ['', '[partition-%s]' % name] + ['%s = %s' % item for item in fields.items()]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


class TestReadRepair(FailureCase):
    def test_a_read_writes_the_current_version_back_to_stale_and_missing_replicas(self):
        key = 'repair-me'
        owners = self.store.ring.preference_list(self.bucket, key, 3)
        self.put(self.app, key, b'old', params='?w=all')
        old_version = self.store.engines[owners[0]].read(self.bucket, key)[0]
        self.put(self.app, key, b'new', params='?w=all')
        current = self.store.engines[owners[0]].read(self.bucket, key)
        # One replica goes back to the old version and another loses the key, as
        # a restore from an old backup would leave them.
        stale, missing = owners[1], owners[2]
        self.store.engines[stale].drop_keys(self.bucket)
        self.store.engines[stale].apply(self.bucket, key, old_version)
        self.store.engines[missing].drop_keys(self.bucket)
        self.assertEqual(self.app.get('/buckets/%s/keys/%s?r=all' % (self.bucket, key)).body, b'new')
        self.assertTrue(support.wait_until(lambda: all(
            [v.version_id for v in self.store.engines[p].read(self.bucket, key)] == [current[0].version_id]
            for p in owners), 5))


class TestConcurrentNewKeys(FailureCase):
    def test_many_writers_of_new_keys_leave_every_owner_with_every_key(self):
        keys = ['new-%05d' % i for i in range(1500)]
        errors = []

        def writer(part):
            for key in keys[part::24]:
                try:
                    self.store.put(self.bucket, key, key.encode(), 'text/plain', w=3)
                except Exception as e:   # a failure is what the test looks for
                    errors.append((key, e))
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

        def missing():
            return [(key, owner) for key in keys for owner in self.store.ring.preference_list(self.bucket, key, 3)
                    if not self.store.engines[owner].read(self.bucket, key)]
        # A replica that lost a lock conflict gets a hint, handed off at once.
        self.assertTrue(support.wait_until(lambda: not missing(), 20), missing()[:5])
        for key in keys[:50]:
            self.assertEqual(self.store.get(self.bucket, key, r=1).current[0].value, key.encode())


class TestReadiness(FailureCase):
    def test_health_answers_while_ready_follows_the_partitions(self):
        self.assertEqual(self.app.get('/health').json, {'status': 'ok'})
        self.assertTrue(self.app.get('/ready').json['ready'])
        server_of(self.cluster, 'p1').kill()
        self.assertTrue(self.app.get('/ready').json['ready'])   # 3 of 4 answer: R = W = 2
        server_of(self.cluster, 'p2').kill()
        server_of(self.cluster, 'p3').kill()
        # /ready asks the partitions at most once a second (status.READY_SECONDS).
        support.wait_until(lambda: self.app.get('/ready', status='*').status_int == 503, timeout=10)
        response = self.app.get('/ready', status=503)
        self.assertEqual(response.json['partitions']['p4'], 'up')
        self.assertNotEqual(response.json['partitions']['p1'], 'up')
        self.assertEqual(self.app.get('/health').json, {'status': 'ok'})
