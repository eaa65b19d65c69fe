"""Versioning: vector clocks, versions of a key, and how replicas reconcile them.

A clock maps an actor to a counter.  An actor is a partition's incarnation,
"<partition>.<incarnation>" (see engines: an id of 12 hex digits minted when the
partition's tables are created, and again after a restore), or a bare legacy
"<partition>".  A version carries the
clock it was written with; a replica keeps every version that no other version
it holds descends from (siblings), so concurrent writes are never silently lost.
"""
import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import json
import re
import time
import uuid


# A context a client sends back: at most this long (the clock column holds
# 4096 bytes: the clock the context becomes, and a dot), with counters a
# BIGINT holds.
MAX_CONTEXT_BYTES = 4096
MAX_COUNTER = 2 ** 63 - 1
# An actor as the store mints it (engines.rows.new_incarnation_id): anything
# else in a clock was forged, and could grow a key's context past what a
# client can send back.
ACTOR = re.compile(r'[A-Za-z0-9_-]{1,64}(\.[0-9a-f]{12})?\Z')
# Seconds a counter (a time in microseconds, next_dot) in a context may be
# ahead of this front end's clock: [store] max_clock_skew.
MAX_CLOCK_SKEW = 60.0
EMPTY_DIGEST = hashlib.sha256(b'').hexdigest()


def now_micros():
    """This front end's clock, in microseconds since the epoch: what a
    version's date and expiry are read against."""
    return time.time_ns() // 1000


class BadContext(ValueError):
    """A causal context sent by a client could not be decoded."""


# --- clocks ----------------------------------------------------------------

@functools.lru_cache(maxsize=1024)   # a store's actors are few: its partitions' incarnations
def minted(actor):
    """Is actor one the store mints (ACTOR)?"""
    return ACTOR.match(actor) is not None


def actor_partition(actor):
    """The partition an actor (a clock's entry) belongs to: 'p1' for 'p1.3f9a' or 'p1'."""
    return actor.split('.', 1)[0]


def clock_limit(partitions):
    """Entries a version's clock keeps (prune)."""
    return max(8, 2 * len(partitions))


def context_limit(partitions):
    """Entries a context may carry: a clock's, twice over (siblings merged)."""
    return 2 * clock_limit(partitions)


def merge(*clocks):
    merged = {}
    for clock in clocks:
        for actor, count in clock.items():
            if count > merged.get(actor, 0):
                merged[actor] = count
    return merged


def encode_clock(clock):
    return json.dumps(clock, sort_keys=True, separators=(',', ':')).encode()


_json_decode = json.JSONDecoder().decode


def decode_clock(data):
    # Text to the decoder itself: json.loads of bytes first sniffs their encoding.
    return _json_decode(data.decode() if isinstance(data, (bytes, bytearray)) else data)


def encode_token(data):
    """Bytes as an opaque URL-safe token (contexts, listing cursors)."""
    return base64.urlsafe_b64encode(data).decode('ascii').rstrip('=')


def decode_token(text):
    """The bytes of a token; ValueError when it is not one."""
    text = text.strip()
    try:
        return base64.b64decode(text + '=' * (-len(text) % 4), altchars=b'-_', validate=True)
    except (binascii.Error, UnicodeError) as e:
        raise ValueError(str(e))


def context_binding(bucket, key):
    """What binds a context to its key: the first 8 bytes of SHA-256 of
    bucket NUL key, in hex."""
    return hashlib.sha256(('%s\0%s' % (bucket, key)).encode('utf-8', 'surrogatepass')).hexdigest()[:16]


def context_signature(secret, clock, binding):
    """What proves the store issued a context (with [cluster] secret): the
    first 16 bytes of HMAC-SHA256 of its clock and binding, in hex."""
    message = b'context\0' + encode_clock({'c': clock, 'k': binding})
    return hmac.new(secret.encode('utf-8'), message, hashlib.sha256).hexdigest()[:32]


def encode_context(clock, bucket, key, secret=None):
    """The opaque causal context a client hands back on its next write of this
    key: {"c": clock, "k": context_binding(bucket, key)}, and with a secret
    "s": context_signature, as a token."""
    return _context_token(tuple(sorted(clock.items())), bucket, key, secret)


@functools.lru_cache(maxsize=4096)   # hot keys are read again and again
def _context_token(items, bucket, key, secret):
    clock, binding = dict(items), context_binding(bucket, key)
    context = {'c': clock, 'k': binding}
    if secret is not None:
        context['s'] = context_signature(secret, clock, binding)
    return encode_token(encode_clock(context))


def decode_context(text, partitions, bucket, key, max_skew=MAX_CLOCK_SKEW, now=None, secret=None):
    """The clock of a context a client sent back with a write of this key.  It
    must have been issued for this key (a context of another key, or a plain
    clock bound to none, would make the write replace versions it never saw),
    signed with the secret when there is one (context_signature: then no
    actor, counter or binding can have been made up),
    its actors must be ones the store mints for the configured `partitions`
    (names), no more than context_limit of them, and its counters no further
    ahead of the time (`now`, seconds) than max_skew seconds (a counter from the
    future would have the key's next dots issued from it): anything else is
    BadContext, before it could be stored with a key for good."""
    if len(text) > MAX_CONTEXT_BYTES:
        raise BadContext('a context has at most %d characters' % MAX_CONTEXT_BYTES)
    try:
        context = json.loads(decode_token(text))
    except (ValueError, UnicodeError, RecursionError):
        raise BadContext('the context is not one this store issued')
    fields = {'c', 'k', 's'} if secret is not None else {'c', 'k'}
    if not isinstance(context, dict) or set(context) != fields or not isinstance(context['k'], str):
        raise BadContext('the context is not one this store issued for a key (read the key again for one)')
    if context['k'] != context_binding(bucket, key):
        raise BadContext('this context belongs to another key')
    clock = context['c']
    if secret is not None and not (isinstance(clock, dict) and isinstance(context['s'], str) and hmac.compare_digest(
            context['s'].encode('utf-8', 'replace'), context_signature(secret, clock, context['k']).encode())):
        raise BadContext('the context is not one this store issued (its signature is wrong)')
    if not isinstance(clock, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_COUNTER
            for k, v in clock.items()):
        raise BadContext('the context is not one this store issued')
    if not all(ACTOR.match(actor) and actor_partition(actor) in partitions for actor in clock):
        raise BadContext('the context names actors this store did not mint')
    if len(clock) > context_limit(partitions):
        raise BadContext('the context has more entries than this store keeps')
    ahead = max(clock.values(), default=0) / 1e6 - (time.time() if now is None else now)
    if ahead > max_skew:
        raise BadContext('the context holds a counter %.0f s ahead of this front end\'s clock (at most %g s '
                         'are allowed: [store] max_clock_skew)' % (ahead, max_skew))
    return clock


# --- versions --------------------------------------------------------------

def iso_time(seconds=None):
    """Seconds since the epoch (default: now) in ISO 8601, UTC."""
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(seconds))


SHARED_SECOND = 'shared_second'   # metadata: the version replaced one written in the same second


@dataclasses.dataclass
class Version:
    """One version of a key: a value, or a tombstone when deleted.

    A version is a dotted version vector: `dot` names the write event itself
    (the coordinating partition and its counter), `clock` is everything the
    writer had seen.  Keeping the two apart is what lets two writes with the
    same stale context through the same coordinator both survive as siblings.
    """
    version_id: str
    clock: dict
    dot: tuple
    deleted: bool
    content_type: str
    value: bytes
    digest: str
    modified: int  # microseconds since the epoch
    size: int = 0
    chunk_size: int = 0          # 0: the value is inline; else its bytes are in chunks
    metadata: dict = dataclasses.field(default_factory=dict)
    expires: int = 0             # microseconds since the epoch when the value is gone; 0: never
    # Where the chunks can be read (an engine); not part of the version itself.
    chunk_source: object = dataclasses.field(default=None, compare=False, repr=False)
    # What an engine made of it to store it, kept for the write's other
    # partitions (engines/mariadb.py: the INSERT each of them sends).
    stored_as: dict = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def new(cls, seen, dot, value, content_type, deleted=False, metadata=None, version_id=None,
            digest=None, size=None, chunk_size=0, chunk_source=None, expires=0):
        """A new version: an inline value, a tombstone, or (with chunk_size) a
        value whose chunks are already written under version_id; expires: when
        the value is gone (microseconds, 0: never)."""
        value = b'' if deleted or chunk_size else value
        return cls(version_id=version_id or uuid.uuid4().hex, clock=dict(seen), dot=tuple(dot),
                   deleted=deleted, content_type=content_type, value=value,
                   digest=digest or hashlib.sha256(value).hexdigest(),
                   modified=now_micros(), size=len(value) if size is None else size,
                   chunk_size=chunk_size, metadata=metadata or {}, chunk_source=chunk_source,
                   expires=0 if deleted else expires)

    def expired(self, now=None):
        """The value's time has come (by this front end's clock, or `now`)."""
        return bool(self.expires) and self.expires <= (now_micros() if now is None else now)

    def tombstone(self):
        """What an expired version becomes once its time has passed (sync.py
        gc turns its row into this in place, engines' reap_expired): the same
        version (id, clocks, date, expiry), with its value and chunks gone.
        It still supersedes every version the value did, so no older copy
        comes back in its place."""
        return dataclasses.replace(self, deleted=True, content_type='', value=b'', digest=EMPTY_DIGEST, size=0,
                                   chunk_size=0, metadata={}, chunk_source=None)

    @property
    def date(self):
        """When it was written, in whole seconds, as the HTTP date conditions
        compare it: a second later if another version of the key was written
        in the same second (SHARED_SECOND), since a date cannot tell the two
        apart: If-Unmodified-Since with that second then fails, If-Modified-Since
        does not answer 304."""
        return self.modified // 1_000_000 + (1 if self.metadata.get(SHARED_SECOND) else 0)

    @property
    def chunk_count(self):
        return -(-self.size // self.chunk_size) if self.chunk_size else 0

    @property
    def etag(self):
        """The raw value's entity tag: the version's own id, so every write
        (even of the same bytes, or the same bytes with other metadata) has a
        new one, and an If-Match can never match a later write that happens to
        carry old bytes again.  The bytes' SHA-256 is `digest`."""
        return '"%s"' % self.version_id

    @property
    def full_clock(self):
        actor, counter = self.dot
        return merge(self.clock, {actor: counter})

    def has_seen(self, other):
        actor, counter = other.dot
        return self.clock.get(actor, 0) >= counter

    def supersedes(self, other):
        """This version replaces other: its writer had seen other."""
        if self.version_id == other.version_id or not self.has_seen(other):
            return False
        # Both having seen each other only happens when a partition lost its
        # counters; the later write wins so the order stays total.
        return not other.has_seen(self) or (self.modified, self.version_id) > (
            other.modified, other.version_id)


def encode_version_clock(version):
    return encode_clock({'seen': version.clock, 'dot': list(version.dot)})


def decode_version_clock(data):
    """(seen clock, dot) from the stored column."""
    stored = decode_clock(data)
    return stored['seen'], tuple(stored['dot'])


def prune(clock, partitions, limit, keep=()):
    """Bound a clock's size: past `limit` entries, drop first those of partitions
    no longer configured, then a configured partition's older incarnations (all
    its entries but the one with the highest counter), smallest counters first;
    never an actor in `keep` (the dots of the versions the clock must cover).
    Forgetting an entry can only make an old version look concurrent (a
    sibling), never make a write disappear or a newer version older: a new
    dot is numbered from the held versions' full clocks, not from this one."""
    if len(clock) <= limit:
        return clock
    newest = {}
    for actor, count in clock.items():
        partition = actor_partition(actor)
        if (count, actor) > newest.get(partition, (0, '')):
            newest[partition] = (count, actor)
    removable = sorted((actor_partition(actor) in partitions, count, actor) for actor, count in clock.items()
                       if actor not in keep and (actor_partition(actor) not in partitions
                                                 or newest[actor_partition(actor)][1] != actor))
    drop = {actor for _, _, actor in removable[:len(clock) - limit]}
    return {actor: count for actor, count in clock.items() if actor not in drop}


def next_dot(actor, held, context, now=None):
    """A dot for a new write coordinated by actor: above every counter of it the
    context or the held versions show, and no lower than the time (microseconds,
    `now`).  The time is the guard for a partition rolled back or restored with
    its incarnation (a power loss, a backup): it may no longer hold the counters
    it issued, but it never issues one below the time, so it cannot reuse
    one issued earlier unless the front ends' clocks differ by more than the
    time since."""
    counter = max([context.get(actor, 0)] + [v.full_clock.get(actor, 0) for v in held])
    return actor, max(counter + 1, now_micros() if now is None else now)


def reconcile(held, incoming):
    """How a replica holding `held` versions takes in `incoming`: it keeps every
    version no other one supersedes.

    Returns (ids of held versions to drop, whether to store incoming).  A
    version already held, or one that a held version supersedes, is not stored.
    """
    present = any(v.version_id == incoming.version_id for v in held)
    candidates = held if present else held + [incoming]
    dropped = {v.version_id for v in candidates if any(u.supersedes(v) for u in candidates)}
    return [v.version_id for v in held if v.version_id in dropped], not present and incoming.version_id not in dropped


def live(versions, now=None):
    """The versions that hold a value: neither tombstones nor expired (at
    `now`, microseconds; default this front end's clock)."""
    now = now_micros() if now is None else now
    return [v for v in versions if not v.deleted and not v.expired(now)]


def carried(version, now=None):
    """What of a version is copied to a replica that lacks it (read repair,
    hints, sync.py): an expired one as its tombstone, so that no copy brings
    its value back and it still supersedes what it replaced."""
    return version.tombstone() if not version.deleted and version.expired(now) else version


def context_of(versions, partitions=None):
    """The merged clock of every version: what a client has 'seen'.  Only
    actors the store mints are kept (a clock stored before forged ones were
    refused may name some), and with `partitions`, no more entries than a
    context may carry (context_limit), the versions' own dots always among
    them: a write with it supersedes every one of them."""
    merged = {actor: count for actor, count in merge(*(v.full_clock for v in versions)).items()
              if minted(actor)}
    if partitions is None:
        return merged
    return prune(merged, partitions, context_limit(partitions), keep={v.dot[0] for v in versions})


class Held(list):
    """The versions of a key one replica holds, and its bucket's fence there:
    the time (microseconds) up to which a forced delete of the bucket dropped
    every version (None: never dropped).  A partition a front end did not know
    of when it dropped the bucket (one just added) has no fence yet, and may
    still hold such versions: every other replica's fence covers them."""

    def __init__(self, versions=(), fence=None):
        super().__init__(versions)
        self.fence = None if fence is None else int(fence)


def newest_fence(replies, fence=None):
    """The newest bucket fence among replies (Held lists) and fence."""
    fences = [f for f in [fence] + [getattr(held, 'fence', None) for held in replies] if f is not None]
    return max(fences, default=None)


def unfenced(versions, fence):
    """versions less those a forced delete of their bucket dropped (fence: newest_fence)."""
    return list(versions) if fence is None else [v for v in versions if v.modified > fence]


def resolve(replies, fence=None):
    """Merge the version lists several replicas returned into the current set,
    less the versions any of their bucket fences (or fence) covers: a forced
    delete dropped those, wherever one is still held."""
    replies = list(replies)
    fence = newest_fence(replies, fence)
    current = {}
    for versions in replies:
        for version in unfenced(versions, fence):
            # A version one replica holds as its tombstone (expired, reaped)
            # is that tombstone wherever else its value is still held.
            if version.deleted or version.version_id not in current:
                current[version.version_id] = version
    return sorted((v for v in current.values()
                   if not any(o.supersedes(v) for o in current.values())),
                  key=lambda v: (v.modified, v.version_id))
