"""The change feed of a bucket: every version any partition stored, merged
from the partitions' change logs (kvstore/engines/feed.py), behind a cursor.

A cursor is a position in each partition's log, with the log's incarnation:
{partition: [incarnation, change number]}, signed (cursor_token).  A page
reads every configured partition's log after its position, and merges them:

- Each partition answers with its changes in commit order, and a time (its
  clock) up to which it has answered everything: the last change it sent
  when it sent `limit`, else the time of the read.  The page goes up to the
  least of those times, the horizon: a partition far behind holds the others
  back, so that a key's versions come out in the order they were logged
  anywhere.  Each version a writer saw (its causal context) was logged on
  some partition before the write that saw it, so the versions of a key come
  in causal order (and within a page they are put in it: a version never
  before one it supersedes).  This leans on the partitions' clocks agreeing
  better than the time between a write and the writes that read it.
- The same version logged by several partitions comes once a page; again in
  a later page when a partition logged it late (hinted handoff, sync.py):
  duplicates are allowed, losses are not.
- A partition that does not answer keeps its position and is named in
  `incomplete`; its changes come when it answers again.
- A log restored or restarted (another incarnation, or a position past its
  end) is read again from its oldest change kept: duplicates again.  A
  position before the oldest change kept is Gone (410): the changes after it
  were trimmed, and the client must start again from a listing.
"""
import dataclasses
import hashlib
import hmac
import json
import re

from kvstore.coordinator.versions import context_binding, decode_token, decode_version_clock, encode_token, Version
from kvstore.errors import BadRequest, Gone

MAX_CURSOR_CHARS = 4096
INCARNATION = re.compile(r'[0-9a-f]{12}\Z')


@dataclasses.dataclass
class Change:
    key: str
    version: Version           # its value left out; the value below when asked for
    value: bytes = None        # the inline value (values=True, small and still held), else None
    partition: str = ''        # where it was read
    seq: int = 0               # its number there
    logged: int = 0            # when, on that partition's clock (microseconds)


@dataclasses.dataclass
class FeedPage:
    changes: list
    cursor: str
    incomplete: list           # partitions that did not answer: their changes are still to come
    more: bool                 # changes beyond this page were seen: read again at once


class BadCursor(BadRequest):
    def __init__(self, message):
        super().__init__('bad_cursor', message, parameter='since')


def cursor_mac(secret, bucket, positions):
    """What proves the store issued a cursor for this bucket: HMAC-SHA256 with
    [cluster] secret (without one, a checksum: a cut or altered cursor is still
    refused), first 16 bytes in hex."""
    message = b'feed\0' + json.dumps([context_binding(bucket, ''), positions], sort_keys=True,
                                     separators=(',', ':')).encode()
    return hmac.new((secret or '').encode(), message, hashlib.sha256).hexdigest()[:32]


def cursor_token(bucket, positions, secret):
    return encode_token(json.dumps({'p': positions, 'm': cursor_mac(secret, bucket, positions)},
                                   sort_keys=True, separators=(',', ':')).encode())


def decode_cursor(text, bucket, secret):
    """{partition: [incarnation, number]} of a cursor this store issued for the
    bucket; BadCursor for anything else (forged, cut, another bucket's)."""
    if len(text) > MAX_CURSOR_CHARS:
        raise BadCursor('a cursor has at most %d characters' % MAX_CURSOR_CHARS)
    try:
        cursor = json.loads(decode_token(text))
    except (ValueError, UnicodeError, RecursionError):
        raise BadCursor('the cursor is not one this store issued')
    if not isinstance(cursor, dict) or set(cursor) != {'p', 'm'} or not isinstance(cursor['p'], dict) \
            or not isinstance(cursor['m'], str):
        raise BadCursor('the cursor is not one this store issued')
    positions = cursor['p']
    if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and INCARNATION.match(p[0])
               and type(p[1]) is int and 0 <= p[1] < 2 ** 63 for p in positions.values()):
        raise BadCursor('the cursor is not one this store issued')
    if not hmac.compare_digest(cursor['m'].encode('utf-8', 'replace'),
                               cursor_mac(secret, bucket, positions).encode()):
        raise BadCursor('the cursor is not one this store issued for bucket %r (cut, altered, or of another '
                        'bucket or store)' % bucket)
    return positions


class ChangeFeed:
    def __init__(self, config, replicas):
        self.secret = config.cluster_secret
        self.replicas = replicas

    def _everywhere(self, method, args):
        """method(*args(name)) on every configured partition: ({name: result}, {name: reason})."""
        names = sorted(self.replicas.engines)
        return self.replicas.fan_out(names, lambda name: self.replicas.call(name, method, *args(name)),
                                     launch=len(names), needed=len(names))

    def now(self, bucket):
        """A page with no changes whose cursor points at the end of every log."""
        heads, failures = self._everywhere('change_log_head', lambda name: ())
        positions = {name: [head['incarnation'], head['top']] for name, head in heads.items()}
        return FeedPage([], cursor_token(bucket, positions, self.secret), sorted(failures), False)

    def page(self, bucket, since, limit, values=False):
        """The changes after the cursor `since` (a token; '0': from the oldest
        kept), at most limit of them: a FeedPage.  Gone when some were trimmed."""
        positions = {} if since == '0' else decode_cursor(since, bucket, self.secret)

        def args(name):
            incarnation, after = positions.get(name, (None, None))
            return bucket, after, incarnation, limit, values
        logs, failures = self._everywhere('read_changes', args)
        gone = sorted(name for name, log in logs.items() if log['gone'])
        if gone:
            raise Gone('cursor_expired', 'changes after this cursor were trimmed on %s (older than the feed\'s '
                       'retention): start again from a listing of the bucket and a new cursor (since omitted)'
                       % ', '.join(gone), partitions=gone)
        horizon = min((log['rows'][-1][8] if len(log['rows']) >= limit else log['now'] for log in logs.values()),
                      default=0)
        read = sorted((row[8], name, row) for name, log in logs.items() for row in log['rows'] if row[8] <= horizon)
        changes, seen = [], set()
        for logged, name, row in read:
            if (row[1], row[2]) not in seen:
                seen.add((row[1], row[2]))
                changes.append(as_change(name, row))
        if len(changes) > limit:   # the page ends with the limit-th change, and those logged at its time
            horizon = changes[limit - 1].logged
            changes = [change for change in changes if change.logged <= horizon]
        new_positions = {name: position for name, position in positions.items()
                         if name in self.replicas.engines}   # a partition removed from the ring: gone with it
        more = False
        for name, log in logs.items():
            rows = log['rows']
            taken = [row for row in rows if row[8] <= horizon]
            complete = len(taken) == len(rows) and len(rows) < limit
            if complete:
                position = log['top']
            elif taken:
                position = taken[-1][0]
            else:
                incarnation, after = positions.get(name, (None, None))
                position = log['trimmed'] if after is None or log['reset'] else after
            more = more or not complete
            new_positions[name] = [log['incarnation'], position]
        return FeedPage(causal_order(changes), cursor_token(bucket, new_positions, self.secret),
                        sorted(failures), more)


def as_change(name, row):
    seq, key, version_id, clock, deleted, content_type, size, modified, logged = row[:9]
    seen, dot = decode_version_clock(clock)
    version = Version(version_id=version_id, clock=seen, dot=dot, deleted=deleted, content_type=content_type,
                      value=b'', digest='', modified=modified, size=size)
    return Change(key, version, row[9] if len(row) > 9 else None, name, seq, logged)


def causal_order(changes):
    """changes, each key's in an order where none comes before one it
    supersedes (each key keeps its places in the page)."""
    places = {}
    for i, change in enumerate(changes):
        places.setdefault(change.key, []).append(i)
    ordered = list(changes)
    for key, indices in places.items():
        if len(indices) < 2:
            continue
        left, sequence = [changes[i] for i in indices], []
        while left:
            first = next((c for c in left if not any(c.version.supersedes(o.version) for o in left if o is not c)),
                         left[0])
            sequence.append(first)
            left.remove(first)
        for i, change in zip(indices, sequence):
            ordered[i] = change
    return ordered

