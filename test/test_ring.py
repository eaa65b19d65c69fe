"""Placement on the consistent-hash ring (ring.py).

What the ring promises: a key's replicas sit on N distinct partitions chosen
the same way every time; a partition joining or leaving moves only its share
of the keys (about 1/P of them), where `hash % P` would move most of them; a
partition's share follows its weight.
"""
import collections
import unittest

from kvstore.coordinator.ring import Ring, key_point

BUCKET = 'bucket'
KEYS = ['key-%05d' % i for i in range(20000)]
N = 3


def equal_weights(*names):
    return {name: 1 for name in names}


def primaries(ring):
    return [ring.preference_list(BUCKET, key, 1)[0] for key in KEYS]


class TestPreferenceList(unittest.TestCase):

    def setUp(self):
        self.ring = Ring(equal_weights('p1', 'p2', 'p3', 'p4', 'p5'))

    def test_preference_list_holds_n_distinct_partitions(self):
        for key in KEYS[:2000]:
            preference = self.ring.preference_list(BUCKET, key, N)
            self.assertEqual(len(preference), N, key)
            self.assertEqual(len(set(preference)), N, key)
            self.assertTrue(set(preference) <= {'p1', 'p2', 'p3', 'p4', 'p5'}, preference)

    def test_preference_list_is_deterministic_across_ring_instances(self):
        # A second ring built from the same weights (as another worker process
        # would build it) places every key the same way.
        other = Ring(dict(reversed(list(equal_weights('p1', 'p2', 'p3', 'p4', 'p5').items()))))
        for key in KEYS[:2000]:
            first = self.ring.preference_list(BUCKET, key, N)
            self.assertEqual(first, self.ring.preference_list(BUCKET, key, N), key)
            self.assertEqual(first, other.preference_list(BUCKET, key, N), key)

    def test_preference_list_is_the_first_n_partitions_of_the_walk(self):
        for key in KEYS[:2000]:
            walk = self.ring.walk(BUCKET, key)
            self.assertEqual(sorted(walk), ['p1', 'p2', 'p3', 'p4', 'p5'], key)
            for n in (1, 2, N, 5):
                self.assertEqual(self.ring.preference_list(BUCKET, key, n), list(walk[:n]), (key, n))

    def test_bucket_is_part_of_the_placement(self):
        # The same key name in two buckets is two keys, placed independently.
        differ = sum(self.ring.preference_list('a', key, N) != self.ring.preference_list('b', key, N)
                     for key in KEYS[:2000])
        self.assertGreater(differ, 1000)

    def test_a_ring_needs_a_partition(self):
        with self.assertRaises(ValueError):
            Ring({})


class TestAddingAPartition(unittest.TestCase):
    """Adding a fifth partition to four moves about a fifth of the keys."""

    @classmethod
    def setUpClass(cls):
        cls.before = Ring(equal_weights('p1', 'p2', 'p3', 'p4'))
        cls.after = Ring(equal_weights('p1', 'p2', 'p3', 'p4', 'p5'))

    def test_about_a_fifth_of_primaries_move_when_a_fifth_partition_joins(self):
        moved = sum(a != b for a, b in zip(primaries(self.before), primaries(self.after)))
        fraction = moved / len(KEYS)
        self.assertLessEqual(fraction, 0.30, 'too many primaries moved: %.3f' % fraction)
        self.assertGreaterEqual(fraction, 0.10, 'the new partition took too few keys: %.3f' % fraction)

    def test_primaries_only_move_to_the_new_partition(self):
        for key, a, b in zip(KEYS, primaries(self.before), primaries(self.after)):
            if a != b:
                self.assertEqual(b, 'p5', key)

    def test_about_a_fifth_of_replica_placements_move_when_a_fifth_partition_joins(self):
        # A placement is (key, partition holding one of its N replicas); it
        # moves when that partition no longer holds a replica of the key.
        moved = 0
        for key in KEYS:
            old = set(self.before.preference_list(BUCKET, key, N))
            new = set(self.after.preference_list(BUCKET, key, N))
            moved += len(old - new)
        fraction = moved / (N * len(KEYS))
        self.assertLessEqual(fraction, 0.30, 'too many replicas moved: %.3f' % fraction)
        self.assertGreaterEqual(fraction, 0.10, 'the new partition took too few replicas: %.3f' % fraction)

    def test_modulo_placement_would_move_most_keys(self):
        # The point of consistent hashing: with `hash % partitions` the same
        # change (4 -> 5 partitions) moves about 4/5 of the keys.
        moved = sum(key_point(BUCKET, key) % 4 != key_point(BUCKET, key) % 5 for key in KEYS)
        self.assertGreater(moved / len(KEYS), 0.60)


class TestRemovingAPartition(unittest.TestCase):

    def test_removing_a_partition_only_moves_keys_that_it_held(self):
        before = Ring(equal_weights('p1', 'p2', 'p3', 'p4', 'p5'))
        after = Ring(equal_weights('p1', 'p2', 'p4', 'p5'))
        held = 0
        for key in KEYS:
            old = before.preference_list(BUCKET, key, N)
            new = after.preference_list(BUCKET, key, N)
            self.assertNotIn('p3', new, key)
            if 'p3' in old:
                held += 1
                # The surviving replicas stay, in order; the next partition
                # on the ring takes p3's place at the end.
                self.assertEqual(new[:N - 1], [p for p in old if p != 'p3'], key)
            else:
                self.assertEqual(old, new, key)
        # p3 held replicas of about 3/5 of the keys: the check above was exercised.
        self.assertGreater(held, len(KEYS) // 3)


class TestWeightsAndBalance(unittest.TestCase):

    def test_a_partition_of_weight_two_gets_about_twice_the_primaries(self):
        ring = Ring({'big': 2, 'small': 1, 'other': 1})
        counts = collections.Counter(primaries(ring))
        ratio = counts['big'] / counts['small']
        self.assertGreaterEqual(ratio, 1.5, counts)
        self.assertLessEqual(ratio, 2.6, counts)

    def test_four_equal_partitions_each_get_a_fair_share_of_primaries(self):
        ring = Ring(equal_weights('p1', 'p2', 'p3', 'p4'), vnodes=64)
        counts = collections.Counter(primaries(ring))
        self.assertEqual(set(counts), {'p1', 'p2', 'p3', 'p4'})
        for name, count in counts.items():
            share = count / len(KEYS)
            self.assertGreaterEqual(share, 0.15, (name, counts))
            self.assertLessEqual(share, 0.35, (name, counts))


if __name__ == '__main__':
    unittest.main()
