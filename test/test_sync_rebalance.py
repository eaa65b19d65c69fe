"""The reconciler's rebalance on real MariaDB partitions: a partition added, then
one removed, keys and their chunks moved, nothing lost while front ends read
and write."""
import random
import threading
import time

import sync

from test.sync_support import SyncCase, config_of, sync_once


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

    def test_a_store_placed_by_the_vnode_ring_moves_to_the_balanced_placement_readable_throughout(self):
        # The ring of earlier versions (placement = vnodes) is the recorded
        # view; the balanced placement is a view change like any other.
        keys = ['b%d' % i for i in range(1200)]
        old = self.open(self.partitions, placement='vnodes')
        self.put_all(keys, store=old, w=3)
        self.assertEqual(sync_once(config_of(self.partitions, placement='vnodes'))[2], sync.CONVERGED)
        front = self.open(self.partitions, r=1)   # balanced, the default
        moved = [k for k in keys if set(front.ring.preference_list(self.bucket, k, 3))
                 != set(old.ring.preference_list(self.bucket, k, 3))]
        self.assertGreater(len(moved), 100)
        stop, errors, reads = threading.Event(), [], [0]

        def reader(seed):
            rng = random.Random(seed)
            while not stop.is_set():
                key = rng.choice(moved)
                try:
                    got = [v.value for v in front.get(self.bucket, key).current]
                except Exception as e:
                    errors.append('%s: %r' % (key, e))
                    continue
                reads[0] += 1
                if got != [key.encode()]:
                    errors.append('%s read as %r' % (key, got))

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        try:
            results, _, status = sync_once(config_of(self.partitions, {'sync_batch_size': 50}))
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(errors, [])
        self.assertGreater(reads[0], 0)
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertEqual((results['rebalance'].counts['epoch'], results['rebalance'].counts['state']),
                         (2, 'complete'))
        self.assertConverged(front, keys, {k: k.encode() for k in keys})
        self.assertEqual(sum(front.keys_per_partition().values()), 3 * len(keys))
        self.assertEqual(front.rebalance_status()['configuration_matches'], True)

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
