"""Batches: many keys of one bucket read, written and deleted in one request.

A batch is not atomic across keys: each operation succeeds or fails on its
own, and is exactly as safe as the same single request (its quorums, its
siblings, its hints; a conditional one decided by the key's first owner).
What a batch saves is round trips and commits, grouped by partition:

- reads: each partition gets one query for every key it is among the first
  max(r, pr) owners of, all partitions at once (Reader.get_many);
- unconditional writes: the keys a partition coordinates go in one
  transaction there (engine coordinate_many: one locking read, each key
  decided as Writer decides it, one commit), then each other owner takes
  every version it is owed in one transaction (engine apply_many), all
  owners at once, and the answer waits for them all (so no pending marker).
  An owner that fails gets hints for its versions, as Replication does;
- a delete without a context or condition first reads its key (with the
  batch's other such deletes, as the reads are), as Writer.delete does, and
  its tombstone covers what the read found;
- a write whose grouped path cannot decide it (a conditional write, a
  delete its coordinator found nothing to delete for, a coordinator that
  failed) takes the single request's path (Writer.write, Writer.delete),
  whose version covers the grouped attempt when its coordinator failed to
  answer (it may still commit it), as Writer._coordinate's next attempt does.
"""
import dataclasses

from kvstore.coordinator.expiry import Lifetime
from kvstore.coordinator.replication import Replication
from kvstore.coordinator.validation import write_quorums
from kvstore.coordinator.versions import Version, now_micros
from kvstore.coordinator.writes import Writer, make_tombstone, must_exist
from kvstore.engines import PartitionError
from kvstore.errors import NotFound, StoreError, Unavailable

GET, PUT, DELETE = 'get', 'put', 'delete'


@dataclasses.dataclass
class Operation:
    """One operation of a batch, as the controller read it."""
    op: str                    # GET, PUT or DELETE
    key: str
    value: bytes = b''         # PUT: an inline value (at most one chunk)
    content_type: str = ''
    context: dict = None       # the causal context sent back, decoded
    check: object = None       # check(live versions), raising to refuse: the client's preconditions
    metadata: dict = None
    lifetime: Lifetime = None  # PUT: the expiry asked for (None: the bucket's ttl)

    @property
    def conditional(self):
        return self.check is not None

    @property
    def blind(self):
        """A delete that names neither a context nor a condition (Writer.delete)."""
        return self.op == DELETE and self.context is None and self.check is None


@dataclasses.dataclass
class Grouped:
    """A write on its way through the grouped path."""
    op: Operation
    preference: list
    fallbacks: list
    coordinator: str = None
    also_seen: list = dataclasses.field(default_factory=list)   # a blind delete's read
    attempts: list = dataclasses.field(default_factory=list)    # the versions its decisions made
    held: list = None          # what the coordinator held before it
    version: Version = None


class Batches:
    def __init__(self, config, replicas, placement, buckets, reader, writer):
        self.config = config
        self.replicas = replicas
        self.placement = placement
        self.buckets = buckets
        self.reader = reader
        self.writer = writer

    def run(self, bucket, operations, r=None, pr=None, w=None, pw=None):
        """Each operation's outcome, in order: a Read (GET), a Receipt (PUT,
        DELETE) or the StoreError that refused it.  Keys are distinct."""
        reads = [o.key for o in operations if o.op == GET]
        outcomes = self.reader.get_many(bucket, reads, r, pr) if reads else {}
        writes = [o for o in operations if o.op != GET]
        if writes:
            outcomes.update(self.write_many(bucket, writes, w, pw))
        return [outcomes[o.key] for o in operations]

    def write_many(self, bucket, operations, w=None, pw=None):
        """{key: Receipt or StoreError} of PUT and DELETE operations."""
        props = self.buckets.properties_cached(bucket)
        outcomes, alone, groups = {}, [], {}
        blind = [op.key for op in operations if op.blind]
        read = self.reader.get_many(bucket, blind) if blind else {}
        for op in operations:
            if op.conditional:
                alone.append((op, ()))
                continue
            if isinstance(read.get(op.key), StoreError):   # as a single delete's read would fail
                outcomes[op.key] = read[op.key]
                continue
            preference, fallbacks = self.placement.of(bucket, op.key)
            self.placement.adopt_previous_owners(bucket, op.key, preference)   # during a view change
            # The first owner not known to be down coordinates, as it would a single write.
            coordinator = next((p for p in preference if not self.replicas.health.is_down(p)), preference[0])
            groups.setdefault(coordinator, []).append(Grouped(
                op, preference, fallbacks, coordinator, also_seen=read[op.key].versions if op.key in read else []))
        stored = []
        for coordinator, group in groups.items():
            stored += self._coordinate(bucket, coordinator, group, props, outcomes, alone)
        if stored:
            self._replicate(bucket, stored, *write_quorums(self.config, props, w, pw), outcomes)
        for op, attempts in alone:
            outcomes[op.key] = self._alone(bucket, op, w, pw, attempts)
        return outcomes

    def _coordinate(self, bucket, coordinator, group, props, outcomes, alone):
        """Coordinate a group's writes on their coordinator in one transaction:
        the Grouped it stored.  Outcomes get the writes it refused; alone
        those the single path must decide."""
        refused = {}

        def decision(g):
            op = g.op
            context = None if props['conflicts'] == 'lww' else op.context
            if op.op == DELETE:
                check, make = must_exist(bucket, op.key, None, g.also_seen), make_tombstone
            else:
                check, make = None, self._maker(bucket, op, props)
            decide = self.writer.decision(coordinator, context, check, make, g.also_seen, g.attempts)

            def decide_or_refuse(held):
                try:
                    return decide(held)
                except StoreError as e:
                    refused[op.key] = e
                    return None
            return decide_or_refuse
        try:
            decided = self.replicas.call(coordinator, 'coordinate_many', bucket, [(g.op.key, decision(g)) for g in group])
        except PartitionError as e:
            # Each tries the next owners, as a single write does; an attempt
            # whose coordinator failed to answer may still commit: covered.
            alone.extend((g.op, g.attempts if e.unavailable else ()) for g in group)
            return []
        stored = []
        for g, (held, version) in zip(group, decided):
            if version is not None:
                g.held, g.version = held, version
                stored.append(g)
            elif isinstance(refused[g.op.key], NotFound):
                alone.append((g.op, ()))   # its coordinator may have missed the key's last write (Writer.delete)
            else:
                outcomes[g.op.key] = refused[g.op.key]
        return stored

    @staticmethod
    def _maker(bucket, op, props):
        """make(seen, dot) of a put's version, its expiry as Writer.put sets it."""
        expires = (op.lifetime or Lifetime()).expires(props.get('ttl'), now_micros())
        return lambda seen, dot: Version.new(seen, dot, op.value, op.content_type, metadata=op.metadata,
                                             expires=expires)

    def _replicate(self, bucket, stored, w, pw, outcomes):
        """Send the stored versions to their other owners, each owner's in one
        transaction, all at once; then each write's receipt (hints for the
        owners that failed)."""
        replications, sends = [], {}
        for g in stored:
            replication = Replication(self.replicas, self.writer.handoff, self.writer.settling, bucket, g.op.key,
                                      g.coordinator, g.version, g.held, g.preference, g.fallbacks, {})
            for p in replication.others:
                sends.setdefault(p, []).append((g.op.key, g.version, replication.superseded))
            replications.append(replication)
        applied, failed = self.replicas.at_once(list(sends), 'apply_many',
                                                each={p: (bucket, items) for p, items in sends.items()})
        kept = {(p, item[0]): applied[p][i] for p, items in sends.items() if p in applied
                for i, item in enumerate(items)}
        for g, replication in zip(stored, replications):
            key = g.op.key
            outcome = replication.finish_batch(
                {p: kept[p, key] for p in replication.others if (p, key) in kept},
                {p: failed[p] for p in replication.others if p in failed})
            try:
                outcomes[key] = Writer.receipt(g.version, g.held, g.preference, g.coordinator, outcome, w, pw)
            except Unavailable as e:
                outcomes[key] = e

    def _alone(self, bucket, op, w, pw, attempts=()):
        """A write by the single request's path (its version covering
        attempts): its Receipt, or the StoreError."""
        try:
            if op.op == DELETE:
                return self.writer.delete(bucket, op.key, context=op.context, check=op.check, w=w, pw=pw,
                                          conditional=op.conditional, also_seen=attempts)
            props = self.buckets.properties_cached(bucket)
            return self.writer.write(bucket, op.key, op.context, op.check, w, self._maker(bucket, op, props),
                                     conditional=op.conditional, pw=pw, also_seen=attempts)
        except StoreError as e:
            return e
