"""Routing and replication: which partitions hold a key, and quorums over them.

The layers, each with the same small get/put/delete shape:

    Datastore   routing (ring.py) + replication with quorums (this module)
    versions    vector clocks and how versions supersede each other
    engines     one partition's storage: SQLite or MySQL/MariaDB

A write is coordinated by the first replica of the key's preference list that
answers: inside one locked transaction it checks the request's preconditions,
builds the new version's clock and stores it.  The version then goes to the
other replicas in parallel; a replica that is down or fails gets a hint
instead, stored on the next healthy partition beyond the preference list
(sloppy quorum).  The write succeeds once W replicas (the coordinator
included, hints counted) hold it.  A read asks R replicas in parallel, asking
the next one (then the fallbacks' hints) whenever one fails, and returns the
versions no other version supersedes; replicas found stale are repaired in
the background.  Every call to a partition goes through the failure detector
(health.py), so known-down partitions are skipped rather than waited for.
"""
import concurrent.futures
import dataclasses
import io
import hashlib
import json
import logging
import re
import select
import sys
import time
import uuid

import threading

from kvstore import configuration
from kvstore import metrics
from kvstore.engines import BAD_DATA, FULL, PartitionError, open_engine
from kvstore.errors import (BadRequest, BucketNotEmpty, CorruptData, InsufficientStorage, NotFound, TooLarge,
                    TooManySiblings, Unavailable)
from kvstore.coordinator.gossip import Gossip
from kvstore.coordinator.health import Health
from kvstore.coordinator.integrity import Hasher
from kvstore.coordinator.ring import Ring
from kvstore.coordinator.versions import Version, context_of, live, next_dot, prune, reconcile, resolve

log = logging.getLogger('kvstore.datastore')
BUCKET_NAME = re.compile(r'[a-z0-9][a-z0-9._-]{0,62}\Z')
DEFAULT_BUCKET_PROPERTIES = {'conflicts': 'siblings'}
MAX_LIST_LIMIT = 10000
PRIMARY_QUORUMS = ('pr', 'pw')
BUCKET_CACHE_SECONDS = 5.0   # how long a front end trusts bucket properties it read
BUCKET_CACHE_ENTRIES = 10000   # buckets whose properties a front end keeps
KEY_COUNT_SECONDS = 60.0     # how long GET /cluster reuses its count of keys per partition
PENDING_DROP_DELAY = 0.5    # seconds a settled write's pending marker waits to go out with others
REJECTED = 'refused: it holds a version that claims to have seen this one'   # see _rejected


@dataclasses.dataclass
class Read:
    versions: list            # current versions, tombstones included, oldest first
    preference_list: list
    replicas: list            # partitions that answered

    @property
    def current(self):
        """Live versions: none when the key is missing or deleted."""
        return live(self.versions)

    @property
    def context(self):
        return context_of(self.versions)


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


@dataclasses.dataclass
class KeyPage:
    keys: list
    next_after: str           # the last key listed when more follow, else None


def iso_time(seconds):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(seconds))


def key_is_live(rows):
    """Do a key's version rows (from engine.scan) leave a live version?  When
    every replica holds the same single version, its tombstone flag says; only
    when they differ are the clocks decoded and compared."""
    if len({version_id for _, version_id, _, _ in rows}) == 1:
        return not rows[0][2]
    return bool(live(resolve([[make() for _, _, _, make in rows]])))


def read_up_to(stream, size):
    """Up to size bytes: fewer only at the end of the stream."""
    parts, wanted = [], size
    while wanted:
        data = stream.read(wanted)
        if not data:
            break
        parts.append(data)
        wanted -= len(data)
    return b''.join(parts)


class Datastore:
    def __init__(self, config):
        self.config = config
        self.n = config.replicas
        self.engines = {p.name: open_engine(p, config) for p in config.partitions}
        self.ring = Ring.of(config)
        self._view_cache, self._view_lock = (0.0, []), threading.Lock()   # see _previous_rings
        self.health = Health(self.engines, config.backoff, config.max_backoff)
        self.gossip = Gossip(self.health, config.peers, config.gossip_interval, config.cluster_secret,
                             on_recovered=lambda name: self.executor.submit(self.hand_off, name))
        self._bucket_cache = {}
        self._key_counts = (0.0, {})
        self._handoffs = set()
        self._handoff_lock = threading.Lock()
        self._settled, self._settled_lock = {}, threading.Lock()   # see _drop_pending_later
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(8, 4 * len(self.engines)), thread_name_prefix='replica')
        # How long a request waits for replicas before counting them as failed.
        self.timeout = config.connect_timeout + config.read_timeout + 0.5

    @classmethod
    def from_configuration(cls, path=None):
        return cls(configuration.load(path))

    def close(self):
        self.gossip.stop()
        self.executor.shutdown(wait=True)
        for partition in list(self._settled):
            self._drop_settled(partition)
        for engine in self.engines.values():
            engine.close()

    # -- validation ---------------------------------------------------------

    def quorum(self, raw, default, name):
        """A quorum size from a request parameter: 1..N (0..N for the primary
        quorums pr and pw), one, quorum or all."""
        if raw is None or raw == '':
            return default
        words = {'one': 1, 'quorum': self.n // 2 + 1, 'all': self.n}
        least = 0 if name in PRIMARY_QUORUMS else 1
        if raw in words:
            return words[raw]
        value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 4 else -1
        if not least <= value <= self.n:
            raise BadRequest('bad_parameter', '%s must be %d to %d, one, quorum or all' % (name, least, self.n),
                             parameter=name)
        return value

    def quorums(self, props, **requested):
        """The quorums of a request: each one asked for (r=, w=, pr=, pw=), else
        the bucket's property (props), else the configured default."""
        return [requested[name] if requested[name] is not None else props.get(name, getattr(self.config, name))
                for name in requested]

    def check_bucket(self, bucket):
        if not BUCKET_NAME.match(bucket):
            raise BadRequest('bad_bucket', 'bucket names are 1 to 63 characters of a-z, 0-9, '
                             '".", "_" and "-", starting with a letter or digit')

    def check_key(self, bucket, key):
        self.check_bucket(bucket)
        size = len(key.encode('utf-8', 'surrogatepass'))
        if not 0 < size <= self.config.key_length:
            raise BadRequest('bad_key', 'keys are 1 to %d bytes of UTF-8' % self.config.key_length)
        try:
            key.encode('utf-8')
        except UnicodeEncodeError:
            raise BadRequest('bad_key', 'keys are 1 to %d bytes of UTF-8' % self.config.key_length)

    # -- calling partitions -------------------------------------------------

    def call(self, name, method, *args):
        """engine.method(*args) on one partition, through the failure detector."""
        if not self.health.available(name):
            metrics.replica_refused(name)
            raise PartitionError(name, 'down')
        try:
            return getattr(self.engines[name], method)(*args)
        except PartitionError as e:
            if e.unavailable:
                # Blame the partition that failed: copying chunks reads another.
                self.health.failed(e.partition, e.reason)
            raise
        finally:
            metrics.replica_called(name, method, sys.exc_info()[1])
            # Anything but a PartitionError (a refused precondition, say) means
            # the partition answered: that too ends a probe.
            if sys.exc_info()[0] is not PartitionError and self.health.succeeded(name):
                try:
                    self.executor.submit(self.hand_off, name)
                except RuntimeError:  # shutting down
                    pass

    def _fan_out(self, candidates, call, launch, needed, unfinished=None, timeout=None):
        """Run call(partition) on `launch` candidates at once, starting the next
        candidate whenever one fails, until `needed` succeed or none are left.

        call(partition) -> result, raising PartitionError on failure.
        Returns ({partition: result}, {partition: reason}).  Calls still running
        when enough have answered go on in the background; with `unfinished` (a
        dict) they are left there as {future: partition} rather than counted as
        timed out.
        """
        waiting = list(candidates)
        running, results, failures = {}, {}, {}

        def start():
            name = waiting.pop(0)
            running[self.executor.submit(call, name)] = name

        launch = min(launch, len(waiting))
        # When every call launched must answer anyway, the first one runs in
        # this thread: a hand-off to the pool and back costs more than the query.
        inline = waiting.pop(0) if launch and launch <= needed else None
        for _ in range(launch - (inline is not None)):
            start()
        deadline = time.monotonic() + (timeout or self.timeout)
        if inline is not None:
            try:
                results[inline] = call(inline)
            except PartitionError as e:
                failures[inline] = e.reason
                if waiting:
                    start()
        while running and len(results) < needed:
            done, _ = concurrent.futures.wait(running, timeout=max(0, deadline - time.monotonic()),
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                break
            for future in done:
                name = running.pop(future)
                try:
                    results[name] = future.result()
                except PartitionError as e:
                    failures[name] = e.reason
                    if waiting:
                        start()
        if unfinished is not None and len(results) >= needed:
            unfinished.update(running)
        else:
            for name in running.values():
                failures[name] = 'timed out'
        return results, failures

    # -- keys ---------------------------------------------------------------

    def placement(self, bucket, key):
        """(preference list, fallbacks): the N owners, then every other partition."""
        walk = self.ring.walk(bucket, key)
        return list(walk[:self.n]), list(walk[self.n:])

    def get(self, bucket, key, r=None, pr=None):
        """The key's current versions from r replicas, pr of them owners."""
        self.check_key(bucket, key)
        props = self.bucket_properties_cached(bucket)
        r, pr = self.quorums(props, r=r, pr=pr)
        wanted = max(r, pr)
        preference, fallbacks = self.placement(bucket, key)

        def read(p):
            # An owner answers from its objects; a fallback from the hints it holds.
            return self.call(p, 'read' if p in preference else 'read_hints', bucket, key)
        replies, failures = self._at_once(preference[:wanted], 'read', bucket, key)
        if len(replies) < wanted:
            # Those that failed are replaced by the next owners, then by fallbacks.
            more, failed = self._fan_out([p for p in preference + fallbacks if p not in replies and p not in failures],
                                         read, launch=wanted - len(replies), needed=wanted - len(replies))
            replies.update(more)
            failures.update(failed)
        owners = sum(1 for p in replies if p in preference)
        if len(replies) < r or owners < pr:
            raise Unavailable('%d replicas answered the read, %d of them owners; it needs %d, %d of them owners'
                              % (len(replies), owners, r, pr), failed=failures)
        versions = resolve(replies.values())
        if not versions:   # during a view change the key may be on its previous owners only
            versions = self._read_previous_owners(bucket, key, preference, replies)
        self._repair(bucket, key, {p: held for p, held in replies.items() if p in preference}, versions)
        if len(versions) > 1 and props['conflicts'] == 'lww':
            versions = versions[-1:]   # the last writer wins
        return Read(versions=versions, preference_list=preference, replicas=sorted(replies))

    def _at_once(self, names, what, *args, needed=None, laggards=None, since=None):
        """engine.send_<what>(*args) on every partition named, then
        finish_<what> on each as its answer arrives: from this thread, with
        every query sent before any answer is read, so that the databases work
        at once without a thread hand-off (or GIL contention) per partition.
        An answer not there within read_timeout counts as timed out.

        With needed, return once that many have answered and the others have
        had as long again as it took since `since` (a monotonic time; without
        it, no longer); the queries still out go into laggards, {partition:
        sent}, for the caller to finish.
        Returns ({partition: result}, {partition: reason})."""
        sent, results, failures = {}, {}, {}
        needed = len(names) if needed is None else needed
        try:
            for p in names:
                try:
                    sent[p] = self.call(p, 'send_' + what, *args)
                except PartitionError as e:
                    failures[p] = e.reason
            deadline = time.monotonic() + self.config.read_timeout   # for the answers needed
            grace = None                                             # for the others, once those are in
            while sent:
                if len(results) < needed:
                    # One answer left to wait for: reading it waits as long.
                    answered = list(sent) if len(sent) == 1 else self._answered(sent, deadline)
                    if not answered:
                        for p in sent:
                            metrics.replica_timed_out(p)
                            self.health.failed(p, 'timed out')
                            failures[p] = 'timed out'
                        break
                else:
                    if grace is None:
                        now = time.monotonic()
                        grace = min(deadline, now + (now - since)) if since is not None else now
                    answered = self._answered(sent, grace)
                    if not answered:
                        if laggards is not None:
                            laggards.update(sent)
                            sent = {}
                        break
                for p in answered:
                    unread = sent.pop(p)
                    try:
                        results[p] = self.call(p, 'finish_' + what, unread)
                    except PartitionError as e:
                        self.engines[p].abandon_query(unread)   # when found down before reading it
                        failures[p] = e.reason
        finally:
            for p, unread in sent.items():   # timed out, or something unexpected was raised
                self.engines[p].abandon_query(unread)
        return results, failures

    def _answered(self, sent, deadline):
        """The partitions whose answers to sent queries have arrived (or whose
        connections failed), waiting for the first until deadline (a
        monotonic time)."""
        poller, partitions = select.poll(), {}
        for p, unread in sent.items():
            sock = self.engines[p].answer_socket(unread)
            if sock is None:
                return [p]
            partitions[sock.fileno()] = p
            poller.register(sock, select.POLLIN)
        events = poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
        return [partitions[fd] for fd, _ in events]

    def _repair(self, bucket, key, replies, versions):
        """Send owners that answered with less than the current set what they lack."""
        for name, held in replies.items():
            for version in versions:
                if reconcile(held, version)[1]:
                    metrics.read_repair_sent()
                    self.executor.submit(self._apply_quietly, name, bucket, key, version)

    def _apply_quietly(self, name, bucket, key, version):
        try:
            self.call(name, 'apply', bucket, key, version)
        except PartitionError as e:
            log.info('read repair of %s/%s on %s failed: %s', bucket, key, name, e.reason)

    def put(self, bucket, key, value, content_type, context=None, check=None, w=None,
            metadata=None, expected=None, conditional=False, pw=None):
        """Store a value: bytes, or a stream to read (read(n)).  check(current live
        versions) may raise to refuse; expected: digests the body must match.
        conditional: check is a precondition of the client's (compare-and-swap),
        decided on the key's first owner alone (see _write).

        A value that fits in one chunk is stored inline in its version.  A larger
        one is read and written chunk by chunk to the coordinator first, so it
        is never held whole in memory; its version, written last, makes it
        visible at once, and replicas copy the chunks from the coordinator.
        """
        self.check_key(bucket, key)
        stream = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value
        size = self.config.chunk_size
        hasher = Hasher(expected)
        first = read_up_to(stream, size)
        second = read_up_to(stream, size) if len(first) == size else b''
        if not second:
            hasher.update(first)
            self._check_size(hasher.size)
            hasher.verify()
            return self._write(bucket, key, context, check, w, lambda seen, dot: Version.new(
                seen, dot, first, content_type, metadata=metadata), conditional=conditional, pw=pw)

        preference, _ = self.placement(bucket, key)
        candidates = preference[:1] if conditional else preference
        coordinator = next((p for p in candidates if self.health.available(p)), None)
        if coordinator is None:
            raise Unavailable('no replica of the key could take the write',
                              failed={p: 'down' for p in candidates})
        version_id = uuid.uuid4().hex
        try:
            seq, data = 0, first
            while data:
                hasher.update(data)
                self._check_size(hasher.size)
                self._store_chunk(coordinator, bucket, key, version_id, seq, data)
                seq, data = seq + 1, (second if seq == 0 else read_up_to(stream, size))
            hasher.verify()
        except BaseException:
            self._forget_chunks(coordinator, version_id)
            raise
        engine = self.engines[coordinator]
        return self._write(bucket, key, context, check, w, lambda seen, dot: Version.new(
            seen, dot, b'', content_type, metadata=metadata, version_id=version_id,
            digest=hasher.hexdigest, size=hasher.size, chunk_size=size, chunk_source=engine),
            coordinators=[coordinator], conditional=conditional, pw=pw)

    def open_value(self, version, first=0, last=None):
        """The bytes first..last (inclusive) of a version, as an iterator of
        chunks read one at a time.  Bytes that do not match their digest are
        never served: an inline value is checked before anything is sent, a
        chunked one chunk by chunk (and whole, when it is read whole), and a
        mismatch ends the stream with an error."""
        last = version.size - 1 if last is None else last
        if not version.chunk_size:
            if hashlib.sha256(version.value).hexdigest() != version.digest:
                log.error('version %s: the value does not match its digest', version.version_id)
                raise CorruptData('the stored value is damaged; it is not served')
            return iter([version.value[first:last + 1]])
        return self._stream_chunks(version, first, last)

    def _stream_chunks(self, version, first, last):
        whole = hashlib.sha256() if (first, last) == (0, version.size - 1) else None
        for data in version.chunk_source.iter_value(version, first, last):
            if whole:
                whole.update(data)
            yield data
        if whole and whole.hexdigest() != version.digest:
            log.error('version %s: the chunks do not match the value digest', version.version_id)
            raise CorruptData('the stored value is damaged')

    def _check_size(self, size):
        if size > self.config.max_value_bytes:
            raise TooLarge('values are at most %d bytes' % self.config.max_value_bytes,
                           limit=self.config.max_value_bytes)

    def _store_chunk(self, partition, bucket, key, version_id, seq, data):
        try:
            self.call(partition, 'write_chunk', bucket, key, version_id, seq, data)
        except PartitionError as e:
            if e.reason == FULL:
                raise InsufficientStorage('partition %s is full' % partition, failed={partition: e.reason})
            raise Unavailable('the partition taking the value failed', failed={partition: e.reason})

    def _forget_chunks(self, partition, version_id):
        """Remove the chunks of an upload that failed (sync.py's gc catches the rest)."""
        try:
            self.call(partition, 'delete_chunks', version_id)
        except PartitionError:
            pass

    def delete(self, bucket, key, context=None, check=None, w=None, conditional=False, pw=None):
        """Write a tombstone; NotFound when there is no live version."""
        def must_exist(current):
            if not current:
                raise NotFound('no key %r in bucket %r' % (key, bucket))
            if check:
                check(current)
        return self._write(bucket, key, context, must_exist, w,
                           lambda seen, dot: Version.new(seen, dot, b'', '', deleted=True),
                           conditional=conditional, pw=pw)

    def _write(self, bucket, key, context, check, w, make, coordinators=None, conditional=False, pw=None):
        """Coordinate a write, replicate it, and answer with its receipt.

        An unconditional write is coordinated by the first owner that answers.
        A conditional one (compare-and-swap) only ever by the key's first owner,
        under its lock on the key, after that owner took in what a majority of
        the owners hold: every front end then decides it in the same place, with
        the same versions, whatever it believes of the partitions' health.  When
        the first owner cannot be reached, the write is refused (503)."""
        started = time.monotonic()
        self.check_key(bucket, key)
        props = self.bucket_properties_cached(bucket)
        w, pw = self.quorums(props, w=w, pw=pw)
        if props['conflicts'] == 'lww':
            context = None   # every write supersedes all the coordinator holds
        preference, fallbacks = self.placement(bucket, key)
        self._adopt_previous_owners(bucket, key, preference)   # during a view change
        if conditional:
            coordinators = self._decider(bucket, key, preference, coordinators)
        failures = {}
        for coordinator in coordinators or preference:
            def decide(held, coordinator=coordinator):
                if check:
                    check(live(held))
                seen = context if context is not None else context_of(held)
                seen = prune(seen, self.engines, max(8, 2 * len(self.engines)))
                version = make(seen, next_dot(self.engines[coordinator].actor, held, seen))
                kept = [v for v in held if not version.supersedes(v)]
                if len(kept) >= self.config.max_siblings:
                    raise TooManySiblings(
                        'the key has %d siblings, the most allowed; GET it and PUT one value '
                        'with its X-Context to resolve them' % len(kept), limit=self.config.max_siblings)
                return version
            try:
                held, version = self.call(coordinator, 'coordinate', bucket, key, decide)
                break
            except PartitionError as e:
                failures[coordinator] = e.reason
        else:
            if BAD_DATA in failures.values():
                raise BadRequest('bad_data', 'the write holds data too large or malformed for the store '
                                 '(a header, a metadata or context field)')
            if FULL in failures.values():
                raise InsufficientStorage('no replica of the key has room for the write', failed=failures)
            if conditional:
                raise Unavailable('a conditional write is decided by the key\'s first owner, %s, which '
                                  'did not answer; it may have been applied there' % preference[0],
                                  failed=failures)
            raise Unavailable('no replica of the key could take the write', failed=failures)

        spare = iter(fallbacks)
        spare_lock = threading.Lock()
        superseded = [v.version_id for v in held if version.supersedes(v)]
        others = [p for p in preference if p != coordinator]
        refused = {p: failures[p] for p in others if p in failures}

        def replicate(owner, reason=None):
            """Write the owner's replica (unless it refused already, or reason
            says why it failed), or failing that a hint for it on the next
            fallback no other hint of this write took: (where it landed, why
            not on the owner)."""
            reason = reason or refused.get(owner)
            if reason is None:
                try:
                    kept = self.call(owner, 'apply', bucket, key, version, superseded)
                except PartitionError as e:
                    reason = e.reason
                else:
                    if kept or not self._rejected(coordinator, bucket, key, version, owner):
                        return owner, None
                    raise PartitionError(owner, REJECTED, unavailable=False)   # a hint would be too
            while True:
                with spare_lock:
                    fallback = next(spare, None)
                if fallback is None:
                    raise PartitionError(owner, reason)
                try:
                    self.call(fallback, 'store_hint', owner, bucket, key, version)
                except PartitionError:
                    continue
                metrics.hint_stored(owner)
                if not self.health.is_down(owner):
                    # The owner is up (a lock conflict, a full table): no recovery
                    # will start the hand-off, so start it now.
                    self.executor.submit(self.hand_off, owner)
                return fallback, reason

        laggards, unfinished = {}, {}
        # Threads (below) for a large value, whose chunks take a while to
        # copy, and for engines whose send_apply does all the work at once
        # (SQLite): the request would wait for every replica in turn.
        threaded = version.chunk_count or not all(self.engines[p].sends_apart for p in others)
        if threaded:
            landed, rejected = {}, {}
        else:
            # An inline version goes to every replica at once from this thread.
            # Past the w - 1 answers needed, the others get as long again as
            # the write has taken; those still out then are read later.
            applied, failed = self._at_once([p for p in others if p not in refused], 'apply',
                                            bucket, key, version, superseded,
                                            needed=w - 1, laggards=laggards, since=started)
            rejected = {p: REJECTED for p, kept in applied.items()
                        if not kept and self._rejected(coordinator, bucket, key, version, p)}
            landed = {p: (p, None) for p in applied if p not in rejected}
            refused.update(failed)
        # The rest in threads: owners that refused (hints then), or every
        # owner when threaded.  An owner known to have failed gets its hint
        # before the answer, so that the receipt says where it went; threaded
        # copies past W go on in the background.
        rest = [p for p in others if p not in landed and p not in laggards and p not in rejected]
        needed = max(0, w - 1 - len(landed)) if threaded else len(rest)
        more, not_landed = self._fan_out(rest, replicate, launch=len(rest), needed=needed, unfinished=unfinished,
                                         timeout=self.timeout * (1 + version.chunk_count))
        landed.update(more)
        if laggards or unfinished or not_landed:
            # Answered before every replica holds the version (w < N): a
            # pending marker on the coordinator, written before the answer,
            # has the reconciler push it on should this process die.  Without
            # one, the replicas are settled before the answer.
            settle = (coordinator, bucket, key, version, laggards, unfinished, not not_landed, replicate)
            if self._mark_pending(coordinator, bucket, key, version):
                self.executor.submit(self._settle, *settle)
            else:
                self._settle(*settle)
        acknowledged = [coordinator] + sorted(p for p, (where, _) in landed.items() if where == p)
        hints = {p: where for p, (where, _) in landed.items() if where != p}
        down = dict(not_landed, **rejected, **{p: reason for p, (_, reason) in landed.items() if reason})
        down.update((p, reason) for p, reason in failures.items() if p != coordinator)
        if len(acknowledged) + len(hints) < w or len(acknowledged) < pw:
            raise Unavailable('%d replicas acknowledged the write, %d of them owners; it needs %d, %d of '
                              'them owners.  It may have been applied on %s'
                              % (len(acknowledged) + len(hints), len(acknowledged), w, pw,
                                 ', '.join(acknowledged + sorted(hints.values()))),
                              failed=down, acknowledged=acknowledged, hints=hints)
        # The writer has seen its own version, but not siblings it left beside
        # it: no context then, so that its next write cannot supersede them unseen.
        siblings = [v for v in held if not version.supersedes(v)]
        return Receipt(version=version, created=not live(held),
                       context=None if siblings else version.full_clock, siblings=len(siblings) + 1,
                       preference_list=preference, acknowledged=acknowledged,
                       coordinator=coordinator, hints=hints, down=down)

    def _decider(self, bucket, key, preference, coordinators):
        """The partition that decides a conditional write: the key's first owner,
        once it holds every version a majority of the owners (itself included)
        holds.  Unavailable when it, or too many owners, cannot answer."""
        first = preference[0]
        if coordinators and coordinators != [first]:
            raise Unavailable('a conditional write is decided by the key\'s first owner, %s, which '
                              'is not taking writes' % first, failed={first: 'down'})
        laggards = {}
        majority = len(preference) // 2 + 1
        replies, failures = self._at_once(preference, 'read', bucket, key, needed=majority,
                                          laggards=laggards, since=time.monotonic())
        if first in laggards:   # the others were quicker: its answer is the one that counts
            unread = laggards.pop(first)
            try:
                replies[first] = self.call(first, 'finish_read', unread)
            except PartitionError as e:
                self.engines[first].abandon_query(unread)
                failures[first] = e.reason
        for p, unread in laggards.items():
            self.engines[p].abandon_query(unread)
        if first not in replies or len(replies) < majority:
            raise Unavailable('a conditional write needs the key\'s first owner, %s, and %d of its %d '
                              'owners; %s answered' % (first, majority, len(preference),
                                                       ', '.join(sorted(replies)) or 'none'),
                              failed=failures)
        versions = resolve(replies.values())
        for version in versions:
            if reconcile(replies[first], version)[1]:
                try:
                    self.call(first, 'apply', bucket, key, version)
                except PartitionError as e:
                    raise Unavailable('the key\'s first owner, %s, could not take the versions the '
                                      'other owners hold' % first, failed={first: e.reason})
        self._repair(bucket, key, {p: held for p, held in replies.items() if p != first}, versions)
        return [first]

    def _rejected(self, coordinator, bucket, key, version, replica):
        """A replica did not keep a version just written.  True when it refused
        it: it holds a version claiming to have seen this one's dot that the
        coordinator never knew of (the coordinator reused a counter: restored
        or rolled back within the front ends' clock difference).  False when a
        later write that had seen it overtook it: the coordinator no longer
        holds it either."""
        try:
            still_held = any(v.version_id == version.version_id
                             for v in self.call(coordinator, 'read', bucket, key))
        except PartitionError:
            still_held = True   # unknown: not counted as an acknowledgement
        if still_held:
            log.warning('%s refused version %s of %s/%s (dot %s): it holds a version that claims '
                        'to have seen it; %s may have reused a counter', replica, version.version_id,
                        bucket, key, version.dot, coordinator)
        return still_held

    def _mark_pending(self, coordinator, bucket, key, version):
        try:
            self.call(coordinator, 'mark_pending', bucket, key, version.version_id)
            return True
        except PartitionError as e:
            log.warning('no pending marker for %s/%s on %s: %s', bucket, key, coordinator, e.reason)
            return False

    def _settle(self, coordinator, bucket, key, version, laggards, unfinished, landed_so_far, replicate):
        """After a lazy write returned: once every other replica holds the version
        (or a hint for it), drop its pending marker.  laggards: {partition:
        sent}, replicas' answers still to read (one that failed gets a hint:
        replicate(partition, reason)); unfinished: {future: partition}.
        A marker left behind (a crash, a failure) is the reconciler's to push on."""
        settled, laggards = landed_so_far, dict(laggards)
        try:
            while laggards:
                p, unread = laggards.popitem()
                try:
                    self.call(p, 'finish_apply', unread)
                except PartitionError as e:
                    self.engines[p].abandon_query(unread)
                    try:
                        replicate(p, e.reason)
                    except PartitionError:
                        settled = False
        finally:
            for p, unread in laggards.items():   # only if something unexpected was raised
                self.engines[p].abandon_query(unread)
        done, _ = concurrent.futures.wait(unfinished, timeout=self.timeout * (1 + version.chunk_count))
        if not settled or len(done) < len(unfinished) or any(f.exception() for f in done):
            log.info('lazy write of %s/%s left pending', bucket, key)
            return
        self._drop_pending_later(coordinator, bucket, key, version.version_id)

    def _drop_pending_later(self, partition, bucket, key, version_id):
        """Queue a settled write's pending marker: the markers go in one round
        trip per partition every PENDING_DROP_DELAY seconds, not one per write.
        A marker this process dies holding is only pushed on once more."""
        with self._settled_lock:
            queue = self._settled.setdefault(partition, [])
            queue.append((bucket, key, version_id))
            if len(queue) > 1:
                return   # a drop is already due
        timer = threading.Timer(PENDING_DROP_DELAY, self._drop_settled, [partition])
        timer.daemon = True
        timer.start()

    def _drop_settled(self, partition):
        with self._settled_lock:
            markers = self._settled.pop(partition, [])
        if not markers:
            return
        try:
            self.call(partition, 'clear_pending', markers)
        except PartitionError as e:
            log.info('%d pending markers on %s not cleared: %s', len(markers), partition, e.reason)

    # -- hinted handoff --------------------------------------------------------

    def hint_destinations(self, bucket, key, target):
        """Where a hint for target goes: to target while it owns the key, else
        (the ring changed since the hint was written) to the key's owners, so
        that no copy lands on a partition that gc and the owners do not see."""
        owners = self.placement(bucket, key)[0]
        return [target] if target in owners else owners

    def hand_off(self, target, batch=500):
        """Deliver every hint held for target (to hint_destinations); a hint is
        deleted only after its destinations committed its version.  Returns
        (delivered, left)."""
        with self._handoff_lock:
            if target in self._handoffs:
                return 0, 0
            self._handoffs.add(target)
        delivered = left = 0
        try:
            for holder in self.engines:
                if holder == target:
                    continue
                try:
                    while True:
                        hints = self.call(holder, 'hints_for', target, batch)
                        for bucket, key, version, _ in hints:
                            for destination in self.hint_destinations(bucket, key, target):
                                self.call(destination, 'apply', bucket, key, version)
                            self.call(holder, 'delete_hint', target, bucket, key, version.version_id)
                            delivered += 1
                        if len(hints) < batch:
                            break
                except PartitionError as e:
                    left += 1
                    log.info('hand-off to %s from %s stopped: %s', target, holder, e)
        finally:
            with self._handoff_lock:
                self._handoffs.discard(target)
        return delivered, left

    def cluster_status(self):
        """What this front end knows of the partitions: health, and the hints
        each holds for others (counted on the partitions that answer)."""
        held, _ = self._everywhere(lambda p: self.call(p, 'hint_counts'))
        keys = self.keys_per_partition_cached()
        view = self.health.view()
        expired_before = time.time() - self.config.hint_window
        partitions = []
        for p in self.config.partitions:
            seen = view[p.name]
            waiting = [counts[p.name] for counts in held.values() if p.name in counts]
            partitions.append({
                'name': p.name, 'engine': p.engine, 'weight': p.weight,
                'state': seen['state'], 'since': iso_time(seen['since']),
                'last_error': seen['last_error'],
                'hints_waiting': sum(count for count, _ in waiting),
                'hints_expired': sum(count for count, oldest in waiting
                                     if oldest / 1e6 < expired_before),
                'hints_held': sum(c for c, _ in held[p.name].values()) if p.name in held else None,
                'keys': keys.get(p.name),
            })
        return {'replicas': self.n, 'r': self.config.r, 'w': self.config.w,
                'partitions': partitions, 'keys_counted': iso_time(self._key_counts[0]),
                'rebalance': self.rebalance_status(),
                'gossip': {'peers': ['%s:%d' % peer for peer in self.config.peers],
                           'interval': self.config.gossip_interval, 'rounds': self.gossip.rounds}}

    def list_keys(self, bucket, prefix='', limit=1000, after=None):
        """A page of live keys in byte order, merged across every partition.

        Each partition returns its version rows in key order; a key is listed
        when the versions of it that no other version supersedes include a live
        one, so a stale replica cannot bring back a deleted key.  Rows are read
        in batches: keys below the lowest last key of a full batch are complete.
        """
        self.check_bucket(bucket)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise BadRequest('bad_parameter', 'limit must be 1 to %d' % MAX_LIST_LIMIT, parameter='limit')
        names = list(self.engines)
        batch = max(limit + 1, 64)
        keys = []
        while len(keys) <= limit:
            pages, failures = self._at_once(names, 'scan', bucket, prefix, after, batch)
            self._require_coverage(failures)
            horizon = min((rows[-1][0] for rows in pages.values() if len(rows) == batch), default=None)
            rows_of = {}
            for rows in pages.values():
                for row in rows:
                    if horizon is None or row[0] < horizon:
                        rows_of.setdefault(row[0], []).append(row)
            for key in sorted(rows_of):
                if key_is_live(rows_of[key]):
                    keys.append(key)
            if horizon is None:
                break
            # The horizon key may have more rows beyond the batch: read it again.
            after = max(rows_of, default=horizon)
        more = len(keys) > limit
        keys = keys[:limit]
        return KeyPage(keys=keys, next_after=keys[-1] if more else None)

    def _require_coverage(self, failures):
        """Every key has a replica on the partitions that answered only while
        fewer than N partitions failed."""
        if len(failures) >= self.n:
            raise Unavailable('%d partitions did not answer, so some keys have no replica that did'
                              % len(failures), failed=failures)

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

    # -- buckets ------------------------------------------------------------

    def _everywhere(self, call):
        names = list(self.engines)
        return self._fan_out(names, call, launch=len(names), needed=len(names))

    def bucket_names(self):
        found, failures = self._everywhere(lambda p: self.call(p, 'bucket_names'))
        self._require_coverage(failures)
        return sorted(set().union(*found.values()))

    def _bucket_record(self, bucket):
        """The stored properties of a bucket (None when it has no record)."""
        preference = self.ring.preference_list(bucket, '', self.n)
        r = self.config.r
        records, failures = self._fan_out(
            preference, lambda p: self.call(p, 'read_bucket', bucket), launch=r, needed=r)
        if len(records) < r:
            raise Unavailable('too few replicas of the bucket answered', failed=failures)
        stored = next((props for props in records.values() if props is not None), None)
        self._cache_bucket(bucket, dict(DEFAULT_BUCKET_PROPERTIES, **(stored or {})))
        return stored

    def _cache_bucket(self, bucket, props):
        # Bounded: any name a client sends (a preflight needs no token) is read.
        if len(self._bucket_cache) >= BUCKET_CACHE_ENTRIES:
            self._bucket_cache.clear()
        self._bucket_cache[bucket] = (time.monotonic() + BUCKET_CACHE_SECONDS, props)

    def bucket_properties_cached(self, bucket):
        """A bucket's properties as this front end saw them in the last few seconds."""
        cached = self._bucket_cache.get(bucket)
        if cached is None or cached[0] < time.monotonic():
            try:
                self._bucket_record(bucket)
                cached = self._bucket_cache[bucket]
            except Unavailable:
                # Keep serving with what we saw last, or the defaults: siblings
                # never lose a write, whatever the bucket's setting was.
                return cached[1] if cached else dict(DEFAULT_BUCKET_PROPERTIES)
        return cached[1]

    def bucket_properties(self, bucket):
        """A bucket's properties, or None when it neither was created nor holds keys."""
        self.check_bucket(bucket)
        stored = self._bucket_record(bucket)
        if stored is None and not self.has_keys(bucket):
            return None
        return dict(DEFAULT_BUCKET_PROPERTIES, **(stored or {}))

    def create_bucket(self, bucket, properties=None):
        """Create or update a bucket; True when it is new."""
        self.check_bucket(bucket)
        current = self.bucket_properties(bucket)
        existed = current is not None
        props = dict(current or DEFAULT_BUCKET_PROPERTIES, **(properties or {}))
        preference = self.ring.preference_list(bucket, '', self.n)
        w = self.config.w
        acks, failures = self._fan_out(
            preference, lambda p: self.call(p, 'write_bucket', bucket, props), launch=self.n, needed=w)
        if len(acks) < w:
            raise Unavailable('too few replicas of the bucket acknowledged', failed=failures)
        self._cache_bucket(bucket, props)
        return not existed

    def delete_bucket(self, bucket, force=False):
        """Delete a bucket: refused while it holds keys, unless forced."""
        if self.bucket_properties(bucket) is None:
            raise NotFound('no bucket %r' % bucket)
        if not force and self.has_keys(bucket):
            raise BucketNotEmpty('bucket %r holds keys; delete them first or use ?force=true' % bucket)

        # Every partition must answer first: a forced delete that reached only
        # some would let the others bring the keys back.
        _, failures = self._everywhere(lambda p: self.call(p, 'read_bucket', bucket))
        if failures:
            raise Unavailable('deleting a bucket needs every partition up', failed=failures)

        def drop(p):
            if force:
                self.call(p, 'drop_keys', bucket)
            self.call(p, 'drop_bucket', bucket)
        done, failures = self._everywhere(drop)
        self._bucket_cache.pop(bucket, None)
        if failures:
            raise Unavailable('the bucket could not be removed from every partition', failed=failures)

    # -- view changes and reconciliation (sync.py) ---------------------------------
    # A view is the ring keys are placed by: the partitions with a weight above 0
    # and their weights, vnodes and replicas.  sync.py records each new view as an
    # epoch in the metadata table of every partition ('view': epoch, ring, state;
    # 'view.previous': the ring before it) and marks it complete once every key
    # is on exactly its new owners.  Front ends only read these records: while
    # some ring other than their own may still place keys (a rebalance under way,
    # or the configuration changed before sync.py recorded it), a read that finds
    # nothing on a key's owners also asks the owners that ring gives the key, and
    # a write first copies to the owners what those hold.
    VIEW_CACHE_SECONDS = 5.0
    VIEW_NAMES = ('view', 'view.previous', 'view.progress', 'view.history')
    VIEW_HISTORY = 50   # epochs whose rings are remembered (by digest), to refuse going back

    @staticmethod
    def ring_digest(ring):
        return hashlib.sha1(json.dumps(ring, sort_keys=True).encode()).hexdigest()[:12]

    def ring_description(self):
        """The configured view, as recorded: {partitions: {name: weight}, vnodes, replicas}."""
        return {'partitions': {p.name: p.weight for p in self.config.partitions if p.weight > 0},
                'vnodes': self.config.vnodes, 'replicas': self.n}

    def read_views(self):
        """{partition: the view it records, or None} over the partitions that answer."""
        found, _ = self._everywhere(lambda p: self.call(p, 'get_metadata', self.VIEW_NAMES))
        views = {}
        for name, values in found.items():
            view = json.loads(values['view']) if 'view' in values else None
            if view is not None:
                view['previous'] = json.loads(values.get('view.previous') or 'null')
                view['progress'] = json.loads(values.get('view.progress') or 'null')
                view['history'] = json.loads(values.get('view.history') or '[]')
            views[name] = view
        return views

    @staticmethod
    def newest_view(views):
        """The view with the highest epoch among read_views() (a completed copy
        of an epoch before one still rebalancing), or None."""
        return max((v for v in views.values() if v), default=None,
                   key=lambda v: (v['epoch'], v['state'] == 'complete'))

    def _previous_rings(self):
        """[(Ring, replicas)] other than the configured one that may still place
        keys.  Read at first use, then again in the background when older than
        VIEW_CACHE_SECONDS, so that requests do not wait on it."""
        expires, rings = self._view_cache
        if time.monotonic() < expires:
            return rings
        if expires == 0.0:
            return self._load_previous_rings()
        if not self._view_lock.locked():
            try:
                self.executor.submit(self._load_previous_rings)
            except RuntimeError:  # shutting down
                pass
        return rings

    def _load_previous_rings(self):
        with self._view_lock:
            expires, rings = self._view_cache
            if time.monotonic() < expires:
                return rings
            views = self.read_views()
            if views:
                newest, mine, rings = self.newest_view(views), self.ring_description(), []
                if newest:
                    others = [newest['ring']] + ([newest['previous']] if newest['state'] != 'complete' else [])
                    rings = [(Ring(r['partitions'], r['vnodes']), r['replicas'])
                             for r in others if r and r != mine]
            self._view_cache = (time.monotonic() + self.VIEW_CACHE_SECONDS, rings)
            return rings

    def previous_owners(self, bucket, key, preference):
        """Partitions a previous view places the key on, beyond its preference list."""
        owners = []
        for ring, n in self._previous_rings():
            for name in ring.preference_list(bucket, key, n):
                if name not in preference and name not in owners and name in self.engines:
                    owners.append(name)
        return owners

    def _read_owners(self, owners, bucket, key, needed=None):
        needed = len(owners) if needed is None else needed
        found, _ = self._fan_out(owners, lambda p: self.call(p, 'read', bucket, key),
                                 launch=needed, needed=needed)
        return resolve(found.values())

    def _read_previous_owners(self, bucket, key, preference, replies):
        """get() found nothing on the key's owners: what its previous owners hold.
        If they hold nothing either, one owner is asked again, since sync.py
        removes a key from a previous owner only after every owner holds it."""
        owners = self.previous_owners(bucket, key, preference)
        if not owners:
            return []
        versions = self._read_owners(owners, bucket, key)
        if not versions:
            versions = self._read_owners([p for p in preference if p in replies], bucket, key, needed=1)
        return versions

    def _adopt_previous_owners(self, bucket, key, preference):
        """Before a write: copy what the key's previous owners hold to its owners,
        so that the coordinator decides with it."""
        owners = self.previous_owners(bucket, key, preference)
        versions = self._read_owners(owners, bucket, key) if owners else []
        if versions:
            self._fan_out(preference, lambda p: [self.call(p, 'apply', bucket, key, v) for v in versions],
                          launch=len(preference), needed=len(preference))

    def record_view(self, force=False, dry_run=False):
        """Record the configured view in every partition that answers, as a new
        epoch when it differs from the newest recorded one.  Refuses (ViewConflict)
        a view that looks like a stale configuration unless forced.
        Returns (the newest view, whether a new epoch was recorded, partitions
        that did not answer); with dry_run, only what it would record."""
        views = self.read_views()
        newest, mine = self.newest_view(views), self.ring_description()
        unreachable = sorted(set(self.engines) - set(views))
        changed = newest is None or newest['ring'] != mine
        if changed and newest is not None and not force:
            earlier = [epoch for epoch, digest in newest['history'] if digest == self.ring_digest(mine)]
            if earlier or newest['previous'] == mine:
                raise ViewConflict(
                    'this configuration is the ring of epoch %d, which epoch %d replaced: is the '
                    'configuration here out of date?  (--force-view records it as a new epoch)'
                    % (earlier[-1] if earlier else newest['epoch'] - 1, newest['epoch']))
            if newest['state'] != 'complete':
                raise ViewConflict(
                    'the rebalance to epoch %d is not complete; finish it with the configuration it '
                    'was recorded with before changing the partitions again (or --force-view)'
                    % newest['epoch'])
            dropped = sorted(set(newest['ring']['partitions']) - set(self.engines))
            if dropped:
                raise ViewConflict(
                    '%s of epoch %d is not configured, so the keys on it cannot be moved: give it '
                    'weight = 0 until sync.py has emptied it, then remove it (or --force-view if it '
                    'is lost)' % (' and '.join(dropped), newest['epoch']))
        if changed:
            epoch = newest['epoch'] + 1 if newest else 1
            history = (newest['history'] if newest else []) + [[epoch, self.ring_digest(mine)]]
            newest = {'epoch': epoch, 'ring': mine,
                      'state': 'rebalancing' if newest else 'complete',
                      'recorded': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                      'previous': newest['ring'] if newest else None, 'progress': None,
                      'history': history[-self.VIEW_HISTORY:]}
        stale = [p for p, view in views.items() if changed or view is None or
                 (view['epoch'], view['state']) != (newest['epoch'], newest['state'])]
        if dry_run:
            return newest, changed, unreachable
        self._write_view(newest, stale)
        self._view_cache = (0.0, [])
        return newest, changed, unreachable

    def _write_view(self, view, partitions):
        record = {k: view[k] for k in ('epoch', 'ring', 'state', 'recorded')}
        values = {'view': json.dumps(record, sort_keys=True), 'view.previous': json.dumps(view['previous']),
                  'view.history': json.dumps(view['history'])}
        if view.get('progress') is not None or view['state'] == 'complete':
            values['view.progress'] = json.dumps(view.get('progress'))
        done, failures = self._fan_out(partitions, lambda p: self.call(p, 'set_metadata', values),
                                       launch=len(partitions), needed=len(partitions))
        return failures

    def complete_view(self, view):
        """Mark the view's rebalance complete on every partition: True when all took it."""
        view = dict(view, state='complete', progress=None)
        failures = self._write_view(view, list(self.engines))
        self._view_cache = (0.0, [])
        return not failures

    def record_progress(self, progress):
        """Store a rebalance's progress where rebalance_status() finds it."""
        values = {'view.progress': json.dumps(progress, sort_keys=True)}
        self._everywhere(lambda p: self.call(p, 'set_metadata', values))

    def rebalance_status(self):
        """The recorded view and how far its rebalance is, for GET /cluster."""
        views = self.read_views()
        newest = self.newest_view(views)
        status = {'epoch': newest['epoch'] if newest else None,
                  'state': newest['state'] if newest else 'unrecorded',
                  'recorded': newest['recorded'] if newest else None,
                  'configuration_matches': bool(newest) and newest['ring'] == self.ring_description(),
                  'partitions': {name: (views[name] or {}).get('epoch') if name in views else 'unreachable'
                                 for name in sorted(self.engines)},
                  'progress': None}
        progress = [v['progress'] for v in views.values()
                    if v and v['progress'] and newest and v['progress'].get('epoch') == newest['epoch']]
        if progress and status['state'] != 'complete':
            status['progress'] = max(progress, key=lambda p: p.get('updated', ''))
        return status

    def readiness(self):
        """(ready, {partition: 'up' or 'down'}): ready while enough partitions
        answer that every key can meet the configured quorums: R and W
        partitions in all, and no more down than leaves PR and PW owners."""
        found, failures = self._everywhere(lambda p: self.call(p, 'get_metadata', ('view',)))
        c = self.config
        ready = len(found) >= max(c.r, c.w) and len(failures) <= self.n - max(c.pr, c.pw)
        # Only the states: /ready answers anyone; /cluster (admin) says why.
        return ready, {p: 'up' if p in found else 'down' for p in self.engines}

    def keys_per_partition_cached(self):
        """keys_per_partition(), counted at most once a minute by this front end."""
        if time.time() - self._key_counts[0] > KEY_COUNT_SECONDS:
            self._key_counts = (time.time(), self.keys_per_partition())
        return self._key_counts[1]

    def keys_per_partition(self):
        """{partition: distinct keys it holds (tombstoned ones included), None when
        it did not answer}.  Counting costs an index scan on every partition."""
        found, _ = self._everywhere(lambda p: self.call(p, 'count_keys'))
        return {name: found.get(name) for name in sorted(self.engines)}


class ViewConflict(Exception):
    """sync.py will not record the configured ring as a new view (see record_view)."""
