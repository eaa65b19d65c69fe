"""The write path: coordinate a write on one owner, replicate it, answer with a receipt.

A write is coordinated by the first replica of the key's preference list that
answers: inside one locked transaction it checks the request's preconditions,
builds the new version's clock and stores it.  The version then goes to the
other replicas (replication.py).  A conditional write is decided by the key's
first owner alone (decider.py).
"""
import dataclasses
import hashlib
import io
import time

from kvstore.coordinator.chunks import chunks_of, read_up_to
from kvstore.coordinator.integrity import Hasher
from kvstore.coordinator.replication import Replication
from kvstore.coordinator.validation import write_quorums
from kvstore.coordinator.expiry import Lifetime
from kvstore.coordinator.versions import (SHARED_SECOND, Version, clock_limit, context_of, live, merge, next_dot,
                                          now_micros, prune)
from kvstore.engines import BAD_DATA, FULL, NewerView, PartitionError, Recorded
from kvstore.errors import (BadRequest, IdempotencyKeyReused, InsufficientStorage, NotFound, TooManySiblings,
                            Unavailable)

IDEMPOTENCY_WINDOW = 24 * 3600   # seconds a write's idempotency record is kept


@dataclasses.dataclass
class Receipt:
    version: Version
    created: bool             # no live version existed before
    context: dict             # None when the write left siblings beside it
    siblings: int             # versions the coordinator holds after the write
    preference_list: list
    acknowledged: list        # replicas in the preference list that hold the version
    coordinator: str
    hints: dict               # {replica that was down: partition holding its hint}
    down: dict                # {replica that could not be written: reason}
    replayed: bool = False    # the outcome of an earlier attempt with the same idempotency key


@dataclasses.dataclass
class IdempotencyKey:
    """A write's Idempotency-Key, and what the request asked for but its body
    (method, media type, metadata, conditions): with the body's digest, the
    fingerprint that tells a retry from another write reusing the key."""
    key: str
    request: str

    def for_body(self, digest):
        """(key, fingerprint, window): what engine.coordinate records."""
        fingerprint = hashlib.sha256(('%s\n%s' % (self.request, digest)).encode()).hexdigest()
        return self.key, fingerprint, IDEMPOTENCY_WINDOW


def refuse_bad_writes(failures):
    """Failures that are the write's fault (400) or a full disk's (507), not a partition's health."""
    if BAD_DATA in failures.values():
        raise BadRequest('bad_data', 'the write holds data too large or malformed for the store '
                         '(a header, a metadata or context field)')
    if FULL in failures.values():
        raise InsufficientStorage('no replica of the key has room for the write', failed=failures)


def must_exist(bucket, key, check=None, read_elsewhere=()):
    """A delete's check(current live versions): NotFound without one (nor
    one among read_elsewhere, what a read of the key found), then check's."""
    def check_deleted(current):
        if not current and not live(read_elsewhere):
            raise NotFound('no key %r in bucket %r' % (key, bucket))
        if check:
            check(current)
    return check_deleted


def make_tombstone(seen, dot):
    return Version.new(seen, dot, b'', '', deleted=True)


class Writer:
    def __init__(self, config, replicas, placement, buckets, chunks, decider, handoff, settling, reader):
        self.config = config
        self.reader = reader
        self.replicas = replicas
        self.placement = placement
        self.buckets = buckets
        self.chunks = chunks
        self.decider = decider
        self.handoff = handoff
        self.settling = settling

    def put(self, bucket, key, value, content_type, context=None, check=None, w=None,
            metadata=None, expected=None, conditional=False, pw=None, idempotency=None, lifetime=None):
        """Store a value: bytes, or a stream to read (read(n)).  check(current live
        versions) may raise to refuse; expected: digests the body must match.
        conditional: check is a precondition of the client's (compare-and-swap).
        idempotency: an IdempotencyKey (see write).  lifetime: the expiry asked
        for (expiry.Lifetime; None, as an empty one: the bucket's ttl).
        A value larger than a chunk goes to its coordinator first (chunks.py)."""
        expires = (lifetime or Lifetime()).expires(self.buckets.properties_cached(bucket).get('ttl'), now_micros())
        stream = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value
        size = self.config.chunk_size
        hasher = Hasher(expected)
        first = read_up_to(stream, size)
        second = read_up_to(stream, size) if len(first) == size else b''
        if not second:
            hasher.update(first)
            self.chunks.check_size(hasher.size)
            hasher.verify()
            return self.write(bucket, key, context, check, w, lambda seen, dot: Version.new(
                seen, dot, first, content_type, metadata=metadata, expires=expires), conditional=conditional, pw=pw,
                idempotency=idempotency and idempotency.for_body(hasher.hexdigest))

        preference, _ = self.placement.of(bucket, key)
        candidates = preference[:1] if conditional or idempotency else preference
        coordinator, version_id = self.chunks.upload(candidates, bucket, key,
                                                     chunks_of(stream, (first, second), size), hasher)
        engine = self.replicas.engines[coordinator]
        return self.write(bucket, key, context, check, w, lambda seen, dot: Version.new(
            seen, dot, b'', content_type, metadata=metadata, version_id=version_id,
            digest=hasher.hexdigest, size=hasher.size, chunk_size=size, chunk_source=engine, expires=expires),
            coordinators=[coordinator], conditional=conditional, pw=pw,
            idempotency=idempotency and idempotency.for_body(hasher.hexdigest))

    def delete(self, bucket, key, context=None, check=None, w=None, conditional=False, pw=None, idempotency=None,
               also_seen=()):
        """Write a tombstone; NotFound when there is no live version.  Its
        coordinator may have missed the key's last write (sloppy quorum), so
        one without a context or condition (blind) deletes what a read of the
        key returns as well as what its coordinator holds, as Riak's does.
        also_seen: versions it replaces besides (a batch's attempt, batches.py)."""
        blind = context is None and not conditional and idempotency is None
        read = (self.reader.get(bucket, key).versions if blind else []) + list(also_seen)

        def tombstone(read_elsewhere):
            return self.write(bucket, key, context, must_exist(bucket, key, check, read_elsewhere), w,
                              make_tombstone, conditional=conditional, pw=pw,
                              idempotency=idempotency and idempotency.for_body(''), also_seen=read_elsewhere)
        try:
            return tombstone(read)
        except NotFound:
            # Not found only if no owner holds a live version.
            preference = self.placement.of(bucket, key)[0]
            versions = self.placement.read_owners(preference, bucket, key)
            if not live(versions):
                raise
            self.placement.spread(bucket, key, versions, preference)
        return tombstone(read + versions if blind else read)

    def write(self, bucket, key, context, check, w, make, coordinators=None, conditional=False, pw=None,
              idempotency=None, also_seen=()):
        """Coordinate a write, replicate it, and answer with its receipt.
        make(seen context, dot) builds the new version; coordinators: the
        partitions it may be coordinated by (None: the key's owners, in order);
        also_seen: versions read elsewhere that it replaces besides those its
        coordinator holds (a blind delete's).
        A conditional one is only ever coordinated by the key's first owner.
        So is one with an idempotency key ((key, fingerprint, window)): its
        outcome is recorded there with its version, and a retry with the same
        key and fingerprint gets it again (replayed), with another fingerprint
        422 (IdempotencyKeyReused)."""
        args = (bucket, key, context, check, w, make, coordinators, conditional or idempotency is not None, pw,
                idempotency, also_seen)
        try:
            return self._write(*args)
        except NewerView:
            # A conditional write's decider records a newer view than this front
            # end knew: read the views again and decide with their rings.
            self.placement.forget_previous_rings()
        try:
            return self._write(*args)
        except NewerView as e:
            raise Unavailable('the views recorded on the partitions changed while the write was '
                              'decided, or could not be read: try again', failed={e.partition: str(e)})

    def _write(self, bucket, key, context, check, w, make, coordinators, conditional, pw, idempotency, also_seen):
        started = time.monotonic()
        props = self.buckets.properties_cached(bucket)
        w, pw = write_quorums(self.config, props, w, pw)
        if props['conflicts'] == 'lww':
            context = None   # every write supersedes all the coordinator holds
        preference, fallbacks = self.placement.of(bucket, key)
        self.placement.adopt_previous_owners(bucket, key, preference)   # during a view change
        stage = None
        if conditional:
            coordinators, stage = self.decider.prepare(bucket, key, preference, coordinators)
        recorded = None
        try:
            if conditional and len(coordinators) > 1:   # during a view change (decider.py)
                coordinator, held, version, failures = self._decide_everywhere(
                    bucket, key, coordinators, stage, context, check, make, idempotency)
            else:
                coordinator, held, version, failures = self._coordinate(
                    bucket, key, coordinators or preference, context, check, make, conditional and preference[0],
                    stage, idempotency, also_seen)
        except Recorded as e:
            # Read again where it was recorded: of several deciders, perhaps only one committed it.
            recorded, coordinator = e.record, e.partition
            held, version, failures = e.held, self._replay(e, idempotency, coordinator, bucket, key), {}
            if version.version_id not in {v.version_id for v in held}:
                # Superseded since by another write: the outcome is all there is to give.
                return Receipt(version=version, created=e.record['created'], context=None, siblings=1,
                               preference_list=preference, acknowledged=[coordinator], coordinator=coordinator,
                               hints={}, down={}, replayed=True)
        replication = Replication(self.replicas, self.handoff, self.settling, bucket, key, coordinator, version,
                                  held, preference, fallbacks, failures)
        return self.receipt(version, held, preference, coordinator, replication.run(w, started), w, pw, recorded)

    @staticmethod
    def receipt(version, held, preference, coordinator, outcome, w, pw, recorded=None):
        """The Receipt of a version its coordinator stored (held: what it held
        before) and replication's outcome (acknowledged, hints, down) gave
        to the other owners; Unavailable when fewer than w replicas (pw of
        them owners) hold it.  recorded: an earlier attempt's record (replayed)."""
        acknowledged, hints, down = outcome
        if len(acknowledged) + len(hints) < w or len(acknowledged) < pw:
            raise Unavailable('%d replicas acknowledged the write, %d of them owners; it needs %d, %d of '
                              'them owners.  It may have been applied on %s'
                              % (len(acknowledged) + len(hints), len(acknowledged), w, pw,
                                 ', '.join(acknowledged + sorted(hints.values()))),
                              failed=down, acknowledged=acknowledged, hints=hints)
        # The writer has seen its own version, but not siblings it left beside
        # it: no context then, so that its next write cannot supersede them unseen.
        siblings = [v for v in held if not version.supersedes(v) and v.version_id != version.version_id]
        return Receipt(version=version, created=recorded['created'] if recorded else not live(held),
                       context=None if siblings else version.full_clock, siblings=len(siblings) + 1,
                       preference_list=preference, acknowledged=acknowledged,
                       coordinator=coordinator, hints=hints, down=down, replayed=recorded is not None)

    def _replay(self, recorded, idempotency, coordinator, bucket, key):
        """The version an earlier attempt with the same idempotency key stored
        (read again from its coordinator with its value, to be replicated
        again; else, superseded since, one rebuilt from its record);
        IdempotencyKeyReused when that attempt asked for something else."""
        record = recorded.record
        if record['fingerprint'] != idempotency[1]:
            raise IdempotencyKeyReused('the Idempotency-Key was used for another request to this key (other '
                                       'method, body, media type, metadata or conditions)')
        version = None
        if any(v.version_id == record['version_id'] for v in recorded.held):   # held without its value
            try:
                version = next((v for v in self.replicas.call(coordinator, 'read', bucket, key)
                                if v.version_id == record['version_id']), None)
            except PartitionError as e:
                raise Unavailable('the key\'s first owner, %s, recorded the write but could not be read '
                                  'again' % coordinator, failed={coordinator: e.reason})
        if version is None:
            version = Version(version_id=record['version_id'], clock={}, dot=('', 0), deleted=record['deleted'],
                              content_type='', value=b'', digest=record['digest'], modified=record['modified'])
        return version

    def _coordinate(self, bucket, key, candidates, context, check, make, decider, stage=None, idempotency=None,
                    also_seen=()):
        """Have the first of candidates that answers decide the write and store
        its version: (that coordinator, the versions it held, the version,
        {candidate that failed: reason}).  decider: the first owner, for a
        conditional write (else False); stage: the view it was placed by (decider.py);
        also_seen: versions it replaces besides the coordinator's (decision)."""
        failures, also_seen = {}, list(also_seen)
        for coordinator in candidates:
            attempts = []
            try:
                held, version = self.replicas.call(
                    coordinator, 'coordinate', bucket, key,
                    self.decision(coordinator, context, check, make, also_seen, attempts), stage, idempotency)
                return coordinator, held, version, failures
            except PartitionError as e:
                failures[coordinator] = e.reason
                if e.unavailable:
                    # It failed to answer, perhaps after it decided: it may
                    # still commit its attempt, which the next one covers.
                    also_seen += attempts
        refuse_bad_writes(failures)
        if decider:
            raise Unavailable('a conditional write is decided by the key\'s first owner, %s, which '
                              'did not answer; it may have been applied there' % decider, failed=failures)
        raise Unavailable('no replica of the key could take the write', failed=failures)

    def _decide_everywhere(self, bucket, key, deciders, stage, context, check, make, idempotency=None):
        """_coordinate for a conditional write with several deciders: decided
        under all their locks, numbered by the first (the configured first owner)."""
        coordinator = deciders[0]
        try:
            # A large value's chunks are on the first; the others check for them too.
            probe = make({}, (self.replicas.engines[coordinator].actor, 0))
            for other in deciders[1:]:
                self.replicas.call(other, 'copy_chunks', bucket, key, probe)
            held, version = self.decider.coordinate(deciders, stage, bucket, key,
                                                    self.decision(coordinator, context, check, make), idempotency)
        except PartitionError as e:
            refuse_bad_writes({e.partition: e.reason})
            raise Unavailable('a conditional write is decided by the key\'s first owners in the rings '
                              'that may place it, %s; %s did not answer: it may have been applied'
                              % (', '.join(deciders), e.partition), failed={e.partition: e.reason})
        return coordinator, held, version, {}

    def decision(self, coordinator, context, check, make, also_seen=(), attempts=None):
        """decide(held) for engine.coordinate: check the versions the
        coordinator holds (raising to refuse), and build the new version.
        also_seen: versions the new one replaces besides the coordinator's:
        a blind delete's read, and the attempts of this write on coordinators
        that failed to answer after deciding (a pause), which may still commit
        theirs: wherever two attempts meet the later replaces the earlier, and
        whatever replaces the later (a delete through an owner that never saw
        the first) replaces both.  attempts: a list each decision adds its
        version to."""
        engines = self.replicas.engines
        attempts = [] if attempts is None else attempts

        def decide(held):
            if check:
                check(live(held))
            seen = context if context is not None else context_of(held)
            seen = merge(seen, context_of(also_seen))
            seen = prune(seen, engines, clock_limit(engines), keep={v.dot[0] for v in held + list(also_seen)})
            version = make(seen, next_dot(engines[coordinator].actor, held, seen))
            attempts.append(version)
            if any(v.modified // 10 ** 6 >= version.modified // 10 ** 6 for v in held):
                version.metadata = dict(version.metadata, **{SHARED_SECOND: True})
            kept = [v for v in held if not version.supersedes(v)]
            if len(kept) >= self.config.max_siblings:
                raise TooManySiblings(
                    'the key has %d siblings, the most allowed; GET it and PUT one value '
                    'with its X-Context to resolve them' % len(kept), limit=self.config.max_siblings)
            return version
        return decide
