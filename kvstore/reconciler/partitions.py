"""The partitions as every reconciler job uses them: calls on one or several at
once, reads counted by the run's Meter, and versions copied between them (in a
dry run, counted and not written)."""
import collections

from kvstore.coordinator.versions import carried, reconcile
from kvstore.engines import PartitionError

KEYS_PER_COPY = 32          # keys whose values are read and applied at once


def by_owner(owners):
    """{owner: {keys}} from {key: [owners]}."""
    wanted = collections.defaultdict(set)
    for key, names in owners.items():
        for owner in names:
            wanted[owner].add(key)
    return wanted


def lacking(held_by_partition, key, versions):
    """[(partition, version)]: who lacks which of versions for key."""
    return [(name, v) for name, held in sorted(held_by_partition.items()) for v in versions
            if reconcile(held.get(key, []), v)[1]]


class Partitions:
    """One run's access to a Datastore's partitions (through its failure detector)."""

    def __init__(self, store, meter, progress, dry_run=False):
        self.store = store
        self.config = store.config
        self.meter = meter
        self.progress = progress
        self.dry_run = dry_run
        self.batch = store.config.sync_batch_size
        # Set by runner.run before the jobs (changes.py): each partition's last
        # change number, its checkpoint, and whether this run is a full pass.
        self.tops, self.checkpoints, self.full_pass = {}, {}, True

    @property
    def names(self):
        return sorted(self.store.engines)

    def each(self, names, method, *args):
        """engine.method(*args) on several partitions at once: ({name: result}, {name: reason})."""
        names = list(names)
        if not names:
            return {}, {}
        return self.store._fan_out(names, lambda p: self.store.call(p, method, *args),
                                   launch=len(names), needed=len(names))

    def call(self, name, method, *args):
        return self.store.call(name, method, *args)

    def change(self, name, method, *args):
        """A call that writes: left out in a dry run."""
        if not self.dry_run:
            self.call(name, method, *args)

    def owners(self, bucket, key):
        return self.store.placement(bucket, key)[0]

    def read_held(self, keys_by_partition, waiting):
        """{partition: {(bucket, key): [Version without value]}} for the partitions
        that answered; those that did not are counted in waiting."""
        held = {}
        for name, keys in keys_by_partition.items():
            try:
                held[name] = self.call(name, 'read_many', sorted(keys), False)
                self.meter.read(sum(len(v) for v in held[name].values()))
            except PartitionError:
                waiting[name] += len(keys)
        return held

    def plan_copies(self, source, rows, waiting):
        """Versions source holds ({key: [Version]}) that the keys' other owners
        lack: ([(source, target, bucket, key, version_id)], {keys not planned,
        since an owner did not answer})."""
        owners = {key: [o for o in self.owners(*key) if o != source] for key in rows}
        held = self.read_held(by_owner(owners), waiting)
        plan, blocked = [], set()
        for key, versions in rows.items():
            if any(o not in held for o in owners[key]):
                blocked.add(key)
                continue
            plan += [(source, owner, key[0], key[1], v.version_id)
                     for owner, v in lacking({o: held[o] for o in owners[key]}, key, versions)]
        return plan, blocked

    def move(self, name, rows, counts, waiting):
        """Move rows ({key: [Version]}) that `name` holds without owning the
        keys to their owners; delete each from `name` only once every owner
        holds it.  False when `name` stopped answering."""
        plan, blocked = self.plan_copies(name, rows, waiting)
        copied, failed = self.transfer(plan, waiting)
        counts['versions_copied'] += copied
        for key, versions in sorted(rows.items()):
            if key in blocked or key in failed:
                continue
            try:
                self.change(name, 'delete_versions', key[0], key[1], [v.version_id for v in versions])
            except PartitionError:
                waiting[name] += 1
                return False
            self.meter.wrote(len(versions))
            counts['keys_moved'] += 1
        return True

    def transfer(self, plan, waiting):
        """Copy versions: plan [(source, target, bucket, key, version_id)].  Values
        are read from the source a few keys at a time and applied on the target
        in one transaction per batch.  Returns (versions stored, {(bucket, key)
        some copy of which failed})."""
        stored, failed = 0, set()
        by_source = collections.defaultdict(list)
        for item in plan:
            by_source[item[0]].append(item)
        for source, items in sorted(by_source.items()):
            keys = sorted({(b, k) for _, _, b, k, _ in items})
            for start in range(0, len(keys), KEYS_PER_COPY):
                chunk = set(keys[start:start + KEYS_PER_COPY])
                todo = [item for item in items if (item[2], item[3]) in chunk]
                done, lost = self._copy(source, chunk, todo, waiting)
                stored += done
                failed |= lost
        return stored, failed

    def _copy(self, source, chunk, todo, waiting):
        """transfer() for the keys of one chunk, all read from source."""
        if self.dry_run:
            self.meter.wrote(len(todo))
            return len(todo), set()
        try:
            full = self.call(source, 'read_many', sorted(chunk))
        except PartitionError:
            waiting[source] += len(chunk)
            return 0, chunk
        self.meter.read(sum(len(v) for v in full.values()))
        versions = {(b, k, v.version_id): v for (b, k), held in full.items() for v in held}
        by_target = collections.defaultdict(list)
        for _, target, bucket, key, version_id in todo:
            version = versions.get((bucket, key, version_id))
            if version is not None:   # else superseded at the source meanwhile
                by_target[target].append((bucket, key, carried(version)))
        stored, failed = 0, set()
        for target, copies in sorted(by_target.items()):
            try:
                stored += sum(self.call(target, 'apply_many', copies))
                self.meter.wrote(len(copies))
            except PartitionError:
                waiting[target] += len({(b, k) for b, k, _ in copies})
                failed |= {(b, k) for b, k, _ in copies}
        return stored, failed
