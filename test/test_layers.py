"""The coordinator's layers (kvstore/coordinator/), each used by itself over
SQLite partitions, composed by hand rather than by a Datastore: what each
promises its callers.
"""
import concurrent.futures
import unittest

from kvstore.coordinator.buckets import BucketRegistry
from kvstore.coordinator.health import Health
from kvstore.coordinator.listing import Listing
from kvstore.coordinator.placement import Placement
from kvstore.coordinator.replicas import Replicas
from kvstore.coordinator.versions import Version, next_dot
from kvstore.coordinator.views import ViewRecords
from kvstore.engines import PartitionError, open_engine
from kvstore.errors import BucketNotEmpty
from test.support import TemporaryDirectory, build_config, sqlite_partitions, unique


class Layers:
    """The partitions of a configuration and the layers every other builds on."""

    def __init__(self, directory, count=4):
        self.config = build_config(sqlite_partitions(directory, count))
        self.engines = {p.name: open_engine(p, self.config) for p in self.config.partitions}
        self.health = Health(self.engines)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        self.replicas = Replicas(self.engines, self.health, self.executor, timeout=3.0, read_timeout=2.0,
                                 on_recovered=lambda name: None)
        self.views = ViewRecords(self.config, self.replicas)
        self.placement = Placement(self.config, self.replicas, self.views)
        self.listing = Listing(self.config, self.replicas)

    def buckets(self):
        return BucketRegistry(self.config, self.replicas, self.placement, self.listing)

    def store(self, bucket, key, value, on):
        """A version of key written straight into the partitions named."""
        version = Version.new({}, next_dot(self.engines[on[0]].actor, [], {}), value, 'text/plain')
        for name in on:
            self.engines[name].apply(bucket, key, version)
        return version

    def close(self):
        self.executor.shutdown(wait=True)
        for engine in self.engines.values():
            engine.close()


class LayerTest(unittest.TestCase):
    def setUp(self):
        self.directory = TemporaryDirectory()
        self.layers = Layers(self.directory.path)
        self.bucket = unique()

    def tearDown(self):
        self.layers.close()
        self.directory.remove()


class TestReplicas(LayerTest):

    def test_a_partition_believed_down_is_not_called(self):
        self.layers.health.failed('p1', 'a test says so')
        with self.assertRaises(PartitionError) as raised:
            self.layers.replicas.call('p1', 'read', self.bucket, 'k')
        self.assertEqual(raised.exception.reason, 'down')

    def test_a_fan_out_replaces_a_failed_candidate_by_the_next(self):
        self.layers.health.failed('p1', 'a test says so')
        read = lambda p: self.layers.replicas.call(p, 'read', self.bucket, 'k')   # noqa: E731
        results, failures = self.layers.replicas.fan_out(['p1', 'p2', 'p3', 'p4'], read, launch=2, needed=2)
        self.assertEqual((sorted(results), failures), (['p2', 'p3'], {'p1': 'down'}))

    def test_queries_sent_at_once_answer_from_every_partition(self):
        self.layers.store(self.bucket, 'k', b'v', on=['p2', 'p4'])
        results, failures = self.layers.replicas.at_once(['p1', 'p2', 'p3', 'p4'], 'read', self.bucket, 'k')
        self.assertEqual(failures, {})
        self.assertEqual({p: [v.value for v in held] for p, held in results.items()},
                         {'p1': [], 'p2': [b'v'], 'p3': [], 'p4': [b'v']})

    def test_a_partition_answering_again_is_reported_recovered(self):
        health, recovered = Health(self.layers.engines, backoff=0.0), []   # no backoff: a probe goes at once
        replicas = Replicas(self.layers.engines, health, self.layers.executor, timeout=3.0, read_timeout=2.0,
                            on_recovered=recovered.append)
        health.failed('p3', 'a test says so')
        replicas.call('p3', 'read', self.bucket, 'k')
        replicas.call('p3', 'read', self.bucket, 'k')
        self.assertEqual(recovered, ['p3'])


class TestPlacement(LayerTest):

    def test_owners_are_the_first_n_partitions_of_the_walk_and_fallbacks_the_rest(self):
        preference, fallbacks = self.layers.placement.of(self.bucket, 'k')
        self.assertEqual(preference, self.layers.placement.ring.preference_list(self.bucket, 'k', 3))
        self.assertEqual(sorted(preference + fallbacks), ['p1', 'p2', 'p3', 'p4'])

    def test_a_recorded_view_other_than_the_configured_one_gives_previous_owners(self):
        self.assertEqual(self.layers.views.record_view()[0]['epoch'], 1)
        five = Layers(self.directory.path, count=5)   # p5 joins the same partitions
        try:
            moved = [k for k in ('k%d' % i for i in range(200))
                     if 'p5' in five.placement.of(self.bucket, k)[0]]
            self.assertGreater(len(moved), 10)

            def previous_owners(key):
                return five.placement.previous_owners(self.bucket, key, five.placement.of(self.bucket, key)[0])
            expected = {key: [p for p in self.layers.placement.of(self.bucket, key)[0]
                              if p not in five.placement.of(self.bucket, key)[0]] for key in moved}
            self.assertEqual({key: previous_owners(key) for key in moved}, expected)
            # Recorded, its rebalance under way: the ring before it still places keys.
            view = five.views.record_view()[0]
            five.placement.forget_previous_rings()
            self.assertEqual({key: previous_owners(key) for key in moved}, expected)
            # Complete: only the configured ring does.
            five.views.complete_view(view)
            five.placement.forget_previous_rings()
            self.assertEqual({key: previous_owners(key) for key in moved}, {key: [] for key in moved})
        finally:
            five.close()

    def test_a_read_that_finds_nothing_on_the_owners_finds_the_previous_owners_versions(self):
        self.layers.views.record_view()
        five = Layers(self.directory.path, count=5)
        try:
            key = next(k for k in ('k%d' % i for i in range(200))
                       if five.placement.of(self.bucket, k)[0][0] == 'p5')
            old_owners = self.layers.placement.of(self.bucket, key)[0]
            written = self.layers.store(self.bucket, key, b'old', on=old_owners)
            preference = five.placement.of(self.bucket, key)[0]
            found = five.placement.read_previous_owners(self.bucket, key, preference, {'p5': []})
            self.assertEqual([v.version_id for v in found], [written.version_id])
        finally:
            five.close()


class TestBucketRegistry(LayerTest):

    def test_properties_are_stored_on_the_owners_and_seen_by_another_front_end(self):
        mine, theirs = self.layers.buckets(), self.layers.buckets()
        self.assertIsNone(theirs.properties(self.bucket))
        self.assertTrue(mine.create(self.bucket, {'conflicts': 'lww'}))
        self.assertFalse(mine.create(self.bucket, {'r': 1}))
        self.assertEqual(theirs.properties(self.bucket), {'conflicts': 'lww', 'r': 1})
        owners = self.layers.placement.bucket_owners(self.bucket)
        self.assertEqual([self.layers.engines[p].read_bucket(self.bucket) is not None for p in owners],
                         [True] * 3)
        self.assertIn(self.bucket, theirs.names())

    def test_a_front_end_serves_cached_properties_for_a_few_seconds(self):
        mine, theirs = self.layers.buckets(), self.layers.buckets()
        mine.create(self.bucket, {'conflicts': 'lww'})
        self.assertEqual(theirs.properties_cached(self.bucket)['conflicts'], 'lww')
        mine.create(self.bucket, {'conflicts': 'siblings'})
        self.assertEqual(theirs.properties_cached(self.bucket)['conflicts'], 'lww')
        self.assertEqual(theirs.properties(self.bucket)['conflicts'], 'siblings')

    def test_a_bucket_holding_keys_exists_and_is_deleted_only_when_forced(self):
        registry = self.layers.buckets()
        self.layers.store(self.bucket, 'k', b'v', on=self.layers.placement.of(self.bucket, 'k')[0])
        self.assertEqual(registry.properties(self.bucket), {'conflicts': 'siblings'})
        with self.assertRaises(BucketNotEmpty):
            registry.delete(self.bucket)
        registry.delete(self.bucket, force=True)
        self.assertIsNone(registry.properties(self.bucket))
        self.assertEqual(self.layers.listing.list_keys(self.bucket).keys, [])
