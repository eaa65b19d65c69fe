"""Placement: a consistent-hash ring with virtual nodes and weights.

Each partition owns `vnodes * weight` points on a 63-bit ring.  A key's
preference list is the first N distinct partitions met walking clockwise from
the key's own point, so adding or removing a partition only moves the keys
whose arcs it takes or gives back (about 1/P of them), not most keys as
`hash % P` would.
"""
import bisect
import hashlib


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

    def walk(self, bucket, key):
        """Every partition once, in ring order starting at the key."""
        start = bisect.bisect(self._points, key_point(bucket, key))
        seen = []
        total = len(self._owners)
        for i in range(total):
            name = self._owners[(start + i) % total]
            if name not in seen:
                seen.append(name)
                if len(seen) == len(self.partitions):
                    break
        return seen

    def preference_list(self, bucket, key, n):
        """The N partitions that hold the key's replicas, primary first."""
        return self.walk(bucket, key)[:n]
