"""Anti-entropy: where do the replicas of a range of the ring differ?

The ring's arcs between consecutive virtual-node points each have a fixed set
of owners (the N partitions that hold every key whose point falls in the arc).
For an arc, each owner computes a digest of its rows (a count and the XOR of a
hash of bucket, key and version id: engines.SQLEngine.range_digests) without
sending them.  Where the owners' digests differ, the range is cut into slices
and the slices compared, down to ranges small enough to fetch; only there are
rows (without their values) read.  So the rows read grow with the differences,
not with the table; the digests themselves cost the partitions an index scan.

sync.py repairs what Differ.pages() yields; ranges_outside() gives the parts of
the ring a partition does not own, where it should hold nothing.
"""
import collections

from kvstore.coordinator.ring import SLOT_SHIFT, key_point

LEAF_ROWS = 128   # ranges with at most this many rows on every owner are fetched
BLOCK_SLOTS = 1024  # slots of the balanced ring digested in one query (SlotDigests)
FANOUT = 16       # slices a differing range is cut into


def ranges_outside(arc_list, name):
    """[(lo, hi)] of the ring where `name` owns no key (all of it for a
    partition that is not on the ring)."""
    found = []
    for lo, hi, owners in arc_list:
        if name in owners:
            continue
        if found and found[-1][1] == lo:
            found[-1] = (found[-1][0], hi)
        else:
            found.append((lo, hi))
    return found


def whole_slots(lo, hi):
    """(first slot, slot after the last) when [lo, hi) is whole slots of the
    balanced ring (ring.Ring), else None."""
    width = 1 << SLOT_SHIFT
    if lo % width or hi % width:
        return None
    return lo >> SLOT_SHIFT, hi >> SLOT_SHIFT


class SlotDigests:
    """Each partition's digest of every slot of the ring, read a block of
    BLOCK_SLOTS slots at a time (range_digests over the block, one slice a
    slot), the first time one of the block's slots is asked for: a balanced
    ring has tens of thousands of arcs, which one query each would make slow,
    and a query over a whole partition could outlast read_timeout."""

    def __init__(self, each, meter=None):
        self.each = each
        self.meter = meter   # counts each row digested once, when its block is read
        self.blocks = {}   # (partition, block) -> [(count, xor)] of its slots
        self.queries = 0

    def slots(self, name, first, last):
        """The digests of slots [first, last) of a partition whose blocks were read."""
        for block in range(first // BLOCK_SLOTS, -(-last // BLOCK_SLOTS)):
            yield from self.blocks[(name, block)][max(first - block * BLOCK_SLOTS, 0):last - block * BLOCK_SLOTS]

    def of(self, names, first, last):
        """({name: (count, xor) of slots [first, last)}, {name: reason})."""
        digests, failures = {name: (0, 0) for name in names}, {}
        for block in range(first // BLOCK_SLOTS, -(-last // BLOCK_SLOTS)):
            missing = [n for n in digests if (n, block) not in self.blocks]
            if missing:
                lo = block * BLOCK_SLOTS << SLOT_SHIFT
                found, failed = self.each(missing, 'range_digests', lo, lo + (BLOCK_SLOTS << SLOT_SHIFT),
                                          BLOCK_SLOTS)
                self.queries += len(found)
                if self.meter:
                    self.meter.digested(sum(c for d in found.values() for c, _ in d))
                self.blocks.update({(n, block): d for n, d in found.items()})
                failures.update(failed)
                for name in failed:
                    digests.pop(name, None)
            for name in digests:
                slots = self.blocks[(name, block)]
                count, xor = digests[name]
                for c, x in slots[max(first - block * BLOCK_SLOTS, 0):last - block * BLOCK_SLOTS]:
                    count, xor = count + c, xor ^ x
                digests[name] = (count, xor)
        return digests, failures


def rows_by_key(rows):
    """{(bucket, key): [Version]} from scan_points rows."""
    held = collections.defaultdict(list)
    for bucket, key, version in rows:
        held[(bucket, key)].append(version)
    return held


def scan_pages(each, names, lo, hi, page):
    """Yield ({name: {(bucket, key): [Version]}}, failures) for [lo, hi) page by
    page, every key of a page complete on every partition that answered.

    each(names, method, *args) -> ({name: result}, {name: reason}).  A page is
    cut below the point where the first partition's batch ended (like the
    horizon of Datastore.list_keys), so a key is never split across pages."""
    while lo < hi and names:
        found, failures = each(names, 'scan_points', lo, hi, page)
        names = [n for n in names if n in found]
        cutoff = hi
        for rows in found.values():
            if len(rows) == page:
                cutoff = min(cutoff, key_point(rows[-1][0], rows[-1][1]))
        if cutoff == lo:   # one point holds more rows than a page: read it whole
            found, more = each(names, 'scan_points', lo, lo + 1, None)
            failures.update(more)
            names = [n for n in names if n in found]
            cutoff = lo + 1
        yield ({n: rows_by_key(r for r in rows if key_point(r[0], r[1]) < cutoff)
                for n, rows in found.items()}, failures)
        lo = cutoff


class Differ:
    """Compares the owners of ranges by digest and yields the rows where they differ.

    each(names, method, *args) runs an engine method on several partitions at
    once: ({name: result}, {name: reason}).  meter counts what is read."""

    def __init__(self, each, meter, page=500, leaf_rows=LEAF_ROWS, fanout=FANOUT):
        self.each = each
        self.meter = meter
        self.page = page
        self.leaf_rows = leaf_rows
        self.fanout = fanout
        self.stats = collections.Counter()   # ranges compared, differing, digest queries
        self.down = collections.Counter()    # partition -> ranges it could not be compared on
        self.slot_digests = SlotDigests(each, meter)

    def alike_owner_sets(self, arc_list):
        """{owners (a tuple)} whose every owner holds the same rows over all
        the arcs they own together: a balanced ring's arcs are whole slots,
        tens of thousands of them but only as many owner sets as there are
        ways to choose N partitions, so the sets are compared first (from
        the slots' digests, read once) and only the arcs of sets that differ
        one by one.  Empty for a ring whose arcs are not whole slots."""
        spans = [whole_slots(lo, hi) for lo, hi, _ in arc_list]
        if not arc_list or None in spans:
            return set()
        by_set = collections.defaultdict(list)
        for span, (_, _, owners) in zip(spans, arc_list):
            by_set[tuple(owners)].append(span)
        names = sorted({name for owners in by_set for name in owners})
        _, failures = self.slot_digests.of(names, 0, max(last for _, last in spans))
        alike = set()
        for owners, owned in by_set.items():
            if any(name in failures for name in owners):
                continue
            digests = set()
            for name in owners:
                count, xor = 0, 0
                for first, last in owned:
                    for c, x in self.slot_digests.slots(name, first, last):
                        count, xor = count + c, xor ^ x
                digests.add((count, xor))
            if len(digests) == 1:
                alike.add(owners)
        return alike

    def pages(self, lo, hi, owners):
        """Yield ({owner: {(bucket, key): [Version]}}) for the parts of [lo, hi)
        where the owners that answer differ; values are left out."""
        self.stats['ranges'] += 1
        digests = self._digests(owners, lo, hi, 1)
        yield from self._descend(lo, hi, {o: d[0] for o, d in digests.items()})

    def _digests(self, owners, lo, hi, parts):
        slots = whole_slots(lo, hi) if parts == 1 else None
        if slots:
            found, failures = self.slot_digests.of(owners, *slots)   # counted as their blocks are read
            found = {name: [digest] for name, digest in found.items()}
        else:
            found, failures = self.each(owners, 'range_digests', lo, hi, parts)
            self.stats['digest queries'] += len(found)
            self.meter.digested(sum(count for d in found.values() for count, _ in d))
        for name in failures:
            self.down[name] += 1
        return found

    def _descend(self, lo, hi, digest_of):
        owners = sorted(digest_of)
        if len(owners) < 2 or len(set(digest_of.values())) == 1:
            return
        self.stats['differing'] += 1
        counts = [count for count, _ in digest_of.values()]
        # Cut only while the slices can still be alike: an owner with no row
        # there lacks every row the others have, and small ranges are fetched.
        if max(counts) <= self.leaf_rows or min(counts) == 0 or hi - lo <= self.fanout:
            for held, failures in scan_pages(self.each, owners, lo, hi, self.page):
                for name in failures:
                    self.down[name] += 1
                self.meter.read(sum(len(v) for rows in held.values() for v in rows.values()))
                self.stats['leaves'] += 1
                if len(held) >= 2:
                    yield held
            return
        slices = self._digests(owners, lo, hi, self.fanout)
        width = -(-(hi - lo) // self.fanout)
        for i in range(self.fanout):
            sub_lo, sub_hi = lo + i * width, min(hi, lo + (i + 1) * width)
            if sub_lo < sub_hi:
                yield from self._descend(sub_lo, sub_hi, {o: d[i] for o, d in slices.items()})
