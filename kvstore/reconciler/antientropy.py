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

from kvstore.coordinator.ring import key_point

LEAF_ROWS = 128   # ranges with at most this many rows on every owner are fetched
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

    def pages(self, lo, hi, owners):
        """Yield ({owner: {(bucket, key): [Version]}}) for the parts of [lo, hi)
        where the owners that answer differ; values are left out."""
        self.stats['ranges'] += 1
        digests = self._digests(owners, lo, hi, 1)
        yield from self._descend(lo, hi, {o: d[0] for o, d in digests.items()})

    def _digests(self, owners, lo, hi, parts):
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
