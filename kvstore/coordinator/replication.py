"""Replication of one version from its coordinator to the key's other owners.

The version goes to the other owners in parallel; an owner that is down or
fails gets a hint instead, stored on the next healthy partition beyond the
preference list (sloppy quorum).  A write is answered once W replicas (the
coordinator included, hints counted) hold it; the rest is settled after the
answer (settling.py).
"""
import logging
import threading

from kvstore.engines import PartitionError

log = logging.getLogger('kvstore.datastore')
REJECTED = 'refused: it holds a version that claims to have seen this one'   # see Replication.rejected


class Replication:
    def __init__(self, replicas, handoff, settling, bucket, key, coordinator, version, held, preference,
                 fallbacks, failures):
        """held: the versions the coordinator held before the write; failures:
        {partition: reason} of those that failed to coordinate it."""
        self.replicas, self.handoff, self.settling = replicas, handoff, settling
        self.bucket, self.key, self.version = bucket, key, version
        self.coordinator = coordinator
        self.superseded = [v.version_id for v in held if version.supersedes(v)]
        self.others = [p for p in preference if p != coordinator]
        self.failures = failures
        self.refused = {p: failures[p] for p in self.others if p in failures}
        self._spare, self._spare_lock = iter(fallbacks), threading.Lock()

    def run(self, w, started):
        """Send the version to the other owners until w replicas (the
        coordinator included) hold it, or every owner was tried; the rest
        settles later.  started: when the write began (a monotonic time).
        Returns (acknowledged: owners holding it, {owner: the partition holding
        its hint}, {owner: why it does not hold it})."""
        laggards = {}
        # Threads (below) for a large value, whose chunks take a while to
        # copy, and for engines whose send_apply does all the work at once
        # (SQLite): the request would wait for every replica in turn.
        engines = self.replicas.engines
        threaded = self.version.chunk_count or not all(engines[p].sends_apart for p in self.others)
        landed, rejected = ({}, {}) if threaded else self._send_at_once(w, started, laggards)
        return self._finish(w, landed, rejected, laggards, threaded)

    def finish_batch(self, applied, failed):
        """run() for a version that a batch sent to the other owners with
        others of the same partitions (coordinator/batches.py), once all
        answered: applied {owner: kept}, failed {owner: why}.  Each owner that
        failed gets its hint before the answer.  Returns as run()."""
        landed, rejected = self._landed(applied, failed)
        return self._finish(0, landed, rejected, {}, False)

    def _finish(self, w, landed, rejected, laggards, threaded):
        """The rest in threads: owners that refused (hints then), or every
        owner when threaded.  An owner known to have failed gets its hint
        before the answer, so that the receipt says where it went; threaded
        copies past W go on in the background."""
        unfinished = {}
        rest = [p for p in self.others if p not in landed and p not in laggards and p not in rejected]
        needed = max(0, w - 1 - len(landed)) if threaded else len(rest)
        more, not_landed = self.replicas.fan_out(rest, self.replicate, launch=len(rest), needed=needed,
                                                 unfinished=unfinished,
                                                 timeout=self.replicas.timeout * (1 + self.version.chunk_count))
        landed.update(more)
        if laggards or unfinished or not_landed:
            self.settling.settle(self.coordinator, self.bucket, self.key, self.version, laggards, unfinished,
                                 not not_landed, self.replicate)
        return self._outcome(landed, rejected, not_landed)

    def _send_at_once(self, w, started, laggards):
        """An inline version goes to every replica at once from this thread.
        Past the w - 1 answers needed, the others get as long again as the
        write has taken; those still out then go into laggards, read later.
        Returns ({owner: (owner, None)} that hold it, {owner: REJECTED})."""
        applied, failed = self.replicas.at_once([p for p in self.others if p not in self.refused], 'apply',
                                                self.bucket, self.key, self.version, self.superseded,
                                                needed=w - 1, laggards=laggards, since=started)
        return self._landed(applied, failed)

    def _landed(self, applied, failed):
        """({owner: (owner, None)} that hold the version, {owner: REJECTED})
        from the owners' answers: applied {owner: kept}, failed {owner: why}."""
        rejected = {p: REJECTED for p, kept in applied.items() if not kept and self.rejected(p)}
        self.refused.update(failed)
        return {p: (p, None) for p in applied if p not in rejected}, rejected

    def _outcome(self, landed, rejected, not_landed):
        acknowledged = [self.coordinator] + sorted(p for p, (where, _) in landed.items() if where == p)
        hints = {p: where for p, (where, _) in landed.items() if where != p}
        down = dict(not_landed, **rejected, **{p: reason for p, (_, reason) in landed.items() if reason})
        down.update((p, reason) for p, reason in self.failures.items() if p != self.coordinator)
        return acknowledged, hints, down

    def replicate(self, owner, reason=None):
        """Write the owner's replica (unless it refused already, or reason
        says why it failed), or failing that a hint for it on the next
        fallback no other hint of this write took: (where it landed, why not
        on the owner)."""
        reason = reason or self.refused.get(owner)
        if reason is None:
            try:
                kept = self.replicas.call(owner, 'apply', self.bucket, self.key, self.version, self.superseded)
            except PartitionError as e:
                reason = e.reason
            else:
                if kept or not self.rejected(owner):
                    return owner, None
                raise PartitionError(owner, REJECTED, unavailable=False)   # a hint would be too
        return self._hint(owner, reason), reason

    def _hint(self, owner, reason):
        """Store a hint for owner on the next fallback that takes it: which one."""
        while True:
            with self._spare_lock:
                fallback = next(self._spare, None)
            if fallback is None:
                raise PartitionError(owner, reason)
            try:
                self.handoff.store_hint(fallback, owner, self.bucket, self.key, self.version)
            except PartitionError:
                continue
            if not self.replicas.health.is_down(owner):
                # The owner is up (a lock conflict, a full table): no recovery
                # will start the hand-off, so start it now.
                self.handoff.start(owner)
            return fallback

    def rejected(self, replica):
        """A replica did not keep the version just written.  True when it
        refused it: it holds a version claiming to have seen this one's dot
        that the coordinator never knew of (the coordinator reused a counter:
        restored or rolled back within the front ends' clock difference).
        False when a later write that had seen it overtook it: the coordinator
        no longer holds it either."""
        return refused(self.replicas, replica, self.coordinator, self.bucket, self.key, self.version)


def refused(replicas, replica, coordinator, bucket, key, version):
    """replica did not keep version: True (and a warning logged) when it
    refused it, i.e. its coordinator still holds it, so no later write that
    had seen it overtook it (see Replication.rejected)."""
    try:
        still_held = any(v.version_id == version.version_id for v in replicas.call(coordinator, 'read', bucket, key))
    except PartitionError:
        still_held = True   # unknown: not counted as an acknowledgement
    if still_held:
        log.warning('%s refused version %s of %s/%s (dot %s): it holds a version that claims to have seen '
                    'it; %s may have reused a counter (restored or rolled back without `sync.py '
                    'new-incarnation %s`?)', replica, version.version_id, bucket, key, version.dot,
                    coordinator, coordinator)
        try:   # the writes after this one use the incarnation sync.py minted, if it did
            replicas.call(coordinator, 'read_incarnation')
        except PartitionError:
            pass
    return still_held
