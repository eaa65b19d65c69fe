"""A partition that lost data (issue 17): emptied, recreated, restored from a
backup or rolled back, it must not hand out version counters (dots) the other
replicas have seen already, or they drop its new writes as old ones.

The first test speaks to the real server (serve.py) over HTTP with the
embedded default, SQLite files under data/, and runs sync.py as a command; the
others use the shared MariaDB cluster, where a partition's database is dropped
or restored from a dump taken earlier.
"""
import json
import os
import random
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

from kvstore import configuration
import sync
from kvstore.errors import NotFound, Unavailable
from kvstore.coordinator.ring import Ring
from test import support
from test.mariadb import shared_cluster
from test.server import StoreServer
from test.test_server import CONFIGURATION, request
from test.sync_support import FAST, SyncCase, config_of, holdings, sync_once
from kvstore.coordinator.versions import Version, context_of, next_dot

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def values_of(response, body):
    """The live values a GET answered with: one (200), several (300), none (404)."""
    if response.status == 200:
        return [body]
    if response.status == 300:
        return sorted(s['value'].encode() for s in json.loads(body)['siblings'])
    assert response.status == 404, (response.status, body)
    return []


class TestEmptiedPartitionOverHTTP(unittest.TestCase):
    """Three writes with w=all to a key whose primary is p1; the server stops,
    data/p1.sqlite3 goes, the server starts again: the next write, acknowledged
    by every owner, must be read back, before and after sync.py."""

    def setUp(self):
        self.server = StoreServer(CONFIGURATION, workers=1, threads=4)
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.addCleanup(self.server.stop)
        ring = Ring.of(configuration.load(self.server.config_path))
        self.key = next(k for k in ('key-%d' % i for i in range(1000))
                        if ring.preference_list('lost', k, 3)[0] == 'p1')
        self.url = '/buckets/lost/keys/%s?w=all' % urllib.parse.quote(self.key)

    def put(self, value):
        conn = self.server.connect()
        try:
            response, body = request(conn, 'PUT', self.url, value, {'Content-Type': 'text/plain'})
        finally:
            conn.close()
        self.assertIn(response.status, (200, 201), body)
        return json.loads(body)

    def get(self):
        conn = self.server.connect()
        try:
            return values_of(*request(conn, 'GET', '/buckets/lost/keys/%s?r=all' % urllib.parse.quote(self.key)))
        finally:
            conn.close()

    def test_a_write_after_the_primary_lost_its_file_is_not_dropped(self):
        for value in (b'v1', b'v2', b'v3'):
            self.put(value)
        self.assertEqual(self.get(), [b'v3'])
        self.server.stop()
        for suffix in ('', '-wal', '-shm'):
            path = os.path.join(self.server.directory, 'data', 'p1.sqlite3' + suffix)
            if os.path.exists(path):
                os.remove(path)
        self.server.start()

        receipt = self.put(b'NEW')
        self.assertEqual(receipt['coordinator'], 'p1')
        self.assertEqual(sorted(receipt['acknowledged']), sorted(receipt['preference_list']), receipt)
        # p1 knew nothing of v3 when it took the write, so v3 may stay beside
        # it as a sibling; NEW must not be lost.
        self.assertIn(b'NEW', self.get())
        sync = subprocess.run([sys.executable, os.path.join(HERE, 'sync.py'), '--config',
                               self.server.config_path, '--no-progress'],
                              cwd=self.server.directory, capture_output=True, text=True, timeout=120)
        self.assertEqual(sync.returncode, 0, sync.stdout + sync.stderr)
        self.assertIn(b'NEW', self.get())


class RefusedIsNotAcknowledged:
    """A replica that drops a new version because it holds one claiming to
    have seen its dot is not an acknowledgement.  Staged as it happens: a
    front end whose clock ran an hour ahead wrote twice through p1, then p1 lost
    the second write (rolled back, or restored from a backup) while the other owners kept it."""

    def setUp(self):
        self.store = support.open_store(self.make_partitions())
        self.addCleanup(self.store.close)
        self.bucket = support.unique()
        self.key = next(k for k in ('k%d' % i for i in range(1000))
                        if self.store.placement(self.bucket, k)[0][0] == 'p1')
        self.owners = self.store.placement(self.bucket, self.key)[0]
        p1 = self.store.engines['p1']
        ahead = time.time_ns() // 1000 + 3600 * 10 ** 6
        actor = getattr(p1, 'actor', 'p1')
        _, self.lost = p1.coordinate(self.bucket, self.key, lambda held: Version.new(
            {actor: ahead}, (actor, ahead + 1), b'ahead', 'text/plain'))   # it had seen an earlier one
        for owner in self.owners[1:]:
            self.store.engines[owner].apply(self.bucket, self.key, self.lost)
        p1.delete_versions(self.bucket, self.key, [self.lost.version_id])   # the rollback

    def test_replicas_that_refuse_the_write_are_reported_logged_and_not_counted(self):
        for w in (2, 3):
            with self.assertRaises(Unavailable) as raised, self.assertLogs('kvstore.datastore', 'WARNING') as logs:
                self.store.put(self.bucket, self.key, b'new', 'text/plain', w=w)
            details = raised.exception.details
            self.assertEqual(details['acknowledged'], ['p1'])
            self.assertEqual(sorted(details['failed']), sorted(self.owners[1:]))
            self.assertTrue(all(r.startswith('refused') for r in details['failed'].values()), details)
            self.assertTrue(all('refused' in line for line in logs.output), logs.output)

    def test_after_sync_finds_p1_rolled_back_a_running_front_end_writes_with_its_new_incarnation(self):
        actor = self.store.engines['p1'].actor
        with self.assertLogs('kvstore.sync', 'WARNING'):
            results, _, status = sync_once(self.store.config, 'hints')   # cron, before any repair
        self.assertIn('restored', results, [r.summary for r in results.values()])
        self.assertIn('p1 now writes as', results['restored'].summary)
        # This front end opened p1 before: its next write through p1 is still
        # numbered by the old actor and refused, and it then reads the new one.
        with self.assertRaises(Unavailable), self.assertLogs('kvstore.datastore', 'WARNING'):
            self.store.put(self.bucket, self.key, b'refused', 'text/plain', w=3)
        self.assertNotEqual(self.store.engines['p1'].actor, actor)
        receipt = self.store.put(self.bucket, self.key, b'new', 'text/plain', w=3)
        self.assertEqual(sorted(receipt.acknowledged), sorted(self.owners), receipt)
        self.assertEqual(receipt.version.dot[0], self.store.engines['p1'].actor)

    def test_a_write_acknowledged_through_a_hint_its_owner_refuses_is_kept_and_reported(self):
        # The other owners are unreachable: the write is acknowledged by p1 and
        # a hint, before any owner judged it.
        for owner in self.owners[1:]:
            self.store.health.failed(owner, 'a test says so')
        receipt = self.store.put(self.bucket, self.key, b'new', 'text/plain', w=2)
        self.assertTrue(receipt.hints, receipt)
        for owner in self.owners[1:]:
            self.store.health.succeeded(owner)
        with self.assertLogs('kvstore.datastore', 'WARNING') as logs:
            for target in receipt.hints:
                self.store.hand_off(target)
        self.assertIn('new-incarnation p1', logs.output[0])
        held = sum(n for e in self.store.engines.values() for n, _ in e.hint_counts().values())
        self.assertEqual(held, len(receipt.hints))   # kept, not dropped
        results, _, status = sync_once(self.store.config, 'hints')
        self.assertNotEqual(status, sync.CONVERGED, results['hints'].summary)
        self.assertIn('refused and kept', results['hints'].summary)
        self.assertEqual(sum(n for e in self.store.engines.values() for n, _ in e.hint_counts().values()), held)


class OnSQLite(unittest.TestCase):
    def make_partitions(self):
        directory = support.TemporaryDirectory()
        self.addCleanup(directory.remove)
        return support.sqlite_partitions(directory.path)


class OnMariaDB(unittest.TestCase):
    def make_partitions(self):
        return support.mariadb_partitions(shared_cluster())


class TestRefusedIsNotAcknowledgedOnSQLite(RefusedIsNotAcknowledged, OnSQLite):
    pass


class TestRefusedIsNotAcknowledgedOnMariaDB(RefusedIsNotAcknowledged, OnMariaDB):
    pass


class MariaDBPartitionLoss(unittest.TestCase):
    """p1's database on the shared cluster: dropped (the store recreates it),
    or restored from a dump taken earlier."""

    def setUp(self):
        self.cluster = shared_cluster()
        self.partitions = support.mariadb_partitions(self.cluster)
        self.store = self.open()
        self.bucket = support.unique()
        self.key = next(k for k in ('k%d' % i for i in range(1000))
                        if self.store.placement(self.bucket, k)[0][0] == 'p1')

    def open(self):
        store = support.open_store(self.partitions, **FAST)
        self.addCleanup(store.close)
        return store

    @property
    def database(self):
        return self.store.engines['p1'].database

    def p1_sql(self, statement):
        conn = self.cluster.servers[0].connect(autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
        finally:
            conn.close()

    def client(self, program, *args, **options):
        server = self.cluster.servers[0]
        return subprocess.run([program, '-h', server.host, '-P', str(server.port), '-u', server.user]
                              + list(args), check=True, timeout=60, **options)

    def dump_p1(self):
        return self.client('mariadb-dump', '--single-transaction', self.database,
                           capture_output=True).stdout

    def restore_p1(self, dump):
        self.client('mariadb', self.database, input=dump, capture_output=True)

    def values(self, store, key=None):
        try:
            return sorted(v.value for v in store.get(self.bucket, key or self.key, r=3).current)
        except NotFound:
            return []

    def assert_new_write_survives(self, store):
        receipt = store.put(self.bucket, self.key, b'NEW', 'text/plain', w=3)
        self.assertEqual(receipt.coordinator, 'p1')
        self.assertEqual(sorted(receipt.acknowledged), sorted(receipt.preference_list), receipt)
        self.assertIn(b'NEW', self.values(store))
        results, _, status = sync_once(store.config)
        self.assertEqual(status, sync.CONVERGED, [r.summary for r in results.values()])
        self.assertIn(b'NEW', self.values(store))

    def test_a_write_after_p1s_database_was_dropped_is_not_dropped(self):
        for value in (b'v1', b'v2', b'v3'):
            self.store.put(self.bucket, self.key, value, 'text/plain', w=3)
        self.store.close()
        self.p1_sql('DROP DATABASE `%s`' % self.database)
        self.assert_new_write_survives(self.open())

    def test_a_write_after_p1_was_restored_from_an_older_dump_is_not_dropped(self):
        self.store.put(self.bucket, self.key, b'v1', 'text/plain', w=3)
        backup = self.dump_p1()
        for value in (b'v2', b'v3'):
            self.store.put(self.bucket, self.key, value, 'text/plain', w=3)
        self.store.close()
        self.restore_p1(backup)   # its incarnation too: the time floor keeps the counters apart
        self.assert_new_write_survives(self.open())

    def write_from_an_hour_ahead(self):
        """A write of the key p1 coordinates for a front end whose clock ran an
        hour ahead, acknowledged by every owner: (p1's actor, its counter)."""
        p1, owners = self.store.engines['p1'], self.store.placement(self.bucket, self.key)[0]
        actor, ahead = p1.actor, time.time_ns() // 1000 + 3600 * 10 ** 6
        _, acknowledged = p1.coordinate(self.bucket, self.key, lambda held: Version.new(
            context_of(held), (actor, ahead), b'ahead', 'text/plain'))
        for owner in owners[1:]:
            self.store.engines[owner].apply(self.bucket, self.key, acknowledged)
        return actor, ahead

    def test_sync_finds_p1_restored_without_new_incarnation_and_renews_it(self):
        self.store.put(self.bucket, self.key, b'v1', 'text/plain', w=3)
        backup = self.dump_p1()
        self.store.put(self.bucket, self.key, b'v2', 'text/plain', w=3)
        # Then a write p1 coordinated for a front end whose clock ran an hour
        # ahead, acknowledged by every owner: the backup lacks it.
        actor, ahead = self.write_from_an_hour_ahead()
        sync_once(self.store.config)   # cron: it records where each partition stood
        self.store.close()
        self.restore_p1(backup)        # and no new-incarnation
        with self.assertLogs('kvstore.sync', 'WARNING') as logs:
            results, _, status = sync_once(self.store.config)
        self.assertEqual(status, sync.CONVERGED, [r.summary for r in results.values()])
        self.assertIn('restored', results, [r.summary for r in results.values()])
        self.assertIn('p1 now writes as', results['restored'].summary)
        self.assertIn('new-incarnation p1', logs.output[0])
        store = self.open()            # the front ends restarted, as the summary says
        self.assertNotEqual(store.engines['p1'].actor, actor)
        self.assertEqual(self.values(store), [b'ahead'])   # the acknowledged write is back on p1
        self.assertEqual(store.engines['p1'].highest_counter(actor), ahead)
        # A write through p1 now is numbered by its new actor, and kept.
        receipt = store.put(self.bucket, self.key, b'NEW', 'text/plain', w=3)
        self.assertEqual(receipt.coordinator, 'p1')
        self.assertEqual(sorted(receipt.acknowledged), sorted(receipt.preference_list), receipt)
        self.assertEqual(self.values(store), [b'NEW'])
        results, _, status = sync_once(store.config)   # found once: the new actor is clean
        self.assertEqual(status, sync.CONVERGED, [r.summary for r in results.values()])

    def test_a_front_end_finds_p1_restored_without_new_incarnation_when_it_comes_back(self):
        self.store.put(self.bucket, self.key, b'v1', 'text/plain', w=3)
        sync_once(self.store.config)   # cron
        backup = self.dump_p1()
        # After the backup, a write p1 coordinated for a front end whose clock
        # ran an hour ahead, then one with its context through this front end
        # (which sees p1 hand out change numbers the backup lacks), each
        # acknowledged by every owner.
        p1, (actor, _) = self.store.engines['p1'], self.write_from_an_hour_ahead()
        context = self.store.get(self.bucket, self.key, r=3).context
        self.store.put(self.bucket, self.key, b'v3', 'text/plain', context=context, w=3)
        # p1's server dies and comes back restored from the backup: no
        # new-incarnation, no sync.py run; the front end runs on.
        server = self.cluster.servers[0]
        server.kill()
        server.start()
        self.restore_p1(backup)
        with self.assertLogs('kvstore.engines', 'WARNING') as logs:
            receipt = self.store.put(self.bucket, self.key, b'NEW', 'text/plain', w=3)
        self.assertIn('p1 was restored from a backup or rolled back without sync.py new-incarnation p1',
                      logs.output[0])
        # Numbered by a new incarnation: kept by every owner, not refused as
        # one that v3 (whose clock holds the counter from an hour ahead) saw.
        self.assertEqual(receipt.coordinator, 'p1')
        self.assertEqual(sorted(receipt.acknowledged), sorted(receipt.preference_list), receipt)
        self.assertNotEqual(p1.actor, actor)
        self.assertEqual(self.values(self.store), [b'NEW', b'v3'])   # a blind write beside what p1 lost
        recorded = p1.get_metadata(['incarnation', 'sync.changes'])
        self.assertEqual('p1.' + recorded['incarnation'], p1.actor)
        self.assertEqual(recorded['sync.changes'], 'null')   # the next run compares every arc
        results, _, status = sync_once(self.store.config)
        self.assertEqual(status, sync.CONVERGED, [r.summary for r in results.values()])
        self.assertNotIn('restored', results)   # the front end did it
        self.assertEqual(self.values(self.store), [b'NEW', b'v3'])

    def test_a_restore_while_writes_go_on_loses_no_acknowledged_write_and_resurrects_no_delete(self):
        # Keys p1 coordinates: a blind write through it, right after the
        # restore, numbers from what the backup held.
        keys = [k for k in ('r%d' % i for i in range(400))
                if self.store.placement(self.bucket, k)[0][0] == 'p1'][:24]
        for key in keys:
            self.store.put(self.bucket, key, b'first', 'text/plain', w=3)
        backup = self.dump_p1()
        expected = dict.fromkeys(keys, b'first')   # the last acknowledged write's value; None: deleted
        uncertain = set()                           # keys whose last write failed: it may have been applied
        not_found = []                              # deletes answered "no such key" for a key that exists
        stop, rng = threading.Event(), random.Random(17)

        def write():
            round_ = 0
            while not stop.is_set() or round_ < 3:
                round_ += 1
                for key in keys:
                    op = rng.choice(('blind', 'put', 'delete'))
                    value = ('%s-%d' % (op, round_)).encode()
                    try:
                        if op == 'blind':
                            self.store.put(self.bucket, key, value, 'text/plain', w=3)
                        else:
                            context = self.store.get(self.bucket, key, r=3).context
                            if op == 'put':
                                self.store.put(self.bucket, key, value, 'text/plain', context=context, w=3)
                            else:
                                self.store.delete(self.bucket, key, context=context, w=3)
                    except NotFound:
                        if expected[key] is not None and key not in uncertain:
                            not_found.append((key, expected[key]))
                        continue
                    except Unavailable:
                        uncertain.add(key)
                        continue
                    uncertain.discard(key)
                    expected[key] = None if op == 'delete' else value
        writer = threading.Thread(target=write)
        writer.start()
        try:
            time.sleep(0.5)
            self.restore_p1(backup)
            operator = self.open()
            operator.engines['p1'].new_incarnation()   # the documented step after a restore
            time.sleep(0.5)
        finally:
            stop.set()
            writer.join()
        for _ in range(3):
            results, _, status = sync_once(self.store.config)
            if status == sync.CONVERGED:
                break
        self.assertEqual(status, sync.CONVERGED, [r.summary for r in results.values()])
        self.assertEqual(not_found, [], 'a delete did not find a key whose write was acknowledged')
        for key in set(keys) - uncertain:
            found = self.values(self.store, key)
            if expected[key] is None:
                self.assertEqual(found, [], 'deleted key %s came back' % key)
            else:
                self.assertIn(expected[key], found, 'acknowledged write of %s lost' % key)
        self.assertLess(len(uncertain), len(keys) / 2, uncertain)


class TestReapedKeys(unittest.TestCase):
    """Once gc reaped a key's tombstone nothing of it remains; a client's
    context from before the delete must not then replace later writes."""

    def setUp(self):
        directory = support.TemporaryDirectory()
        self.addCleanup(directory.remove)
        self.partitions = support.sqlite_partitions(directory.path)
        self.store = support.open_store(self.partitions, **FAST)
        self.addCleanup(self.store.close)
        self.bucket = support.unique()

    def test_a_context_from_before_a_reaped_delete_does_not_replace_later_writes(self):
        for value in (b'v1', b'v2', b'v3'):
            old = self.store.put(self.bucket, 'k', value, 'text/plain', w=3).context
        self.store.delete(self.bucket, 'k', w=3)
        results, _, _ = sync_once(config_of(self.partitions, {'tombstone_grace': 0}, **FAST), 'gc')
        self.assertEqual(results['gc'].counts['tombstones_reaped'], 1, results['gc'].summary)
        time.sleep(0.002)   # the time moves on, as it does between a delete and its reaping
        self.store.put(self.bucket, 'k', b'after', 'text/plain', w=3)
        self.store.put(self.bucket, 'k', b'stale', 'text/plain', context=old, w=3)
        found = sorted(v.value for v in self.store.get(self.bucket, 'k', r=3).current)
        self.assertEqual(found, [b'after', b'stale'])


class TestChunkGarbageAndUploads(unittest.TestCase):
    """gc must not take the chunks of an upload still going on, and a version
    row whose chunks are gone must not be committed (chunk_grace of 1 s)."""

    def setUp(self):
        directory = support.TemporaryDirectory()
        self.addCleanup(directory.remove)
        self.partitions = support.sqlite_partitions(directory.path)
        self.store = support.open_store(self.partitions, chunk_size=1024, **FAST)
        self.addCleanup(self.store.close)
        self.bucket = support.unique()
        self.gc_config = config_of(self.partitions, {'chunk_grace': 1}, chunk_size=1024)

    def test_gc_keeps_an_upload_whose_latest_chunk_is_recent(self):
        engine = self.store.engines['p1']
        engine.write_chunk(self.bucket, 'slow', 'a' * 32, 0, b'first chunk, long ago')
        time.sleep(1.2)
        engine.write_chunk(self.bucket, 'slow', 'a' * 32, 1, b'second chunk, now')
        sync_once(self.gc_config, 'gc')
        self.assertEqual(engine.chunks_held('a' * 32), 2)

    def test_a_version_whose_chunks_went_is_not_acknowledged(self):
        config = self.gc_config

        class Slow:
            """A client's body that stalls after its first chunk while gc runs."""
            def __init__(self):
                self.parts = [b'a' * 1024, b'b' * 1024, b'c' * 100]
                self.collected = None   # gc's result, once it ran

            def read(self, size):
                if len(self.parts) == 1:   # two chunks stored, the third not yet read
                    time.sleep(1.2)
                    self.collected = sync_once(config, 'gc')[0]['gc'].counts
                return self.parts.pop(0) if self.parts else b''
        body = Slow()
        try:
            self.store.put(self.bucket, 'big', body, 'application/octet-stream', w=1)
        except Unavailable:
            # Refused because gc took the first chunks: nothing acknowledged, nothing readable.
            self.assertGreater(body.collected['chunked_versions_removed'], 0, body.collected)
            self.assertEqual(self.store.get(self.bucket, 'big').current, [])
            return
        self.assertIsNotNone(body.collected)
        version = self.store.get(self.bucket, 'big').current[0]
        self.assertEqual(len(b''.join(self.store.open_value(version))), 2148)


class TestReconcilerFinishes(unittest.TestCase):
    """What gc and repair must finish (issue 17, findings 4 to 6): no copy of a
    key outside its owners outlives its tombstone, superseded rows go, and
    concurrent tombstones are reaped."""

    def setUp(self):
        directory = support.TemporaryDirectory()
        self.addCleanup(directory.remove)
        self.partitions = support.sqlite_partitions(directory.path)
        self.config = config_of(self.partitions)
        self.reaping = config_of(self.partitions, {'tombstone_grace': 0})
        self.store = self.open(self.partitions)
        self.bucket = support.unique()

    def open(self, partitions):
        store = support.open_store(partitions, **FAST)
        self.addCleanup(store.close)
        return store

    def owners(self, key, store=None):
        return (store or self.store).ring.preference_list(self.bucket, key, 3)

    def test_a_hint_for_a_former_owner_goes_to_the_owners_and_the_deleted_key_stays_deleted(self):
        key = next(k for k in ('k%d' % i for i in range(1000)) if 'p2' in self.owners(k))
        old = self.store.put(self.bucket, key, b'old', 'text/plain', w=3).version
        # p2 missed the write: a fallback holds its hint.
        self.store.engines['p2'].delete_versions(self.bucket, key, [old.version_id])
        holder = next(p for p in self.partitions if p not in self.owners(key))
        self.store.engines[holder].store_hint('p2', self.bucket, key, old)
        self.assertEqual(sync_once(self.config, 'rebalance')[2], sync.CONVERGED)   # epoch 1
        # p2 leaves the ring (weight 0), the rebalance completes, the key is deleted.
        without = dict(self.partitions, p2=dict(self.partitions['p2'], weight=0))
        self.assertEqual(sync_once(config_of(without), 'rebalance')[2], sync.CONVERGED)
        smaller = self.open(without)
        smaller.delete(self.bucket, key, w=3)
        # A front end sees p2 recover and hands its hints off: to the key's owners.
        self.assertEqual(smaller.hand_off('p2'), (1, 0))
        self.assertEqual(smaller.engines['p2'].read(self.bucket, key), [])
        sync_once(config_of(without, {'tombstone_grace': 0}), 'gc')
        sync_once(config_of(without), 'rebalance')   # drains whatever p2 holds
        self.assertEqual(smaller.get(self.bucket, key, r=3).current, [])

    def test_gc_keeps_a_tombstone_while_a_partition_that_does_not_own_the_key_holds_a_copy(self):
        stranger = next(p for p in self.partitions if p not in self.owners('k'))
        old = self.store.put(self.bucket, 'k', b'old', 'text/plain', w=3).version
        # Left by a front end whose configuration was out of date, say.
        self.store.engines[stranger].apply(self.bucket, 'k', old)
        self.store.delete(self.bucket, 'k', w=3)
        results, _, _ = sync_once(self.reaping, 'gc')
        self.assertEqual((results['gc'].counts['tombstones_reaped'], results['gc'].counts['tombstones_kept']),
                         (0, 1), results['gc'].summary)
        # The drain moves the stranger's copy to the owners (the tombstone supersedes it), then gc reaps.
        results, _, status = sync_once(self.reaping, 'rebalance', 'gc')
        self.assertEqual((status, results['gc'].counts['tombstones_reaped']), (sync.CONVERGED, 1))
        self.assertNotIn((self.bucket, 'k'), holdings(self.store))
        self.assertEqual(self.store.get(self.bucket, 'k', r=3).current, [])

    def test_repair_removes_a_superseded_row_left_beside_its_replacement(self):
        old = self.store.put(self.bucket, 'k', b'old', 'text/plain', w=3).version
        new = self.store.put(self.bucket, 'k', b'new', 'text/plain', w=3).version
        # A front end died between a replica's two write steps: the old row is still there.
        self.store.engines[self.owners('k')[1]].insert_many([(self.bucket, 'k', old)])
        results, _, status = sync_once(self.config, 'repair')
        self.assertEqual(holdings(self.store)[(self.bucket, 'k')], {p: [new.version_id] for p in self.owners('k')})
        counts = results['repair'].counts
        self.assertEqual((status, counts['differing'], counts['keys_repaired'], counts.get('versions_removed')),
                         (sync.CONVERGED, 1, 1, 1), results['repair'].summary)
        results, _, _ = sync_once(self.config, 'repair')   # follows the changes: nothing left
        self.assertEqual(results['repair'].counts['keys_repaired'], 0, results['repair'].summary)

    def test_concurrent_tombstones_are_reaped_once_every_owner_holds_them_all(self):
        owners = self.owners('k')
        base = self.store.put(self.bucket, 'k', b'v', 'text/plain', w=3).version
        # Two deletes from the same context, coordinated by two owners: siblings.
        left, right = (Version.new(base.full_clock, (self.store.engines[o].actor, base.dot[1] + 1), b'', '',
                                   deleted=True) for o in owners[:2])
        for owner in owners:
            self.store.engines[owner].apply(self.bucket, 'k', left)
        for owner in owners[:2]:
            self.store.engines[owner].apply(self.bucket, 'k', right)
        self.assertEqual(len(self.store.engines[owners[0]].read(self.bucket, 'k')), 2)
        with self.assertRaises(NotFound):   # a client cannot clear them
            self.store.delete(self.bucket, 'k')
        results, _, _ = sync_once(self.reaping, 'gc')   # the third owner lacks one
        self.assertEqual(results['gc'].counts['tombstones_reaped'], 0, results['gc'].summary)
        results, _, status = sync_once(self.reaping, 'repair', 'gc')
        self.assertEqual((status, results['gc'].counts['tombstones_reaped']), (sync.CONVERGED, 2),
                         results['gc'].summary)
        self.assertNotIn((self.bucket, 'k'), holdings(self.store))


class TestForcedBucketDeleteStaysDeleted(unittest.TestCase):
    """DELETE /buckets/b?force=true, on real MariaDB, while versions of the
    bucket's keys are on their way: a hand-off holding a batch of hints, a
    replica's write (a w=1 write's lazy copy), read repair, a hint stored,
    sync.py's repair.  None may bring a key back once the delete returned."""

    def setUp(self):
        self.cluster = shared_cluster()
        self.partitions = support.mariadb_partitions(self.cluster)
        # A partition marked down stays so (no probe, no hand-off) until the test says.
        self.store = support.open_store(self.partitions, backoff=600.0, max_backoff=600.0)
        self.addCleanup(self.store.close)
        self.app = support.web_app(self.store)
        self.bucket = support.unique()
        self.keys = ['k%d' % i for i in range(40)]

    def force_delete(self):
        self.assertEqual(self.app.delete('/buckets/%s?force=true' % self.bucket).status_int, 200)

    def assertStaysDeleted(self):
        readable = [k for k in self.keys if self.store.get(self.bucket, k, r=3).current]
        held = {p: [k for k in self.keys if engine.read(self.bucket, k)] for p, engine in self.store.engines.items()}
        self.assertEqual(readable, [])
        self.assertEqual({p: keys for p, keys in held.items() if keys}, {})
        self.assertEqual(self.store.list_keys(self.bucket).keys, [])
        self.assertEqual(sum(e.hint_counts().get(p, (0,))[0] for e in self.store.engines.values()
                             for p in self.store.engines), 0)

    def test_versions_in_flight_when_the_bucket_is_dropped_are_refused(self):
        in_flight = {}
        for key in self.keys:
            self.store.put(self.bucket, key, b'v', 'text/plain', w=3)
            owners = self.store.placement(self.bucket, key)[0]
            in_flight[key] = (owners, self.store.engines[owners[0]].read(self.bucket, key)[0])
        self.force_delete()
        for i, (key, (owners, version)) in enumerate(in_flight.items()):
            engine = self.store.engines[owners[i % 3]]
            way = i % 4
            if way == 0:     # a replica's write, as replication.py sends it (a w=1 write's lazy copy)
                engine.finish_apply(engine.send_apply(self.bucket, key, version, []))
            elif way == 1:   # read repair, a hint delivered
                engine.apply(self.bucket, key, version)
            elif way == 2:   # sync.py's repair and rebalance
                engine.apply_many([(self.bucket, key, version)])
            else:            # a write that stores a hint for an owner it could not reach
                fallback = self.store.placement(self.bucket, key)[1][0]
                self.store.engines[fallback].store_hint(owners[0], self.bucket, key, version)
                self.store.hand_off(owners[0])
        self.assertStaysDeleted()

    def test_a_hand_off_holding_a_batch_of_hints_does_not_bring_keys_back(self):
        target = 'p2'
        self.store.health.failed(target, 'a test says so')   # the writes leave hints for it
        for key in self.keys:
            self.store.put(self.bucket, key, b'v', 'text/plain', w=2)
        holders = [p for p, e in self.store.engines.items() if e.hint_counts().get(target)]
        self.assertTrue(holders)
        self.store.health.succeeded(target)
        deliveries = self.store.handoff._deliver(holders[0], target, 500)
        next(deliveries)   # the batch read, one hint delivered
        self.force_delete()
        for _ in deliveries:   # the rest of the batch, delivered after the delete returned
            pass
        self.store.hand_off(target)
        self.assertStaysDeleted()

    def test_a_bucket_recreated_after_the_drop_takes_new_writes(self):
        self.store.put(self.bucket, 'k0', b'old', 'text/plain', w=3)
        self.force_delete()
        receipt = self.store.put(self.bucket, 'k0', b'new', 'text/plain', w=3)
        self.assertEqual(sorted(receipt.acknowledged), sorted(receipt.preference_list))
        self.assertEqual([v.value for v in self.store.get(self.bucket, 'k0', r=3).current], [b'new'])


class TestForcedBucketDeleteDuringAConfigurationChange(SyncCase):
    """A fifth partition added by the rolling steps (docs/OPERATIONS.md): one
    front end reloaded with p5, the new view recorded, and the bucket
    force-deleted through the other, which does not know p5.  The keys p5
    holds (written there by the five-partition front end, or moved there by
    the rebalance) stay deleted: for reads and listings through either front
    end at once, and everywhere once sync.py ran."""

    def setUp(self):
        super().setUp()
        self.assertEqual(sync_once(self.config)[2], sync.CONVERGED)   # epoch 1: the four partitions
        self.five = dict(self.partitions, p5=dict(self.partitions['p1'],
                                                  database=self.partitions['p1']['database'] + '_p5'))
        self.old, self.new = self.store, self.open(self.five)
        self.old_app, self.new_app = support.web_app(self.old), support.web_app(self.new)

    def on_p5(self, count, first=False):
        """Keys the five-partition ring places on p5 (first: as first owner)."""
        keys = [k for k in ('k%d' % i for i in range(2000))
                if 'p5' in self.new.ring.preference_list(self.bucket, k, 3)[:1 if first else 3]]
        return keys[:count]

    def readable(self, store, keys, **quorum):
        return [k for k in keys if store.get(self.bucket, k, **quorum).current]

    def test_keys_on_the_added_partition_stay_deleted(self):
        keys = self.on_p5(30)
        moved = [k for k in ('m%d' % i for i in range(400))
                 if 'p5' in self.new.ring.preference_list(self.bucket, k, 3)][:10]
        for key in moved:   # on the old ring's owners, moved to p5 by the rebalance
            self.old.put(self.bucket, key, b'old ring', 'text/plain', w=3)
        self.assertEqual(self.new.record_view()[0]['state'], 'rebalancing')
        sync_once(config_of(self.five), 'rebalance')
        for key in keys:    # written to p5 by the front end that knows it
            self.new.put(self.bucket, key, b'new ring', 'text/plain', w=3)
        self.assertTrue(all(self.new.engines['p5'].read(self.bucket, k) for k in keys + moved))

        self.assertEqual(self.old_app.delete('/buckets/%s?force=true' % self.bucket).status_int, 200)
        everything = keys + moved
        # A batch read first (before any single read repairs p5's fence).
        batch = self.new_app.post_json('/buckets/%s/batch' % self.bucket,
                                       {'operations': [{'op': 'get', 'key': k} for k in everything]})
        self.assertEqual([r['key'] for r in batch.json['results'] if r['status'] != 404], [])
        for store in (self.old, self.new):
            self.assertEqual(self.readable(store, everything), [])
            self.assertEqual(self.readable(store, everything, r=3), [])
            self.assertEqual(store.list_keys(self.bucket).keys, [])
        self.assertEqual(self.new_app.get('/buckets/%s' % self.bucket, status='*').status_int, 404)
        # A create-only write of a dropped key that p5 decides finds it deleted.
        created = self.on_p5(1, first=True)[0]
        self.assertEqual(self.new_app.put('/buckets/%s/keys/%s' % (self.bucket, created), b'again',
                                          headers={'Content-Type': 'text/plain', 'If-None-Match': '*'},
                                          status='*').status_int, 201)

        # sync.py, on the five partitions: the fence reaches p5, which drops what it covers.
        sync_once(config_of(self.five))
        self.assertEqual({key: sorted(held) for (bucket, key), held in holdings(self.new).items()
                          if bucket == self.bucket and key != created}, {})
        self.assertEqual(self.readable(self.new, everything, r=1), [created])
        self.assertEqual(self.readable(self.old, everything), [created])

    def test_sync_gives_the_added_partition_the_fence(self):
        keys = self.on_p5(10)
        self.assertEqual(self.new.record_view()[0]['state'], 'rebalancing')
        for key in keys:
            self.new.put(self.bucket, key, b'new ring', 'text/plain', w=3)
        self.assertEqual(self.old_app.delete('/buckets/%s?force=true' % self.bucket).status_int, 200)
        results, _, _ = sync_once(config_of(self.five), 'hints')   # no read repaired p5 before
        self.assertEqual(results['fences'].counts, {'fences_spread': 1}, results['fences'].summary)
        self.assertEqual([k for k in keys if self.new.engines['p5'].read(self.bucket, k)], [])
        self.assertEqual(self.readable(self.new, keys, r=1), [])
        self.assertNotIn('fences', sync_once(config_of(self.five), 'hints')[0])   # once

    def test_a_bucket_recreated_after_the_drop_keeps_its_new_writes(self):
        keys = self.on_p5(10)
        self.assertEqual(self.new.record_view()[0]['state'], 'rebalancing')
        for key in keys:
            self.new.put(self.bucket, key, b'before', 'text/plain', w=3)
        self.assertEqual(self.old_app.delete('/buckets/%s?force=true' % self.bucket).status_int, 200)
        for i, key in enumerate(keys):
            store = (self.old, self.new)[i % 2]
            store.put(self.bucket, key, b'after', 'text/plain', w=3)
        sync_once(config_of(self.five))
        for store in (self.old, self.new):
            self.assertEqual({k: [v.value for v in store.get(self.bucket, k, r=3).current] for k in keys},
                             {k: [b'after'] for k in keys})
            self.assertEqual(store.list_keys(self.bucket).keys, sorted(keys))


class TestChunkGarbageUnderLocks(unittest.TestCase):
    """gc on real MariaDB: a large version committed between gc's check that
    no version points to the chunks and its delete of them must keep them.
    The delete is held up by a lock on the chunk rows that this test takes
    from a connection of its own; the version commits meanwhile."""

    def setUp(self):
        self.cluster = shared_cluster()
        self.store = support.open_store(support.mariadb_partitions(self.cluster), chunk_size=1024, **FAST)
        self.addCleanup(self.store.close)
        self.engine = self.store.engines['p1']
        self.bucket, self.version_id = support.unique(), 'c' * 32

    def connect(self, **account):
        import pymysql
        params = dict(self.engine.params, autocommit=False, client_flag=0, **account)
        return pymysql.connect(database=self.engine.database, **params)

    def lock_waits(self, monitor):
        with monitor.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'")
            return cursor.fetchone()[0]

    def test_a_version_committed_while_gc_deletes_its_chunks_keeps_them(self):
        for seq in range(2):
            self.engine.write_chunk(self.bucket, 'big', self.version_id, seq, b'x' * 1024)
        version = Version.new({}, (self.engine.actor, 1), b'', 'application/octet-stream',
                              version_id=self.version_id, size=2048, chunk_size=1024, chunk_source=self.engine)
        holder, monitor = self.connect(), self.connect(user='root', password='')   # INNODB_TRX needs PROCESS
        self.addCleanup(holder.close)
        self.addCleanup(monitor.close)
        with holder.cursor() as cursor:   # holds the chunk rows, as a slow writer of them would
            cursor.execute('SELECT seq FROM chunks WHERE version_id = %s FOR UPDATE', (self.version_id.encode(),))
        outcomes = {}

        def run(name, call):
            try:
                outcomes[name] = call()
            except Exception as e:   # recorded, and checked below
                outcomes[name] = e
        gc = threading.Thread(target=run, args=('gc', lambda: self.engine.collect_chunks(
            time.time_ns() // 1000 + 10 ** 6, 100)))
        gc.start()
        self.assertTrue(support.wait_until(lambda: self.lock_waits(monitor) >= 1, 10))   # gc waits for the lock
        write = threading.Thread(target=run, args=('write', lambda: self.engine.coordinate(
            self.bucket, 'big', lambda held: version)))
        write.start()
        write.join(1.0)   # today's coordinator commits at once; one that locks the chunks waits
        holder.rollback()
        gc.join(30)
        write.join(30)
        self.assertFalse(gc.is_alive() or write.is_alive())
        self.assertFalse(isinstance(outcomes['gc'], Exception), outcomes)
        held = [v.version_id for v in self.engine.read(self.bucket, 'big')]
        if held:   # the version was stored: its chunks must be there
            self.assertEqual(self.engine.chunks_held(self.version_id), 2, outcomes)
        else:      # or it was refused, as its chunks had gone
            self.assertIsInstance(outcomes['write'], Exception, outcomes)


class TombstoneAge:
    """gc reaps a tombstone by its age: a front end whose clock is an hour
    behind must not have its deletes reaped at once."""

    def setUp(self):
        self.partitions = self.make_partitions()
        self.store = support.open_store(self.partitions)
        self.addCleanup(self.store.close)
        self.bucket = support.unique()

    def test_a_tombstone_is_dated_no_earlier_than_its_coordinators_clock(self):
        key = 'k'
        owners = self.store.placement(self.bucket, key)[0]
        self.store.put(self.bucket, key, b'v', 'text/plain', w=3)
        started = time.time_ns() // 1000
        engine = self.store.engines[owners[0]]

        def delete_from_a_slow_clock(held):
            tombstone = Version.new(context_of(held), next_dot(engine.actor, held, {}), b'', '', deleted=True)
            tombstone.modified -= 3600 * 10 ** 6   # made by a front end whose clock is an hour behind
            return tombstone
        _, tombstone = engine.coordinate(self.bucket, key, delete_from_a_slow_clock)
        self.assertGreaterEqual(tombstone.modified, started - 10 ** 6)
        for owner in owners[1:]:
            self.store.engines[owner].apply(self.bucket, key, tombstone)
        results, _, _ = sync_once(config_of(self.partitions, {'tombstone_grace': 600}), 'gc')
        self.assertEqual(results['gc'].counts['tombstones_reaped'], 0, results['gc'].summary)
        self.assertTrue(all(self.store.engines[o].read(self.bucket, key)[0].deleted for o in owners))


class TestTombstoneAgeOnSQLite(TombstoneAge, OnSQLite):
    pass


class TestTombstoneAgeOnMariaDB(TombstoneAge, OnMariaDB):
    pass
