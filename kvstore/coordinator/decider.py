"""The compare-and-swap decider: where a conditional write is decided.

A conditional write (compare-and-swap) is only ever coordinated by the key's
first owner, under its lock on the key, after that owner took in what a
majority of the owners hold: every front end then decides it in the same
place, with the same versions, whatever it believes of the partitions'
health.  When the first owner cannot be reached, the write is refused (503).

During a view change front ends may place keys by different rings (one
restarted with the new configuration, one not yet).  So a conditional write
is decided under the lock of the key's first owner in every ring that may
decide it: the configured one, the newest recorded view's and the one before
it (placement.py; the one before stays a decider after the rebalance
completes, until sync.py's next run has compared every arc once more and
retired it: rebalance.py).  The write holds each of their locks at once,
decides once from everything they hold and stores its version on each.  Every front end counts the first owner in the last completed ring
(the anchor: the newest view's once complete, else the one before it), so
two writers always share the anchor's lock.  Their versions are stored
anchor first: its lock is taken last and its transaction commits first, the
others only once it has, so a write that fails halfway is held by the anchor
or by none, never by a decider some other front end leaves out (the others
are taken in name order; two front ends that disagree on the anchor for a
moment, across a rebalance's completion, may wait on each other until a
timeout: a 503, never a fork).  A front end whose configuration lacks the
anchor (not reloaded when the view it was left out of completed) refuses
conditional writes with 503.  An old front end cannot go on unaware: under
its lock each decider checks the view it records (engine check_view); a
newer one (a later epoch, or the same one complete) refuses the write
(NewerView), the front end reads the views again and decides anew; and sync.py's recording of a view waits for the
conditional writes that hold that check's lock, so the rebalance that
follows copies them to the new owners.
"""
import time

from kvstore.coordinator.versions import carried, newest_fence, reconcile, resolve
from kvstore.engines import PartitionError
from kvstore.errors import Unavailable


class ConditionalDecider:
    def __init__(self, replicas, reader, placement):
        self.replicas = replicas
        self.reader = reader   # for read repair of the other owners
        self.placement = placement

    def deciders(self, bucket, key, preference):
        """([the key's first owner in the configured ring, then in every other
        ring that may decide it, the anchor last], the stage of the newest view
        those rings come from: (epoch, complete)): see the module's docstring."""
        rings = self.placement.previous_rings()
        firsts = [ring.preference_list(bucket, key, n)[0] for ring, n in rings.deciding]
        anchor = firsts[0] if firsts else preference[0]
        if anchor not in self.replicas.engines:
            raise Unavailable('conditional writes of this key are decided by %s, which this front end\'s '
                              'configuration lacks (the recorded view has it): reload it with the current '
                              'configuration' % anchor, failed={anchor: 'not configured'})
        others = [name for name in dict.fromkeys([preference[0]] + firsts)
                  if name != anchor and name in self.replicas.engines]
        return others + [anchor], rings.stage

    def coordinate(self, deciders, stage, bucket, key, decide, idempotency=None):
        """engine.coordinate on every decider at once: each locks the key (the
        anchor, deciders[-1], last; the others in name order), decide(what
        they hold, resolved) runs once, in the anchor's transaction, and its
        version is stored on each as their transactions commit, the anchor's
        first and each of the others only once the one it locked after has
        committed.  Each refuses (NewerView) if it records a view newer than
        stage (epoch, complete), under a lock that holds the view back until
        the commit.
        Returns (every version any of them held, the version)."""
        order, collected = sorted(deciders[:-1]) + deciders[-1:], []

        def lock(i):
            def decide_here(held):
                collected.append(held)
                if i + 1 < len(order):
                    return lock(i + 1)[1]
                return decide(resolve(collected))
            return self.replicas.call(order[i], 'coordinate', bucket, key, decide_here, stage, idempotency)
        _, version = lock(0)
        held = {v.version_id: v for versions in collected for v in versions}
        return list(held.values()), version

    def prepare(self, bucket, key, preference, coordinators):
        """[the partition that decides a conditional write]: the key's first
        owner, once it holds every version a majority of the owners (itself
        included) holds.  Unavailable when it, or too many owners, cannot answer.
        coordinators: the partitions the write may go to (None: any).
        Returns (the deciders, the view stage they come from): see deciders()."""
        first = preference[0]
        if coordinators and coordinators != [first]:
            raise Unavailable('a conditional write is decided by the key\'s first owner, %s, which '
                              'is not taking writes' % first, failed={first: 'down'})
        replies, failures = self._read_majority(bucket, key, preference)
        majority = len(preference) // 2 + 1
        if first not in replies or len(replies) < majority:
            raise Unavailable('a conditional write needs the key\'s first owner, %s, and %d of its %d '
                              'owners; %s answered' % (first, majority, len(preference),
                                                       ', '.join(sorted(replies)) or 'none'),
                              failed=failures)
        versions, fence = resolve(replies.values()), newest_fence(replies.values())
        try:
            if fence is not None and (replies[first].fence or 0) < fence:   # it decides without the dropped
                self.replicas.call(first, 'fence_bucket', bucket, fence)
            for version in versions:
                if reconcile(replies[first], version)[1]:
                    self.replicas.call(first, 'apply', bucket, key, carried(version))
        except PartitionError as e:
            raise Unavailable('the key\'s first owner, %s, could not take the versions (or the bucket\'s '
                              'fence) the other owners hold' % first, failed={first: e.reason})
        self.reader.repair(bucket, key, {p: held for p, held in replies.items() if p != first}, versions, fence)
        return self.deciders(bucket, key, preference)

    def _read_majority(self, bucket, key, preference):
        """What a majority of the owners hold, the first owner's answer always
        among them when it comes: ({partition: versions}, {partition: reason})."""
        first, laggards = preference[0], {}
        replies, failures = self.replicas.at_once(preference, 'read', bucket, key,
                                                  needed=len(preference) // 2 + 1,
                                                  laggards=laggards, since=time.monotonic())
        if first in laggards:   # the others were quicker: its answer is the one that counts
            try:
                replies[first] = self.replicas.finish(first, 'read', laggards.pop(first))
            except PartitionError as e:
                failures[first] = e.reason
        self.replicas.abandon(laggards)
        return replies, failures
