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
- a write whose grouped path cannot decide it (a conditional write, a
  delete its coordinator found nothing to delete for, a coordinator that
  failed) takes the single request's path (Writer.put, Writer.delete).
"""
import dataclasses

from kvstore.coordinator.replication import Replication
from kvstore.coordinator.validation import write_quorums
from kvstore.coordinator.versions import Version
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

    @property
    def conditional(self):
        return self.check is not None


@dataclasses.dataclass
class Grouped:
    """A write on its way through the grouped path."""
    op: Operation
    preference: list
    fallbacks: list
    coordinator: str = None
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
        for op in operations:
            if op.conditional:
                alone.append(op)
                continue
            preference, fallbacks = self.placement.of(bucket, op.key)
            self.placement.adopt_previous_owners(bucket, op.key, preference)   # during a view change
            # The first owner not known to be down coordinates, as it would a single write.
            coordinator = next((p for p in preference if not self.replicas.health.is_down(p)), preference[0])
            groups.setdefault(coordinator, []).append(Grouped(op, preference, fallbacks, coordinator))
        stored = []
        for coordinator, group in groups.items():
            stored += self._coordinate(bucket, coordinator, group, props, outcomes, alone)
        if stored:
            self._replicate(bucket, stored, *write_quorums(self.config, props, w, pw), outcomes)
        for op in alone:
            outcomes[op.key] = self._alone(bucket, op, w, pw)
        return outcomes

    def _coordinate(self, bucket, coordinator, group, props, outcomes, alone):
        """Coordinate a group's writes on their coordinator in one transaction:
        the Grouped it stored.  Outcomes get the writes it refused; alone
        those the single path must decide."""
        refused = {}

        def decision(op):
            context = None if props['conflicts'] == 'lww' else op.context
            if op.op == DELETE:
                check, make = must_exist(bucket, op.key), make_tombstone
            else:
                check, make = None, lambda seen, dot: Version.new(seen, dot, op.value, op.content_type,
                                                                  metadata=op.metadata)
            decide = self.writer.decision(coordinator, context, check, make)

            def decide_or_refuse(held):
                try:
                    return decide(held)
                except StoreError as e:
                    refused[op.key] = e
                    return None
            return decide_or_refuse
        try:
            decided = self.replicas.call(coordinator, 'coordinate_many', bucket,
                                         [(g.op.key, decision(g.op)) for g in group])
        except PartitionError:
            alone.extend(g.op for g in group)   # each tries the next owners, as a single write does
            return []
        stored = []
        for g, (held, version) in zip(group, decided):
            if version is not None:
                g.held, g.version = held, version
                stored.append(g)
            elif isinstance(refused[g.op.key], NotFound):
                alone.append(g.op)   # its coordinator may have missed the key's last write (Writer.delete)
            else:
                outcomes[g.op.key] = refused[g.op.key]
        return stored

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

    def _alone(self, bucket, op, w, pw):
        """A write by the single request's path: its Receipt, or the StoreError."""
        try:
            if op.op == DELETE:
                return self.writer.delete(bucket, op.key, context=op.context, check=op.check, w=w, pw=pw,
                                          conditional=op.conditional)
            return self.writer.put(bucket, op.key, op.value, op.content_type, context=op.context, check=op.check,
                                   w=w, pw=pw, metadata=op.metadata, conditional=op.conditional)
        except StoreError as e:
            return e
