"""Listings: the live keys of a bucket, merged across every partition."""
import dataclasses

from kvstore.coordinator.validation import check_bucket
from kvstore.coordinator.versions import live, newest_fence, now_micros, resolve
from kvstore.errors import BadRequest, Unavailable

MAX_LIST_LIMIT = 10000


@dataclasses.dataclass
class KeyPage:
    keys: list
    next_after: str           # the last entry listed (a key or a common prefix) when more follow, else None
    prefixes: list = dataclasses.field(default_factory=list)   # the common prefixes (with a delimiter)
    versions: dict = None     # {key: [its live Versions, values left out]} when asked for (details)


def key_is_live(rows, now):
    """Do a key's version rows (from engine.scan) leave a live version at
    `now`?  When every replica holds the same single version, its tombstone
    flag and expiry say; only when they differ are the clocks decoded and
    compared."""
    if len({row[1] for row in rows}) == 1:
        return all(holds_value(row, now) for row in rows)
    return bool(live_versions(rows, now))


def holds_value(row, now):
    """A scanned row (engine.scan) is of a value, not a tombstone nor expired at now."""
    _, _, deleted, _, expires, _ = row
    return not deleted and not 0 < expires <= now


def live_versions(rows, now):
    """The live versions a key's rows leave at `now` (more than one: siblings)."""
    if len({row[1] for row in rows}) == 1:
        return [rows[0][5]()] if all(holds_value(row, now) for row in rows) else []
    return live(resolve([[row[5]() for row in rows]]), now)


def common_prefix(key, prefix, delimiter):
    """The "folder" key is in below prefix: prefix and what follows up to the
    first delimiter, that included (S3's CommonPrefixes); None when key is
    listed itself."""
    found = key.find(delimiter, len(prefix))
    return None if found < 0 else key[:found + len(delimiter)]


def past(folder):
    """A scan position after the keys in folder but those that go on with
    U+10FFFF (the last code point), which the listing reads and folds."""
    return folder + '\U0010ffff'


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

    def list_keys(self, bucket, prefix='', limit=1000, after=None, delimiter=None, details=False):
        """A page of live keys in byte order, merged across every partition;
        with a delimiter, the keys below prefix up to it and the common
        prefixes (folders) beyond, each counted as one entry of the page.

        after: the last entry of the page before (a key, or a common prefix:
        the page goes on after every key in it).  details: the live versions
        of each key listed, in versions.
        """
        check_bucket(bucket)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise BadRequest('bad_parameter', 'limit must be 1 to %d' % MAX_LIST_LIMIT, parameter='limit')
        if not delimiter:
            return self._live_keys(bucket, prefix, limit, after, details)
        entries, versions = [], {}
        folder = after and common_prefix(after, prefix, delimiter)
        scan_after = past(folder) if folder else after
        while len(entries) <= limit:
            page = self._live_keys(bucket, prefix, limit + 1 - len(entries), scan_after, details)
            entered = None
            for key in page.keys:
                inside = common_prefix(key, prefix, delimiter)
                if inside is None:
                    entries.append((key, False))
                    if details:
                        versions[key] = page.versions[key]
                elif inside != folder:
                    entries.append((inside, True))
                    folder = entered = inside
                    break   # the rest of the folder is skipped, not read
                if len(entries) > limit:
                    break
            if entered is not None:
                scan_after = past(entered)
            elif page.next_after is None:
                break
            else:
                scan_after = page.next_after
        more = len(entries) > limit
        entries = entries[:limit]
        return KeyPage(keys=[name for name, is_folder in entries if not is_folder],
                       next_after=entries[-1][0] if more else None,
                       prefixes=[name for name, is_folder in entries if is_folder],
                       versions=versions if details else None)

    def _live_keys(self, bucket, prefix, limit, after, details):
        """Each partition returns its version rows in key order; a key is listed
        when the versions of it that no other version supersedes include a live
        one, so a stale replica cannot bring back a deleted key, and no
        partition's fence of the bucket covers it (a forced delete through a
        front end that did not know a partition just added: it may still hold
        them).  Rows are read in batches: keys below the lowest last key of a
        full batch are complete.
        """
        names = list(self.replicas.engines)
        batch = max(limit + 1, 64)
        keys, versions = [], {}
        now = now_micros()   # one instant for the whole page
        while len(keys) <= limit:
            pages, failures = self.replicas.at_once(names, 'scan', bucket, prefix, after, batch)
            require_coverage(failures, self.n)
            horizon = min((rows[-1][0] for rows in pages.values() if len(rows) == batch), default=None)
            fence = newest_fence(pages.values()) or -1
            rows_of = {}
            for rows in pages.values():
                for row in rows:
                    if (horizon is None or row[0] < horizon) and row[3] > fence:
                        rows_of.setdefault(row[0], []).append(row)
            for key in sorted(rows_of):
                if details:
                    found = live_versions(rows_of[key], now)
                    if found:
                        keys.append(key)
                        versions[key] = found
                elif key_is_live(rows_of[key], now):
                    keys.append(key)
            if horizon is None:
                break
            # The horizon key may have more rows beyond the batch: read it again.
            after = max(rows_of, default=horizon)
        more = len(keys) > limit
        keys = keys[:limit]
        return KeyPage(keys=keys, next_after=keys[-1] if more else None, versions=versions if details else None)

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
