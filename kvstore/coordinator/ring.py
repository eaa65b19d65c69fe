"""Placement: which partitions hold a key, from the partitions and their weights.

Two placements, both computed from the configuration alone, so that every
front end and sync.py agree without talking:

- `Ring`, the balanced placement (the default, `[store] placement = balanced`):
  the 63-bit ring is cut into SLOTS equal slots, and each slot is given its N
  owners once, when the ring is built.  Each partition ranks the slots by a
  score of its own (weighted rendezvous hashing: a partition's scores come from
  its name alone, so adding a partition only changes the slots it scores
  highest on); slots are dealt in order, each to its best-scoring partitions
  that are still below their cap (SLACK above their weight's share of the
  replicas), and among those the first owner is the best one still below its
  cap of first-owner positions.  So no partition holds more than its share
  plus SLACK, and adding a partition moves about 1/(P+1) of the replicas
  (test/test_ring.py holds both for 3 to 64 partitions).
- `VnodeRing`, the consistent-hash ring of earlier versions
  (`placement = vnodes`): each partition has `vnodes * weight` points, a key's
  owners are the first N distinct partitions clockwise from its point.  Its
  arcs vary in length, so shares differ by up to 15 % (a third as first owner).

A key's preference list is its N owners, first owner first; the walk goes on
with every other partition (the fallbacks).  describe() is the placement as
sync.py records it in a view (views.py); ring_of() builds the ring of such a
record, so that a ring recorded earlier places keys as it did then.
"""
import array
import bisect
import functools
import hashlib
import itertools
import json
import math
import sys


RING_SIZE = 2 ** 63   # points are 63-bit, so that they fit a signed BIGINT
SLOT_BITS = 16
SLOTS = 2 ** SLOT_BITS                  # the balanced ring's slots, each an equal arc
SLOT_SHIFT = 63 - SLOT_BITS
SLACK = 0.04          # a partition holds at most its weight's share of the slots plus this
CANDIDATES = 8        # partitions per slot whose scores are looked at first (see _deal)
BALANCED = 'balanced-%d' % SLOTS


def ring_point(data):
    """A 63-bit position on the ring for bytes (it fits a signed BIGINT)."""
    return int.from_bytes(hashlib.md5(data).digest()[:8], 'big') >> 1


def key_point(bucket, key):
    return ring_point(bucket.encode() + b'\x00' + key.encode())


def describe(config):
    """The configuration's placement as a view records it (views.py): the
    partitions with a weight above 0 and their weights, the replicas, and the
    placement (vnodes for the consistent-hash ring)."""
    weights = {p.name: p.weight for p in config.partitions if p.weight > 0}
    if config.placement == 'vnodes':
        return {'partitions': weights, 'vnodes': config.vnodes, 'replicas': config.replicas}
    return {'partitions': weights, 'replicas': config.replicas, 'placement': BALANCED}


def ring_of(description):
    """The ring a description (describe(), or a recorded view's) places keys by."""
    return _ring_of(json.dumps(description, sort_keys=True))


@functools.lru_cache(maxsize=16)   # a balanced ring takes a fraction of a second to deal
def _ring_of(described):
    description = json.loads(described)
    placement = description.get('placement')
    if placement is None:
        return VnodeRing(description['partitions'], description['vnodes'])
    if placement != BALANCED:
        raise ValueError('unknown placement %r' % placement)
    return Ring(description['partitions'], description['replicas'])


class Ring:
    """The balanced placement over SLOTS equal slots (see the module's docstring)."""

    def __init__(self, weights, replicas=3):
        """weights: {partition name: weight (a positive number)}."""
        if not weights:
            raise ValueError('a ring needs at least one partition')
        self.partitions = sorted(weights)
        self.replicas = replicas
        self._weights = [float(weights[name]) for name in self.partitions]
        self._rates = _rates(self._weights, min(replicas, len(self.partitions)))
        self._scores = [_scores(name) for name in self.partitions]
        self._key = self._score_function()
        self._slots = self._deal()

    @classmethod
    def of(cls, config):
        """The ring of a configuration's partitions (one of weight 0 is on none)."""
        return ring_of(describe(config))

    def _score_function(self):
        """score(i, slot): partition i's score for the slot, higher is better.
        Equal weights compare the scores themselves (integers, the same on every
        machine); unequal ones weighted rendezvous hashing's log(u) / weight."""
        arrays = [values for _, values in self._scores]
        if len(set(self._rates)) == 1:
            return lambda i, slot: arrays[i][slot]
        rates = self._rates
        return lambda i, slot: math.log((arrays[i][slot] + 0.5) * 2.0 ** -32) / rates[i]

    def _candidates(self):
        """([(-score, partition) of those scoring high on each slot], bound): a
        partition left out of a slot's list scores below bound there, so those
        of the list above bound are, in order, the slot's best.  Looking at
        these first saves scoring every partition for every slot."""
        total = sum(self._rates)
        threshold = math.exp(-CANDIDATES / total)   # about CANDIDATES partitions above it per slot
        equal = len(set(self._rates)) == 1
        candidates = [[] for _ in range(SLOTS)]
        bound = None
        for i, (coarse, values) in enumerate(self._scores):
            weight = self._rates[i]
            cut = min(256, math.ceil(256 * threshold ** weight))   # on the score's first byte
            below = cut * 2 ** 24 if equal else (math.log(cut / 256) / weight if cut else -math.inf)
            bound = below if bound is None else max(bound, below)
            if cut == 256:
                continue
            high = itertools.compress(range(SLOTS), coarse.translate(bytes(b >= cut for b in range(256))))
            if equal:
                for slot in high:
                    candidates[slot].append((-values[slot], i))
            else:
                for slot in high:
                    candidates[slot].append((-math.log((values[slot] + 0.5) * 2.0 ** -32) / weight, i))
        return candidates, bound

    def _ranking(self, slot):
        """Every partition's index, best score for the slot first (ties by name)."""
        return sorted(range(len(self.partitions)), key=lambda i: (-self._key(i, slot), i))

    def _deal(self):
        """[owners of each slot] (tuples of names, first owner first)."""
        count, total = len(self.partitions), sum(self._weights)
        n = min(self.replicas, count)
        replica_cap = [math.floor(SLOTS * n * w / total * (1 + SLACK)) for w in self._weights]
        first_cap = [math.floor(SLOTS * w / total * (1 + SLACK)) for w in self._weights]
        held, led = [0] * count, [0] * count
        arrays, weights = [values for _, values in self._scores], self._weights
        leading = None if self._rates == weights else (
            lambda i, slot: math.log((arrays[i][slot] + 0.5) * 2.0 ** -32) / weights[i])
        candidates, bound = self._candidates()
        names, owners = self.partitions, {}
        slots = []
        for slot in range(SLOTS):
            scored = candidates[slot]
            scored.sort()
            chosen = []
            for negative, i in scored:
                if -negative < bound:
                    break
                if held[i] < replica_cap[i]:
                    chosen.append(i)
                    if len(chosen) == n:
                        break
            if len(chosen) < n:   # the best of the list are full: score every partition
                ranking = self._ranking(slot)
                chosen = [i for i in ranking if held[i] < replica_cap[i]][:n]
                chosen += [i for i in ranking if i not in chosen][:n - len(chosen)]   # all full
            if leading is not None:   # unequal weights: who leads is raced by the weights themselves
                chosen.sort(key=lambda i: -leading(i, slot))
            lead = next((i for i in chosen if led[i] < first_cap[i]), chosen[0])
            led[lead] += 1
            for i in chosen:
                held[i] += 1
            order = (lead,) + tuple(i for i in chosen if i != lead)
            slots.append(owners.setdefault(order, tuple(names[i] for i in order)))
        return slots

    @functools.lru_cache(maxsize=SLOTS)
    def _walk_of_slot(self, slot):
        owners = self._slots[slot]
        return owners + tuple(self.partitions[i] for i in self._ranking(slot)
                              if self.partitions[i] not in owners)

    @functools.lru_cache(maxsize=65536)   # hot keys skip the hashing (the ring never changes)
    def walk(self, bucket, key):
        """Every partition once: the key's owners, first owner first, then the
        others (its fallbacks), a tuple."""
        return self._walk_of_slot(key_point(bucket, key) >> SLOT_SHIFT)

    def preference_list(self, bucket, key, n):
        """The N partitions that hold the key's replicas, primary first."""
        return list(self.walk(bucket, key)[:n])

    def owners_of_slots(self, n):
        """[sorted owners of each slot], for the first n of each slot's walk."""
        if n <= self.replicas:
            return [sorted(owners[:n]) for owners in self._slots]
        return [sorted(self._walk_of_slot(slot)[:n]) for slot in range(SLOTS)]

    def arcs(self, n):
        """[(lo, hi, owners)] covering [0, RING_SIZE): the keys whose point is in
        [lo, hi) are held by exactly `owners` (N partitions, sorted).  Neighbouring
        arcs with the same owners are merged."""
        merged = []
        for slot, owners in enumerate(self.owners_of_slots(n)):
            lo = slot << SLOT_SHIFT
            if merged and merged[-1][2] == owners:
                merged[-1] = (merged[-1][0], lo + (1 << SLOT_SHIFT), owners)
            else:
                merged.append((lo, lo + (1 << SLOT_SHIFT), owners))
        return merged


def _rates(weights, n, rounds=20, points=100):
    """The rates partitions are scored with, so that each is among a slot's
    best n about as often as its weight says.  Scoring by the weights
    themselves gives a heavy partition fewer than its share of the replicas
    (it cannot hold two replicas of a slot) and a light one more; this solves
    for the rates that give each its share, by a few rounds of correcting
    each rate by its error.  The scores are an exponential race (partition i
    arrives after a time of rate i; the best score arrives first), so a
    partition is among the best n when fewer than n others arrived before it,
    integrated over its arrival time on a geometric grid.  Equal weights are
    left as they are.  A weight above 1/n of the total cannot be met (it gets
    every slot)."""
    groups = sorted(set(weights))
    if len(groups) == 1:
        return list(weights)
    count = [weights.count(w) for w in groups]
    total = sum(weights)
    target = [min(0.999, n * w / total) for w in groups]
    rate = [w / total for w in groups]
    # arrival times that matter: from well before the first arrival to well after the n-th
    grid = [10 ** (-4 + 7 * k / points) for k in range(points + 1)]

    def times(poly, factor):
        """poly * factor, truncated to degree n - 1."""
        return [sum(poly[i] * factor[j - i] for i in range(j + 1)) for j in range(n)]

    def inclusion():
        """How often a partition of each weight is among the best n."""
        found = [0.0] * len(groups)
        for lo, hi in zip(grid, grid[1:]):
            t = (lo * hi) ** 0.5
            above = [1 - math.exp(-r * t) for r in rate]
            powers = [[math.comb(m, j) * a ** j * (1 - a) ** (m - j) if j <= m else 0.0 for j in range(n)]
                      for a, m in zip(above, count)]
            alone = [[math.comb(m - 1, j) * a ** j * (1 - a) ** (m - 1 - j) if j <= m - 1 else 0.0
                      for j in range(n)] for a, m in zip(above, count)]
            prefix = [[1.0] + [0.0] * (n - 1)]
            for p in powers:
                prefix.append(times(prefix[-1], p))
            suffix = [[1.0] + [0.0] * (n - 1)]
            for p in reversed(powers):
                suffix.append(times(suffix[-1], p))
            suffix.reverse()
            for g, r in enumerate(rate):
                others = times(times(prefix[g], suffix[g + 1]), alone[g])
                found[g] += (math.exp(-r * lo) - math.exp(-r * hi)) * sum(others)
        return found

    for _ in range(rounds):
        errors = [t / found for t, found in zip(target, inclusion())]
        if max(abs(e - 1) for e in errors) < 1e-3:
            break
        rate = [r * e for r, e in zip(rate, errors)]
        rate = [r / sum(rc * c for rc, c in zip(rate, count)) for r in rate]   # keep the grid's scale
    return [rate[groups.index(w)] for w in weights]


def _scores(name):
    """(each slot's first score byte, every slot's 32-bit score) of a partition,
    from its name alone: SHAKE-128 of the name, 4 bytes a slot, big-endian."""
    raw = hashlib.shake_128(b'kvstore slot scores\x00' + name.encode()).digest(4 * SLOTS)
    values = array.array('I')
    if values.itemsize != 4:
        values = array.array('L')
    values.frombytes(raw)
    if sys.byteorder == 'little':
        values.byteswap()
    return raw[0::4], values


class VnodeRing:
    """The consistent-hash ring with virtual nodes (`placement = vnodes`)."""

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
