"""Placement (ring.py).

What the ring promises: a key's replicas sit on N distinct partitions chosen
the same way every time; a partition joining or leaving moves only its share
of the keys (about 1/P of them), where `hash % P` would move most of them; a
partition's share follows its weight, within 5 % (TestBalance, at every size
from 3 to 64 partitions, computed over the whole ring, not sampled keys).
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
        ring = Ring(equal_weights('p1', 'p2', 'p3', 'p4'))
        counts = collections.Counter(primaries(ring))
        self.assertEqual(set(counts), {'p1', 'p2', 'p3', 'p4'})
        for name, count in counts.items():
            share = count / len(KEYS)
            self.assertGreaterEqual(share, 0.15, (name, counts))
            self.assertLessEqual(share, 0.35, (name, counts))


def shares(ring, n):
    """{partition: its fraction of the ring's n replicas} (n=1: first owners)."""
    slots = ring.owners_of_slots(n)
    found = collections.Counter(owner for owners in slots for owner in owners)
    return {name: count / (n * len(slots)) for name, count in found.items()}


def moved(before, after, n=N):
    """The fraction of the ring's n replicas that are on a partition after
    that did not hold them before."""
    old, new = before.owners_of_slots(n), after.owners_of_slots(n)
    return sum(len(set(b) - set(a)) for a, b in zip(old, new)) / (n * len(new))


class TestBalance(unittest.TestCase):
    """Issue #27: no partition holds more than 5 % above its share of the
    replicas or of the first-owner positions (which coordinate the writes),
    and adding a partition moves at most 1/(P+1) of the replicas plus 5 % of
    that.  The vnode ring held 4-14 % above the mean, up to 31 % as first owner."""

    @classmethod
    def setUpClass(cls):
        cls.rings = {count: Ring(equal_weights(*['p%d' % i for i in range(1, count + 1)]))
                     for count in range(3, 66)}

    def test_equal_weights_from_3_to_64_partitions_within_5_percent_of_the_mean(self):
        for count in range(3, 65):
            for n in (N, 1):
                found = shares(self.rings[count], n)
                self.assertEqual(len(found), count)
                self.assertLessEqual(max(found.values()) * count, 1.05, (count, n, max(found.values()) * count))

    def test_adding_a_partition_moves_at_most_its_share_plus_5_percent(self):
        for count in range(3, 65):
            fraction = moved(self.rings[count], self.rings[count + 1])
            self.assertLessEqual(fraction, 1.05 / (count + 1), (count, fraction * (count + 1)))
            # and the new partition took its share: what moved, moved to it
            self.assertGreaterEqual(fraction, 0.95 / (count + 1), (count, fraction * (count + 1)))

    def test_unequal_weights_each_within_5_percent_of_its_weight(self):
        for weights in (dict(zip(['p%d' % i for i in range(8)], [1, 1, 2, 2, 3, 1, 0.5, 1.5])),
                        {'p%d' % i: [1, 2, 0.5, 1.5][i % 4] for i in range(24)},
                        {'p%d' % i: 1 + (i % 3) for i in range(48)}):
            ring, total = Ring(weights), sum(weights.values())
            for n in (N, 1):
                found = shares(ring, n)
                for name, weight in weights.items():
                    self.assertAlmostEqual(found[name] / (weight / total), 1, delta=0.05,
                                           msg=(len(weights), n, name, weight))


if __name__ == '__main__':
    unittest.main()
