"""Placement: a consistent-hash ring with virtual nodes and weights.

Each partition owns `vnodes * weight` points on a 63-bit ring.  A key's
preference list is the first N distinct partitions met walking clockwise from
the key's own point, so adding or removing a partition only moves the keys
whose arcs it takes or gives back (about 1/P of them), not most keys as
`hash % P` would.
"""
import bisect
import functools
import hashlib


RING_SIZE = 2 ** 63   # points are 63-bit, so that they fit a signed BIGINT


def ring_point(data):
    """A 63-bit position on the ring for bytes (it fits a signed BIGINT)."""
    return int.from_bytes(hashlib.md5(data).digest()[:8], 'big') >> 1


def key_point(bucket, key):
    return ring_point(bucket.encode() + b'\x00' + key.encode())


class Ring:
    def __init__(self, weights, vnodes=64):
        """weights: {partition name: weight (a positive number)}."""
        if not weights:
            raise ValueError('a ring needs at least one partition')
        points = []
        for name, weight in weights.items():
            for i in range(max(1, round(vnodes * weight))):
                points.append((ring_point(('%s#%d' % (name, i)).encode()), name))
        points.sort()
        self._points = [p for p, _ in points]
        self._owners = [n for _, n in points]
        self.partitions = sorted(weights)

    @classmethod
    def of(cls, config):
        """The ring of a configuration's partitions (one of weight 0 is on none)."""
        return cls({p.name: p.weight for p in config.partitions if p.weight > 0}, config.vnodes)

    @functools.lru_cache(maxsize=65536)   # hot keys skip the hashing (the ring never changes)
    def walk(self, bucket, key):
        """Every partition once, in ring order starting at the key (a tuple)."""
        start = bisect.bisect(self._points, key_point(bucket, key))
        seen = []
        total = len(self._owners)
        for i in range(total):
            name = self._owners[(start + i) % total]
            if name not in seen:
                seen.append(name)
                if len(seen) == len(self.partitions):
                    break
        return tuple(seen)

    def preference_list(self, bucket, key, n):
        """The N partitions that hold the key's replicas, primary first."""
        return list(self.walk(bucket, key)[:n])

    def arcs(self, n):
        """[(lo, hi, owners)] covering [0, RING_SIZE): the keys whose point is in
        [lo, hi) are held by exactly `owners` (N partitions, sorted).  Neighbouring
        arcs with the same owners are merged."""
        points, names, total = self._points, self._owners, len(self._points)

        def owners_from(i):
            found = []
            for j in range(i, i + total):
                if names[j % total] not in found:
                    found.append(names[j % total])
                    if len(found) == n:
                        break
            return sorted(found)

        # A key at point x is placed by the first point above it (walk).
        bounds = [(0, points[0], owners_from(0))]
        bounds += [(points[i - 1], points[i], owners_from(i)) for i in range(1, total)]
        bounds.append((points[-1], RING_SIZE, owners_from(0)))
        merged = []
        for lo, hi, owners in bounds:
            if hi <= lo:
                continue
            if merged and merged[-1][1] == lo and merged[-1][2] == owners:
                merged[-1] = (merged[-1][0], hi, owners)
            else:
                merged.append((lo, hi, owners))
        return merged
