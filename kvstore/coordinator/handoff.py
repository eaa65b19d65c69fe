"""Hinted handoff: versions held by a fallback for an owner that could not take them.

A write that cannot reach an owner stores a hint for it on the next healthy
partition beyond the preference list (sloppy quorum).  When the owner answers
again, the hints held for it are delivered and then deleted.
"""
import logging
import threading

from kvstore import metrics
from kvstore.coordinator.replication import refused
from kvstore.coordinator.versions import actor_partition, carried
from kvstore.engines import PartitionError

log = logging.getLogger('kvstore.datastore')


class HintedHandoff:
    def __init__(self, replicas, placement):
        self.replicas = replicas
        self.placement = placement
        self._running = set()   # targets a hand-off is under way for
        self._running_lock = threading.Lock()

    def store_hint(self, holder, owner, bucket, key, version):
        """Have holder keep version for owner (raises PartitionError)."""
        self.replicas.call(holder, 'store_hint', owner, bucket, key, version)
        metrics.hint_stored(owner)

    def start(self, target):
        """hand_off(target) in the background."""
        try:
            self.replicas.executor.submit(self.hand_off, target)
        except RuntimeError:  # shutting down
            pass

    def hint_destinations(self, bucket, key, target):
        """Where a hint for target goes: to target while it owns the key, else
        (the ring changed since the hint was written) to the key's owners, so
        that no copy lands on a partition that gc and the owners do not see."""
        owners = self.placement.of(bucket, key)[0]
        return [target] if target in owners else owners

    def hand_off(self, target, batch=500):
        """Deliver every hint held for target (to hint_destinations); a hint is
        deleted only after its destinations committed its version.  Returns
        (delivered, left)."""
        with self._running_lock:
            if target in self._running:
                return 0, 0
            self._running.add(target)
        delivered = left = 0
        try:
            for holder in self.replicas.engines:
                if holder == target:
                    continue
                try:
                    for _ in self._deliver(holder, target, batch):
                        delivered += 1
                except PartitionError as e:
                    left += 1
                    log.info('hand-off to %s from %s stopped: %s', target, holder, e)
        finally:
            with self._running_lock:
                self._running.discard(target)
        return delivered, left

    def _deliver(self, holder, target, batch):
        """Deliver the hints holder keeps for target, batch by batch, yielding
        after each one delivered.  A hint a destination refuses (refused():
        it holds a version claiming to have seen this one, which its
        coordinator still holds) is kept, with a warning: the write is not lost."""
        call = self.replicas.call
        while True:
            hints = call(holder, 'hints_for', target, batch)
            kept = 0
            for bucket, key, version, _ in hints:
                if self.refused_anywhere(bucket, key, version, self.hint_destinations(bucket, key, target)):
                    kept += 1
                    continue
                call(holder, 'delete_hint', target, bucket, key, version.version_id)
                yield
            if len(hints) < batch or kept == len(hints):
                return

    def refused_anywhere(self, bucket, key, version, destinations):
        """Apply a hinted version on each destination (an expired value as its
        tombstone: versions.carried): True if one refused it."""
        coordinator = actor_partition(version.dot[0])
        version = carried(version)
        return any([not self.replicas.call(name, 'apply', bucket, key, version) and
                    coordinator in self.replicas.engines and
                    refused(self.replicas, name, coordinator, bucket, key, version) for name in destinations])
