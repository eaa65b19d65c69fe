"""Listings: the live keys of a bucket, merged across every partition."""
import dataclasses

from kvstore.coordinator.validation import check_bucket
from kvstore.coordinator.versions import live, resolve
from kvstore.errors import BadRequest, Unavailable

MAX_LIST_LIMIT = 10000


@dataclasses.dataclass
class KeyPage:
    keys: list
    next_after: str           # the last key listed when more follow, else None


def key_is_live(rows):
    """Do a key's version rows (from engine.scan) leave a live version?  When
    every replica holds the same single version, its tombstone flag says; only
    when they differ are the clocks decoded and compared."""
    if len({version_id for _, version_id, _, _ in rows}) == 1:
        return not rows[0][2]
    return bool(live(resolve([[make() for _, _, _, make in rows]])))


def require_coverage(failures, n):
    """Every key has a replica on the partitions that answered only while
    fewer than n (the replicas of a key) partitions failed."""
    if len(failures) >= n:
        raise Unavailable('%d partitions did not answer, so some keys have no replica that did'
                          % len(failures), failed=failures)


class Listing:
    def __init__(self, config, replicas):
        self.n = config.replicas
        self.replicas = replicas

    def list_keys(self, bucket, prefix='', limit=1000, after=None):
        """A page of live keys in byte order, merged across every partition.

        Each partition returns its version rows in key order; a key is listed
        when the versions of it that no other version supersedes include a live
        one, so a stale replica cannot bring back a deleted key.  Rows are read
        in batches: keys below the lowest last key of a full batch are complete.
        """
        check_bucket(bucket)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise BadRequest('bad_parameter', 'limit must be 1 to %d' % MAX_LIST_LIMIT, parameter='limit')
        names = list(self.replicas.engines)
        batch = max(limit + 1, 64)
        keys = []
        while len(keys) <= limit:
            pages, failures = self.replicas.at_once(names, 'scan', bucket, prefix, after, batch)
            require_coverage(failures, self.n)
            horizon = min((rows[-1][0] for rows in pages.values() if len(rows) == batch), default=None)
            rows_of = {}
            for rows in pages.values():
                for row in rows:
                    if horizon is None or row[0] < horizon:
                        rows_of.setdefault(row[0], []).append(row)
            keys.extend(key for key in sorted(rows_of) if key_is_live(rows_of[key]))
            if horizon is None:
                break
            # The horizon key may have more rows beyond the batch: read it again.
            after = max(rows_of, default=horizon)
        more = len(keys) > limit
        keys = keys[:limit]
        return KeyPage(keys=keys, next_after=keys[-1] if more else None)

    def has_keys(self, bucket):
        return bool(self.list_keys(bucket, limit=1).keys)

    def count_keys(self, bucket):
        count, after = 0, None
        while True:
            page = self.list_keys(bucket, limit=MAX_LIST_LIMIT, after=after)
            count += len(page.keys)
            if page.next_after is None:
                return count
            after = page.next_after
