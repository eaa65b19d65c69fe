"""The compare-and-swap decider: where a conditional write is decided.

A conditional write (compare-and-swap) is only ever coordinated by the key's
first owner, under its lock on the key, after that owner took in what a
majority of the owners hold: every front end then decides it in the same
place, with the same versions, whatever it believes of the partitions'
health.  When the first owner cannot be reached, the write is refused (503).
"""
import time

from kvstore.coordinator.versions import reconcile, resolve
from kvstore.engines import PartitionError
from kvstore.errors import Unavailable


class ConditionalDecider:
    def __init__(self, replicas, reader):
        self.replicas = replicas
        self.reader = reader   # for read repair of the other owners

    def prepare(self, bucket, key, preference, coordinators):
        """[the partition that decides a conditional write]: the key's first
        owner, once it holds every version a majority of the owners (itself
        included) holds.  Unavailable when it, or too many owners, cannot answer.
        coordinators: the partitions the write may go to (None: any)."""
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
        versions = resolve(replies.values())
        for version in versions:
            if reconcile(replies[first], version)[1]:
                try:
                    self.replicas.call(first, 'apply', bucket, key, version)
                except PartitionError as e:
                    raise Unavailable('the key\'s first owner, %s, could not take the versions the '
                                      'other owners hold' % first, failed={first: e.reason})
        self.reader.repair(bucket, key, {p: held for p, held in replies.items() if p != first}, versions)
        return [first]

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
