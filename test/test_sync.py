"""The reconciler's jobs (sync.py: repair, hints, gc) on real MariaDB partitions,
and on SQLite; what a run costs; the digests and arcs it compares.  Helpers and
SyncCase: sync_support.py.  View changes: test_sync_rebalance.py; runs killed or
overlapping: test_sync_runs.py."""
import configparser
import json
import os
import random
import sys
import time
import unittest

from kvstore import configuration
import sync

from datastore import Datastore
from kvstore.coordinator.ring import RING_SIZE
from kvstore.errors import NotFound
from kvstore.coordinator.ring import key_point
from test import support
from test.mariadb import shared_cluster
from kvstore.coordinator.versions import Version
from test.sync_support import (SyncCase, bulk_load, config_of, crash_after_commit, holdings, run_command,
                               sync_once, write_config)

BENCH_KEYS = int(os.environ.get('SYNC_BENCH_KEYS', 100000))


class TestSyncJobs(SyncCase):
    def test_a_lazy_write_that_reached_every_replica_drops_its_pending_marker(self):
        # w=2 of 3: each write leaves a marker on its coordinator until the third
        # replica has it; settled markers are dropped in batches, not one by one.
        self.put_all(['lazy-settled-%d' % i for i in range(50)], w=2)
        pending = lambda: sum(e.pending_count() for e in self.store.engines.values())   # noqa: E731
        self.assertTrue(support.wait_until(lambda: pending() == 0, 10), '%d markers left' % pending())
        self.assertConverged(self.store, ['lazy-settled-%d' % i for i in range(50)])

    def test_lazy_writes_converge_after_one_run_that_pushes_only_them(self):
        self.put_all(['settled-%d' % i for i in range(100)], w=3)
        lazy = {'lazy-%d' % i: crash_after_commit(self.store, self.bucket, 'lazy-%d' % i, b'lazy')
                for i in range(200)}
        self.assertEqual(sum(e.pending_count() for e in self.store.engines.values()), 200)
        results, meter, status = sync_once(self.config, 'repair')
        self.assertEqual(status, sync.CONVERGED)
        repair = results['repair']
        self.assertEqual(repair.counts['pending_pushed'], 200)
        self.assertEqual(repair.counts['differing'], 0)   # nothing left for anti-entropy
        self.assertEqual(sum(e.pending_count() for e in self.store.engines.values()), 0)
        # Each lazy key was read on its coordinator and two replicas, then written twice.
        self.assertLessEqual(meter.rows_read, 200 * 5)
        self.assertEqual(meter.rows_written, 200 * 3)
        self.assertConverged(self.store, ['settled-%d' % i for i in range(100)] + list(lazy))
        for key, version in lazy.items():
            self.assertEqual(self.store.get(self.bucket, key, r=3).versions[0].version_id, version.version_id)

    def test_a_partition_restored_from_an_old_backup_converges(self):
        keys = ['k%d' % i for i in range(300)]
        self.put_all(keys, w=3)
        server = self.cluster.servers[1]   # p2
        database = self.config.partitions[1].database
        with server.connect(database=database) as conn, conn.cursor() as cursor:
            cursor.execute('CREATE TABLE backup_objects AS SELECT * FROM objects')
        updated = {k: k.encode() + b'-2' for k in keys[:50]}
        for key, value in updated.items():
            self.store.put(self.bucket, key, value, 'text/plain', w=3)
        for key in keys[50:80]:
            self.store.delete(self.bucket, key, w=3)
        created = ['new-%d' % i for i in range(40)]
        self.put_all(created, w=3)
        with server.connect(database=database) as conn, conn.cursor() as cursor:
            cursor.execute('DELETE FROM objects')
            cursor.execute('INSERT INTO objects SELECT * FROM backup_objects')
            conn.commit()
        # Restored without new-incarnation: the run finds it, mints one, and says so.
        results, meter, status = sync_once(self.config)
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertIn('p2 now writes as', results['restored'].summary)
        self.assertGreater(results['repair'].counts['keys_repaired'], 0)
        values = dict({k: k.encode() for k in keys + created}, **updated)
        live = [k for k in keys + created if k not in keys[50:80]]
        self.assertConverged(self.store, keys + created, {k: values[k] for k in live})
        for key in keys[50:80]:
            self.assertEqual(self.store.get(self.bucket, key, r=3).current, [])
        # The next run finds nothing to do.
        results, _, status = sync_once(self.config)
        self.assertEqual((status, results['repair'].counts['keys_repaired']), (sync.CONVERGED, 0))

    def test_hints_are_handed_off_once_their_owner_is_back(self):
        down = 'p4'
        keys = [k for k in ('h%d' % i for i in range(200))
                if down in self.store.ring.preference_list(self.bucket, k, 3)][:40]
        self.cluster.servers[3].kill()
        written = self.put_all(keys)
        held = sum(n for e in self.store.engines.values() if e.name != down
                   for n, _ in e.hint_counts().values())
        self.assertEqual(held, len(keys))
        results, _, status = sync_once(self.config, 'hints')
        self.assertEqual(status, sync.WORK_LEFT)
        self.assertEqual(results['hints'].waiting, {down: len(keys)})
        self.assertIn('%d waiting for %s' % (len(keys), down), results['hints'].summary)
        self.cluster.servers[3].restart()
        results, _, status = sync_once(self.config, 'hints')
        self.assertEqual((status, results['hints'].counts['delivered']), (sync.CONVERGED, len(keys)))
        self.assertEqual(results['hints'].summary, 'hints: %d delivered' % len(keys))
        fresh = self.open(self.partitions)   # this store's pooled connections died with the server
        for key in keys:
            self.assertEqual([v.version_id for v in fresh.engines[down].read(self.bucket, key)],
                             [written[key].version_id])
        self.assertEqual(sum(sum(n for n, _ in e.hint_counts().values()) for e in fresh.engines.values()), 0)

    def test_tombstones_are_reaped_only_when_every_owner_holds_them_and_the_grace_has_passed(self):
        keys = ['t%d' % i for i in range(30)]
        self.put_all(keys, w=3)
        for key in keys:
            self.store.delete(self.bucket, key, w=3)
        # A tombstone one owner lacks (its write had not got there yet).
        partial = 'partial'
        owners = self.store.ring.preference_list(self.bucket, partial, 3)
        self.put_all([partial], w=3)
        tombstone = Version.new(self.store.engines[owners[0]].read(self.bucket, partial)[0].full_clock,
                                (owners[0], 2), b'', '', deleted=True)
        for owner in owners[:2]:
            self.store.engines[owner].apply(self.bucket, partial, tombstone)
        # A tombstone whose key has a hint waiting somewhere.
        hinted = keys[0]
        hinted_owners = self.store.ring.preference_list(self.bucket, hinted, 3)
        stranger = next(p for p in self.store.engines if p not in hinted_owners)
        old = Version.new({}, (hinted_owners[0], 1), b'old', 'text/plain')
        self.store.engines[stranger].store_hint(hinted_owners[0], self.bucket, hinted, old)

        young = config_of(self.partitions, {'tombstone_grace': 3600})
        results, _, _ = sync_once(young, 'gc')
        self.assertEqual(results['gc'].counts['tombstones_reaped'], 0)

        ready = config_of(self.partitions, {'tombstone_grace': 0})
        self.cluster.servers[2].kill()
        results, _, status = sync_once(ready, 'gc')
        self.assertEqual((status, results['gc'].counts['tombstones_reaped']), (sync.WORK_LEFT, 0))
        self.cluster.servers[2].restart()
        fresh = self.open(self.partitions)   # this store's pooled connections died with the server

        results, _, status = sync_once(ready, 'gc')
        self.assertEqual(results['gc'].counts['tombstones_reaped'], len(keys) - 1)
        self.assertEqual(results['gc'].counts['tombstones_kept'], 2)   # the partial one, the hinted one
        self.assertEqual(status, sync.CONVERGED)
        held = holdings(fresh)
        self.assertEqual(sorted(k for b, k in held if b == self.bucket), sorted([hinted, partial]))
        for key in keys[1:]:
            with self.assertRaises(NotFound):
                fresh.delete(self.bucket, key)
        self.assertEqual(fresh.list_keys(self.bucket).keys, [])
        # Once repaired the partial tombstone goes too.
        results, _, status = sync_once(ready, 'repair', 'gc')
        self.assertEqual(results['gc'].counts['tombstones_reaped'], 1)
        self.assertEqual(sorted(k for b, k in holdings(fresh) if b == self.bucket), [hinted])

    def test_gc_removes_chunks_no_version_points_to_and_keeps_the_others(self):
        store = self.open(self.partitions, chunk_size=1024)
        big, replaced = bytes(range(256)) * 20, b'x' * 3000
        store.put(self.bucket, 'big', big, 'application/octet-stream', w=3)
        store.put(self.bucket, 'replaced', replaced, 'application/octet-stream', w=3)
        store.put(self.bucket, 'replaced', b'small now', 'text/plain', w=3)   # its chunks are garbage
        owner = store.ring.preference_list(self.bucket, 'big', 3)[0]
        store.engines[owner].write_chunk(self.bucket, 'cut-off', 'f' * 32, 0, b'an upload that died')
        chunked = lambda: sum(e.chunks_held(v) for e in store.engines.values()   # noqa: E731
                              for v in ('f' * 32,))
        self.assertEqual(chunked(), 1)
        results, _, status = sync_once(config_of(self.partitions, {'chunk_grace': 3600}, chunk_size=1024), 'gc')
        self.assertEqual((status, results['gc'].counts['chunked_versions_removed']), (sync.CONVERGED, 0))
        results, _, status = sync_once(config_of(self.partitions, {'chunk_grace': 0}, chunk_size=1024), 'gc')
        self.assertEqual(status, sync.CONVERGED)
        self.assertEqual(results['gc'].counts['chunked_versions_removed'], 1 + 3)   # the cut-off upload, 3 replicas
        self.assertEqual(chunked(), 0)
        self.assertIn('chunks of 4 versions removed', results['gc'].summary)
        for name in store.ring.preference_list(self.bucket, 'big', 3):
            version = store.engines[name].read(self.bucket, 'big')[0]
            self.assertEqual(b''.join(store.engines[name].iter_value(version)), big)

    def test_dry_run_changes_nothing_and_json_reports_every_job(self):
        keys = ['d%d' % i for i in range(200)]
        self.put_all(keys, w=3)
        self.store.engines['p1'].drop_keys(self.bucket)
        before = holdings(self.store)
        path = write_config(os.path.join(support.TemporaryDirectory().path, 'sync.cfg'), self.partitions)
        done = run_command(path, '--dry-run', '--json')
        self.assertEqual(done.returncode, sync.WORK_LEFT, done.stderr)
        report = json.loads(done.stdout)
        # p1 lost versions it coordinated, its incarnation kept: found, as a restore is.
        self.assertEqual(sorted(report['jobs']), sorted(sync.JOBS + ('restored',)))
        self.assertIn('p1 would get a new incarnation', report['jobs']['restored']['summary'])
        self.assertEqual((report['status'], report['exit'], report['dry_run']), ('work left', 1, True))
        self.assertGreater(report['jobs']['repair']['counts']['keys_repaired'], 0)
        self.assertEqual(holdings(self.store), before)
        done = run_command(path)   # it mints p1 a new incarnation, and repairs
        self.assertEqual(done.returncode, sync.CONVERGED, done.stdout + done.stderr)
        lines = [line.split(' ', 1)[1] for line in done.stdout.splitlines()]   # after the time
        self.assertEqual([line.split(':')[0] for line in lines], ['restored'] + list(sync.JOBS) + ['sync'])
        self.assertTrue(lines[-1].startswith('sync: converged'), lines)
        self.assertIn('new-incarnation p1', done.stderr)
        self.assertConverged(self.store, keys)
        done = run_command(path, '--json')
        self.assertEqual((done.returncode, json.loads(done.stdout)['status']), (0, 'converged'))

    def test_a_bad_configuration_is_an_error(self):
        path = os.path.join(support.TemporaryDirectory().path, 'bad.cfg')
        with open(path, 'w') as f:
            f.write('[store]\nreplicas = 3\n')
        done = run_command(path)
        self.assertEqual(done.returncode, sync.ERROR)
        self.assertIn('no partitions are configured', done.stderr)


class TestAntiEntropyCost(SyncCase):
    """SYNC_BENCH_KEYS=1000000 runs it at a million keys (the test servers have
    a 32 MB buffer pool, so it then reads from disk)."""

    def setUp(self):
        super().setUp()
        self.config = config_of(self.partitions, read_timeout=60.0)
        self.store = self.open(self.partitions, read_timeout=60.0)

    def test_with_100000_keys_and_10_divergent_a_run_reads_far_less_than_a_full_scan(self):
        keys = ['key-%07d' % i for i in range(BENCH_KEYS)]
        started = time.monotonic()
        versions = bulk_load(self.store, self.bucket, keys)
        loaded = time.monotonic() - started
        divergent = random.Random(4).sample(keys, 10)
        for key in divergent:   # a write that reached only its coordinator
            owner = self.store.ring.preference_list(self.bucket, key, 3)[0]
            newer = Version.new(versions[key].full_clock, (owner, 2), b'newer', 'text/plain')
            self.store.engines[owner].apply(self.bucket, key, newer)
        started = time.monotonic()
        results, meter, status = sync_once(self.config, 'repair')
        took = time.monotonic() - started
        full_scan = 3 * len(keys)
        sys.stderr.write('\n  %d keys (loaded in %.1fs): repair took %.2fs, read %d rows (a full scan reads %d), '
                         'wrote %d, the partitions digested %d\n'
                         % (len(keys), loaded, took, meter.rows_read, full_scan, meter.rows_written,
                            meter.rows_digested))
        self.assertEqual(status, sync.CONVERGED)
        self.assertEqual(results['repair'].counts['keys_repaired'], 10)
        self.assertEqual(meter.rows_written, 20)
        self.assertLess(meter.rows_read, full_scan / 100)
        for key in divergent:
            replicas = [self.store.engines[p].read(self.bucket, key)
                        for p in self.store.ring.preference_list(self.bucket, key, 3)]
            self.assertEqual([[v.value for v in held] for held in replicas], [[b'newer']] * 3)


class TestSyncOnSQLite(unittest.TestCase):
    def setUp(self):
        self.directory = support.TemporaryDirectory()
        self.partitions = support.sqlite_partitions(self.directory.path)
        self.config = config_of(self.partitions)
        self.store = Datastore(self.config)
        self.bucket = support.unique()

    def tearDown(self):
        self.store.close()
        self.directory.remove()

    def test_lazy_writes_divergence_and_a_new_partition_converge(self):
        keys = ['s%d' % i for i in range(300)]
        for key in keys:
            self.store.put(self.bucket, key, key.encode(), 'text/plain', w=3)
        self.store.engines['p2'].drop_keys(self.bucket)   # a replica lost
        lazy = ['lazy%d' % i for i in range(20)]
        for key in lazy:
            crash_after_commit(self.store, self.bucket, key, b'lazy')
        keys += lazy
        results, meter, status = sync_once(self.config)
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        five = support.sqlite_partitions(self.directory.path, count=5)
        results, _, status = sync_once(config_of(five))
        self.assertEqual((status, results['rebalance'].counts['epoch']), (sync.CONVERGED, 2))
        bigger = Datastore(config_of(five))
        try:
            self.assertEqual(sum(bigger.keys_per_partition().values()), 3 * len(keys))
            held = holdings(bigger)
            for key in keys:
                self.assertEqual(sorted(held[(self.bucket, key)]),
                                 sorted(bigger.ring.preference_list(self.bucket, key, 3)))
                self.assertEqual(len({tuple(v) for v in held[(self.bucket, key)].values()}), 1)
            for key in keys:
                self.assertEqual([v.value for v in bigger.get(self.bucket, key).current],
                                 [b'lazy' if key in lazy else key.encode()])
        finally:
            bigger.close()

    def test_the_lock_is_held_by_one_run_at_a_time(self):
        first, second = sync.ClusterLock(self.store), sync.ClusterLock(self.store)
        self.assertEqual(first.acquire(), 'taken')
        self.assertEqual(second.acquire(), 'busy')
        first.release()
        self.assertEqual(second.acquire(), 'taken')
        second.release()


class TestDigestsAndArcs(unittest.TestCase):
    def test_sqlite_and_mariadb_digest_the_same_rows_alike(self):
        directory = support.TemporaryDirectory()
        partitions = dict(support.mariadb_partitions(shared_cluster(), count=1),
                          s1={'engine': 'sqlite', 'path': os.path.join(directory.path, 's1.sqlite3')})
        store = Datastore(config_of(partitions, replicas=1, r=1, w=1))
        try:
            items = [('b', 'k%d' % i, Version.new({}, ('p1', 1), b'%d' % i, 'text/plain')) for i in range(500)]
            for engine in store.engines.values():
                engine.apply_many(items)
            mine, theirs = (store.engines[n].range_digests(0, RING_SIZE, 16) for n in ('p1', 's1'))
            self.assertEqual(mine, theirs)
            self.assertEqual(sum(n for n, _ in mine), 500)
            self.assertEqual(store.engines['p1'].range_digest(0, RING_SIZE),
                             store.engines['s1'].range_digest(0, RING_SIZE))
            store.engines['s1'].delete_versions('b', 'k7', [items[7][2].version_id])
            self.assertNotEqual(store.engines['p1'].range_digest(0, RING_SIZE),
                                store.engines['s1'].range_digest(0, RING_SIZE))
        finally:
            store.close()
            directory.remove()

    def test_arcs_cover_the_ring_and_give_each_key_its_owners(self):
        directory = support.TemporaryDirectory()
        store = Datastore(support.build_config(support.sqlite_partitions(directory.path, count=5)))
        try:
            found = store.ring.arcs(3)
            self.assertEqual(found[0][0], 0)
            self.assertEqual(found[-1][1], RING_SIZE)
            self.assertTrue(all(a[1] == b[0] for a, b in zip(found, found[1:])))
            for i in range(2000):
                point = key_point('b', 'k%d' % i)
                owners = next(o for lo, hi, o in found if lo <= point < hi)
                self.assertEqual(owners, sorted(store.ring.preference_list('b', 'k%d' % i, 3)))
        finally:
            store.close()
            directory.remove()

    def test_sync_settings_are_read_from_the_sync_section(self):
        parser = configparser.ConfigParser()
        parser.read_string('[store]\nreplicas = 1\n[sync]\nbatch_size = 50\nrate_limit = 2000\ntombstone_grace = 60\n'
                           'chunk_grace = 30\n'
                           '[partition-p1]\nengine = sqlite\npath = /tmp/kvstore-test-cfg/p1.sqlite3\n')
        config = configuration.parse(parser, '/tmp/x.cfg')
        self.assertEqual((config.sync_batch_size, config.sync_rate_limit, config.tombstone_grace,
                          config.chunk_grace), (50, 2000, 60, 30))
        parser.read_string('[partition-p1]\nweight = 0\n')
        with self.assertRaisesRegex(configuration.ConfigError, 'weight'):
            configuration.parse(parser, '/tmp/x.cfg')
