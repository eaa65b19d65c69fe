"""The bucket registry: buckets' properties, stored on the bucket's owners and
cached by each front end for a few seconds."""
import time

from kvstore.coordinator.listing import require_coverage
from kvstore.coordinator.validation import check_bucket
from kvstore.coordinator.versions import now_micros
from kvstore.errors import BucketNotEmpty, NotFound, Unavailable

DEFAULT_BUCKET_PROPERTIES = {'conflicts': 'siblings'}
BUCKET_CACHE_SECONDS = 5.0   # how long a front end trusts bucket properties it read
BUCKET_CACHE_ENTRIES = 10000   # buckets whose properties a front end keeps
# Stored beside the properties: when they were written (nanoseconds), so that a
# read of R owners takes the newest record, not the first to answer.  Not a
# property name a client can send (BUCKET_PROPERTIES).
WRITTEN = '~written'


class BucketRegistry:
    def __init__(self, config, replicas, placement, listing):
        self.config = config
        self.replicas = replicas
        self.placement = placement
        self.listing = listing
        self._cache = {}   # {bucket: (expires, properties)}

    def names(self):
        call = self.replicas.call
        now = now_micros()
        found, failures = self.replicas.everywhere(lambda p: call(p, 'bucket_names', now))
        require_coverage(failures, self.config.replicas)
        return sorted(set().union(*found.values()))

    def _record(self, bucket):
        """The stored properties of a bucket (None when it has no record)."""
        r, call = self.config.r, self.replicas.call
        records, failures = self.replicas.fan_out(
            self.placement.bucket_owners(bucket), lambda p: call(p, 'read_bucket', bucket), launch=r, needed=r)
        if len(records) < r:
            raise Unavailable('too few replicas of the bucket answered', failed=failures)
        stored = max(filter(None, records.values()), key=lambda props: props.get(WRITTEN, 0), default=None)
        if stored is not None:
            stored = {name: value for name, value in stored.items() if name != WRITTEN}
        self._remember(bucket, dict(DEFAULT_BUCKET_PROPERTIES, **(stored or {})))
        return stored

    def _remember(self, bucket, props):
        # Bounded: any name a client sends (a preflight needs no token) is read.
        if len(self._cache) >= BUCKET_CACHE_ENTRIES:
            self._cache.clear()
        self._cache[bucket] = (time.monotonic() + BUCKET_CACHE_SECONDS, props)

    def properties_cached(self, bucket):
        """A bucket's properties as this front end saw them in the last few seconds."""
        cached = self._cache.get(bucket)
        if cached is None or cached[0] < time.monotonic():
            try:
                self._record(bucket)
                cached = self._cache[bucket]
            except Unavailable:
                # Keep serving with what we saw last, or the defaults: siblings
                # never lose a write, whatever the bucket's setting was.
                return cached[1] if cached else dict(DEFAULT_BUCKET_PROPERTIES)
        return cached[1]

    def properties(self, bucket):
        """A bucket's properties, or None when it neither was created nor holds keys."""
        check_bucket(bucket)
        stored = self._record(bucket)
        if stored is None and not self.listing.has_keys(bucket):
            return None
        return dict(DEFAULT_BUCKET_PROPERTIES, **(stored or {}))

    def create(self, bucket, properties=None):
        """Create or update a bucket; True when it is new."""
        check_bucket(bucket)
        current = self.properties(bucket)
        existed = current is not None
        props = dict(current or DEFAULT_BUCKET_PROPERTIES, **(properties or {}))
        w, call = self.config.w, self.replicas.call
        record = dict(props, **{WRITTEN: time.time_ns()})
        acks, failures = self.replicas.fan_out(self.placement.bucket_owners(bucket),
                                               lambda p: call(p, 'write_bucket', bucket, record),
                                               launch=self.config.replicas, needed=w)
        if len(acks) < w:
            raise Unavailable('too few replicas of the bucket acknowledged', failed=failures)
        self._remember(bucket, props)
        return not existed

    def delete(self, bucket, force=False):
        """Delete a bucket: refused while it holds keys, unless forced."""
        if self.properties(bucket) is None:
            raise NotFound('no bucket %r' % bucket)
        if not force and self.listing.has_keys(bucket):
            raise BucketNotEmpty('bucket %r holds keys; delete them first or use ?force=true' % bucket)

        # Every partition must answer first: a forced delete that reached only
        # some would let the others bring the keys back.
        call = self.replicas.call
        _, failures = self.replicas.everywhere(lambda p: call(p, 'read_bucket', bucket))
        if failures:
            raise Unavailable('deleting a bucket needs every partition up', failed=failures)

        dropped = time.time_ns() // 1000   # what was written before is fenced off (engines' drop_keys)

        def drop(p):
            if force:
                call(p, 'drop_keys', bucket, dropped)
            call(p, 'drop_bucket', bucket)
        done, failures = self.replicas.everywhere(drop)
        self._cache.pop(bucket, None)
        if failures:
            raise Unavailable('the bucket could not be removed from every partition', failed=failures)
