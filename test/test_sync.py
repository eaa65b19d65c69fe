"""The reconciler (sync.py) on real MariaDB partitions, and on SQLite.

Every test uses databases of its own on the shared four-server cluster (a
fifth partition is a second database on the first server), writes through the
store or, to stage what a crash or a restore leaves, straight into one
partition's engine, then runs sync.py in process (run()) or as a command.
Servers a test kills are restarted before the next test.
"""
import collections
import concurrent.futures
import configparser
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
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
from kvstore.coordinator.versions import Version, context_of, next_dot

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNC = os.path.join(HERE, 'sync.py')
FAST = dict(connect_timeout=0.5, read_timeout=2.0, backoff=0.3, max_backoff=1.0)
BENCH_KEYS = int(os.environ.get('SYNC_BENCH_KEYS', 100000))


def config_of(partitions, sync_fields=None, **store):
    config = support.build_config(partitions, **dict(FAST, **store))
    return dataclasses.replace(config, **(sync_fields or {}))


def write_config(path, partitions, sync_fields=None, **store):
    """A configuration file for sync.py run as a command (WEBPY_ENV=test adds test_)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser['store'] = {k: str(v) for k, v in dict(support.STORE_DEFAULTS, **dict(FAST, **store)).items()}
    parser['sync'] = {k: str(v) for k, v in (sync_fields or {}).items()}
    for name, fields in partitions.items():
        parser['partition-' + name] = {k: str(v) for k, v in fields.items()}
    with open(path, 'w') as f:
        parser.write(f)
    return path


def run_command(path, *args, wait=True):
    command = [sys.executable, SYNC, '--config', path, '--no-progress'] + list(args)
    env = dict(os.environ, WEBPY_ENV='test')
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    return subprocess.run(command, capture_output=True, env=env, text=True, timeout=300)


def sync_once(config, *jobs, **options):
    """One in-process run, with a Datastore of its own (as a cron run has):
    ({job: JobResult}, Meter, exit status)."""
    store = Datastore(config)
    try:
        results, meter = sync.run(store, jobs or sync.JOBS, **options)
    finally:
        store.close()
    return {r.name: r for r in results}, meter, sync.exit_status(results)


def holdings(store):
    """{(bucket, key): {partition: sorted version ids}} over every partition."""
    found = collections.defaultdict(dict)
    for name, engine in store.engines.items():
        for bucket, key, version in engine.scan_points(0, RING_SIZE):
            found[(bucket, key)].setdefault(name, []).append(version.version_id)
    for held in found.values():
        for ids in held.values():
            ids.sort()
    return found


def bulk_load(store, bucket, keys, value=b'v'):
    """Write new keys on all their owners, exactly the rows a write with w=all
    leaves, with multi-row INSERTs (engine.insert_many): {key: Version}."""
    rows, versions = collections.defaultdict(list), {}
    for key in keys:
        owners = store.ring.preference_list(bucket, key, store.n)
        versions[key] = Version.new({}, (owners[0], 1), value, 'text/plain')
        for owner in owners:
            rows[owner].append((key, versions[key]))

    def load(name):
        for start in range(0, len(rows[name]), 2000):
            store.engines[name].insert_many([(bucket, k, v) for k, v in rows[name][start:start + 2000]])
    with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
        for done in [pool.submit(load, name) for name in rows]:
            done.result()
    return versions


def crash_after_commit(store, bucket, key, value):
    """What a lazy write (w < N) leaves when its front end dies after the
    coordinator committed and marked it pending, before any other replica took
    it: the version and a pending marker on the coordinator only."""
    coordinator = store.ring.preference_list(bucket, key, store.n)[0]

    def decide(held):
        seen = context_of(held)
        return Version.new(seen, next_dot(coordinator, held, seen), value, 'text/plain')
    held, version = store.engines[coordinator].coordinate(bucket, key, decide)
    store.engines[coordinator].mark_pending(bucket, key, version.version_id)
    return version


class SyncCase(unittest.TestCase):
    engine = 'mysql'

    def setUp(self):
        self.cluster = shared_cluster()
        self.partitions = support.mariadb_partitions(self.cluster)
        self.config = config_of(self.partitions)
        self.store = Datastore(self.config)
        self.bucket = support.unique()
        self.opened = [self.store]

    def tearDown(self):
        for store in self.opened:
            store.close()
        shared_cluster()   # restarts what a test killed

    def open(self, partitions, **store):
        opened = Datastore(config_of(partitions, **store))
        self.opened.append(opened)
        return opened

    def put_all(self, keys, store=None, **options):
        store = store or self.store
        return {key: store.put(self.bucket, key, key.encode(), 'text/plain', **options).version for key in keys}

    def assertConverged(self, store, keys, values=None):
        """Every key is on exactly its preference list, every replica holding
        the same versions; with values, the current value is that one."""
        held = holdings(store)
        for key in keys:
            owners = store.ring.preference_list(self.bucket, key, store.n)
            replicas = held.get((self.bucket, key), {})
            self.assertEqual(sorted(replicas), sorted(owners), key)
            self.assertEqual(len({tuple(ids) for ids in replicas.values()}), 1, (key, replicas))
            if values is not None and key in values:
                self.assertEqual([v.value for v in store.get(self.bucket, key).current], [values[key]], key)
        extra = {k for k in held if k[0] == self.bucket} - {(self.bucket, k) for k in keys}
        self.assertEqual(extra, set())


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
        results, meter, status = sync_once(self.config)
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertGreater(results['repair'].counts['keys_repaired'], 0)
        values = dict({k: k.encode() for k in keys + created}, **updated)
        live = [k for k in keys + created if k not in keys[50:80]]
        self.assertConverged(self.store, keys + created, {k: values[k] for k in live})
        for key in keys[50:80]:
            self.assertEqual(self.store.get(self.bucket, key, r=3).current, [])
        # The next run finds nothing to do.
        results, _, status = sync_once(self.config)
        self.assertEqual((status, results['repair'].counts['differing']), (sync.CONVERGED, 0))

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
        self.assertEqual(sorted(report['jobs']), sorted(sync.JOBS))
        self.assertEqual((report['status'], report['exit'], report['dry_run']), ('work left', 1, True))
        self.assertGreater(report['jobs']['repair']['counts']['keys_repaired'], 0)
        self.assertEqual(holdings(self.store), before)
        done = run_command(path)
        self.assertEqual(done.returncode, sync.CONVERGED, done.stdout + done.stderr)
        lines = [line.split(' ', 1)[1] for line in done.stdout.splitlines()]   # after the time
        self.assertEqual([line.split(':')[0] for line in lines], list(sync.JOBS) + ['sync'])
        self.assertTrue(lines[-1].startswith('sync: converged'), lines)
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


class TestSyncRuns(SyncCase):
    """sync.py as cron runs it: killed, and twice at once."""

    def wipe_a_replica(self, count):
        keys = ['w%d' % i for i in range(count)]
        bulk_load(self.store, self.bucket, keys)
        self.store.engines['p3'].drop_keys(self.bucket)
        return keys

    def test_killed_with_sigkill_mid_run_the_next_run_converges(self):
        keys = self.wipe_a_replica(3000)
        path = write_config(os.path.join(support.TemporaryDirectory().path, 'sync.cfg'), self.partitions,
                            {'rate_limit': 400, 'batch_size': 100})
        running = run_command(path, 'repair', wait=False)
        on_p3 = lambda: self.store.engines['p3'].count_keys()   # noqa: E731
        deadline = time.monotonic() + 30
        while on_p3() < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(running.pid, signal.SIGKILL)
        self.assertEqual(running.wait(), -signal.SIGKILL)
        running.stdout.close()
        running.stderr.close()
        copied = on_p3()
        expected = sum(1 for k in keys if 'p3' in self.store.ring.preference_list(self.bucket, k, 3))
        self.assertTrue(100 <= copied < expected, (copied, expected))
        done = run_command(write_config(path, self.partitions))
        self.assertEqual(done.returncode, sync.CONVERGED, done.stdout + done.stderr)
        self.assertEqual(on_p3(), expected)
        self.assertConverged(self.store, keys)   # one version per replica: nothing duplicated

    def test_a_second_run_while_one_holds_the_lock_skips_and_exits_0(self):
        self.wipe_a_replica(2000)
        path = write_config(os.path.join(support.TemporaryDirectory().path, 'sync.cfg'), self.partitions,
                            {'rate_limit': 1000, 'batch_size': 100})
        first = run_command(path, wait=False)
        server, database = self.cluster.servers[0], self.config.partitions[0].database
        with server.connect() as conn, conn.cursor() as cursor:
            def locked():
                cursor.execute('SELECT IS_USED_LOCK(%s)', ('%s.sync' % database,))
                return cursor.fetchone()[0] is not None
            deadline = time.monotonic() + 20
            while not locked() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertTrue(locked())
            second = run_command(path, '--json')
            third = run_command(path)
            self.assertIsNone(first.poll())   # the first is still at work
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertEqual(json.loads(second.stdout)['status'], 'skipped')
        self.assertEqual(third.returncode, 0)
        self.assertIn('skipping', third.stdout)
        out, err = first.communicate(timeout=120)
        self.assertEqual(first.returncode, sync.CONVERGED, out + err)


class TestViewChanges(SyncCase):
    def five(self):
        partitions = dict(self.partitions)
        partitions['p5'] = dict(partitions['p1'], database=partitions['p1']['database'] + '_p5')
        return partitions

    def test_adding_a_fifth_partition_then_removing_one_moves_keys_and_loses_none(self):
        keys = ['v%d' % i for i in range(1500)]
        values = {k: k.encode() for k in keys}
        self.put_all(keys, w=3)
        self.assertEqual(sync_once(self.config)[2], sync.CONVERGED)   # epoch 1
        before = {k: set(self.store.ring.preference_list(self.bucket, k, 3)) for k in keys}

        five = self.five()
        bigger = self.open(five)
        results, _, status = sync_once(config_of(five))
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertEqual((results['rebalance'].counts['epoch'], results['rebalance'].counts['state']),
                         (2, 'complete'))
        self.assertConverged(bigger, keys, values)
        counts = bigger.keys_per_partition()
        self.assertEqual(sum(counts.values()), len(keys) * 3)
        moved = sum(len(set(bigger.ring.preference_list(self.bucket, k, 3)) - before[k]) for k in keys)
        self.assertEqual(moved, counts['p5'])
        self.assertEqual(results['rebalance'].counts['keys_moved'], moved)
        self.assertTrue(0.12 < moved / (3 * len(keys)) < 0.28, moved)   # about a fifth
        status = bigger.rebalance_status()
        self.assertEqual((status['epoch'], status['state'], status['configuration_matches']), (2, 'complete', True))

        # p2 leaves: weight 0 keeps it reachable while its keys move away.
        without = dict(five, p2=dict(five['p2'], weight=0))
        smaller = self.open(without)
        held_by_p2 = counts['p2']
        results, _, status = sync_once(config_of(without))
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertEqual(results['rebalance'].counts['keys_moved'], held_by_p2)   # only its keys moved
        counts = smaller.keys_per_partition()
        self.assertEqual(counts['p2'], 0)
        self.assertEqual(sum(counts.values()), len(keys) * 3)
        self.assertConverged(smaller, keys, values)
        # The old four-partition configuration is now out of date: refused.
        results, _, status = sync_once(self.config)
        self.assertEqual(status, sync.ERROR)
        self.assertIn('out of date', results['view'].error)

    def test_large_values_move_with_their_chunks(self):
        store = self.open(self.partitions, chunk_size=1024)
        values = {'big%d' % i: bytes([i]) * (3000 + i) for i in range(40)}
        for key, value in values.items():
            store.put(self.bucket, key, value, 'application/octet-stream', w=3)
        self.assertEqual(sync_once(config_of(self.partitions, chunk_size=1024))[2], sync.CONVERGED)
        five = self.five()
        results, _, status = sync_once(config_of(five, chunk_size=1024))
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        bigger = self.open(five, chunk_size=1024)
        self.assertConverged(bigger, list(values))
        moved = [k for k in values if 'p5' in bigger.ring.preference_list(self.bucket, k, 3)]
        self.assertGreater(len(moved), 5)
        for key, value in values.items():
            for name in bigger.ring.preference_list(self.bucket, key, 3):
                engine = bigger.engines[name]
                self.assertEqual(b''.join(engine.iter_value(engine.read(self.bucket, key)[0])), value)

    def test_a_view_change_under_live_reads_and_writes_loses_nothing(self):
        keys = ['live%d' % i for i in range(800)]
        latest = {k: k.encode() for k in keys}
        self.put_all(keys, w=3)
        self.assertEqual(sync_once(self.config)[2], sync.CONVERGED)   # epoch 1
        five = self.five()
        # A front end with the new configuration; r=1 so that a key whose first
        # owner is new is read from the new owner alone unless it falls back.
        front = self.open(five, r=1)
        old_front = self.open(self.partitions)   # one not yet given the new configuration
        lock, stop, errors = threading.Lock(), threading.Event(), []
        written_by_old = {}

        def reader():
            rng = random.Random(1)
            while not stop.is_set():
                key = rng.choice(keys)
                with lock:
                    expected = latest[key]
                try:
                    got = [v.value for v in front.get(self.bucket, key).current]
                except Exception as e:
                    errors.append('%s: %r' % (key, e))
                    continue
                if expected not in got and not got:
                    errors.append('%s read as missing' % key)

        def writer(store, prefix, own):
            rng = random.Random(prefix)
            i = 0
            while not stop.is_set():
                i += 1
                key = rng.choice(keys) if own is None else '%s%d' % (prefix, i)
                value = ('%s-%d' % (key, i)).encode()
                try:
                    with lock:
                        store.put(self.bucket, key, value, 'text/plain')
                        (latest if own is None else own)[key] = value
                except Exception as e:
                    errors.append('write %s: %r' % (key, e))

        threads = [threading.Thread(target=reader) for _ in range(3)]
        threads += [threading.Thread(target=writer, args=(front, 'new', None)),
                    threading.Thread(target=writer, args=(old_front, 'old', written_by_old))]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            results, _, status = sync_once(config_of(five, {'sync_batch_size': 50}))
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(errors, [])
        self.assertEqual(results['rebalance'].counts['epoch'], 2)
        # Writes the out-of-date front end made after the run are on old owners:
        # the next run moves them.
        results, _, status = sync_once(config_of(five))
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        all_keys = keys + list(written_by_old)
        self.assertConverged(front, all_keys)
        self.assertEqual(sum(front.keys_per_partition().values()), 3 * len(all_keys))
        for key, value in dict(latest, **written_by_old).items():
            self.assertEqual([v.value for v in front.get(self.bucket, key, r=3).current], [value], key)

    def test_reads_fall_back_to_the_previous_owners_until_the_rebalance_is_complete(self):
        keys = ['f%d' % i for i in range(300)]
        self.put_all(keys, w=3)
        self.assertEqual(sync_once(self.config)[2], sync.CONVERGED)
        five = self.five()
        front = self.open(five, r=1)
        first_is_new = [k for k in keys if front.ring.preference_list(self.bucket, k, 3)[0] == 'p5']
        self.assertGreater(len(first_is_new), 10)
        # Before sync.py has recorded the new ring, and while it is recorded but
        # not yet rebalanced, the keys read through the previous owners.
        recorder = self.open(five)
        for step in ('configured', 'recorded'):
            if step == 'recorded':
                view, changed, _ = recorder.record_view()
                self.assertEqual((view['epoch'], view['state'], changed), (2, 'rebalancing', True))
                front._view_cache = (0.0, [])
                self.assertEqual(recorder.rebalance_status()['state'], 'rebalancing')
            for key in first_is_new[:10]:
                self.assertEqual([v.value for v in front.get(self.bucket, key).current], [key.encode()], step)
        # A write during the rebalance supersedes the value it did not see on its new owner.
        key = first_is_new[-1]
        front.put(self.bucket, key, b'rewritten', 'text/plain', w=3)
        results, _, status = sync_once(config_of(five))
        self.assertEqual(status, sync.CONVERGED)
        self.assertEqual([v.value for v in front.get(self.bucket, key, r=3).versions], [b'rewritten'])
        self.assertEqual(front.rebalance_status()['state'], 'complete')


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
