"""Quorum reads and read repair.

A read asks R replicas at once, asking the next one (then the fallbacks'
hints) whenever one fails, and returns the versions no other version
supersedes; owners found stale are repaired in the background.
"""
import dataclasses
import logging

from kvstore.coordinator.validation import quorums
from kvstore.coordinator.versions import carried, context_of, live, newest_fence, reconcile, resolve, unfenced
from kvstore import metrics
from kvstore.engines import PartitionError
from kvstore.errors import Unavailable

log = logging.getLogger('kvstore.datastore')


@dataclasses.dataclass
class Read:
    versions: list            # current versions, tombstones included, oldest first
    preference_list: list
    replicas: list            # partitions that answered
    partitions: tuple = None  # the configured partitions' names: bounds the context

    @property
    def current(self):
        """Live versions: none when the key is missing or deleted."""
        return live(self.versions)

    @property
    def context(self):
        return context_of(self.versions, self.partitions)


class Reader:
    def __init__(self, config, replicas, placement, buckets):
        self.config = config
        self.replicas = replicas
        self.placement = placement
        self.buckets = buckets

    def get(self, bucket, key, r=None, pr=None):
        """The key's current versions from r replicas, pr of them owners."""
        props = self.buckets.properties_cached(bucket)
        r, pr = quorums(self.config, props, r=r, pr=pr)
        preference, fallbacks = self.placement.of(bucket, key)
        replies, failures = self._ask(bucket, key, preference, fallbacks, max(r, pr))
        owners = sum(1 for p in replies if p in preference)
        if len(replies) < r or owners < pr:
            raise Unavailable('%d replicas answered the read, %d of them owners; it needs %d, %d of them owners'
                              % (len(replies), owners, r, pr), failed=failures)
        fence = newest_fence(replies.values())
        versions = resolve(replies.values())
        if not versions:   # during a view change the key may be on its previous owners only
            versions = unfenced(self.placement.read_previous_owners(bucket, key, preference, replies), fence)
        self.repair(bucket, key, {p: held for p, held in replies.items() if p in preference}, versions, fence)
        if len(versions) > 1 and props['conflicts'] == 'lww':
            versions = versions[-1:]   # the last writer wins
        return Read(versions=versions, preference_list=preference, replicas=sorted(replies),
                    partitions=tuple(self.replicas.engines))

    def _ask(self, bucket, key, preference, fallbacks, wanted):
        """The versions `wanted` replicas hold: the first owners at once, then
        in place of those that failed the next owners, then fallbacks' hints.
        ({partition: versions}, {partition: reason})."""
        def read(p):
            # An owner answers from its objects; a fallback from the hints it holds.
            return self.replicas.call(p, 'read' if p in preference else 'read_hints', bucket, key)
        replies, failures = self.replicas.at_once(preference[:wanted], 'read', bucket, key)
        if len(replies) < wanted:
            more, failed = self.replicas.fan_out(
                [p for p in preference + fallbacks if p not in replies and p not in failures],
                read, launch=wanted - len(replies), needed=wanted - len(replies))
            replies.update(more)
            failures.update(failed)
        return replies, failures

    def repair(self, bucket, key, replies, versions, fence=None):
        """Send owners that answered with less than the current set what they
        lack (an expired value as its tombstone: versions.carried), and the
        bucket's fence (newest_fence) to those without it."""
        for name, held in replies.items():
            if fence is not None and (getattr(held, 'fence', None) or 0) < fence:
                metrics.read_repair_sent()
                self.replicas.executor.submit(self.fence_replica, name, bucket, fence)
            for version in versions:
                if reconcile(held, version)[1]:
                    metrics.read_repair_sent()
                    self.replicas.executor.submit(self.repair_replica, name, bucket, key, carried(version))

    def fence_replica(self, name, bucket, fence):
        """A read repair: give one partition a bucket fence it lacks (a forced
        delete through a front end that did not know it), which drops what it
        covers there."""
        try:
            self.replicas.call(name, 'fence_bucket', bucket, fence)
        except PartitionError as e:
            log.info('read repair of bucket %s\'s fence on %s failed: %s', bucket, name, e.reason)

    def repair_replica(self, name, bucket, key, version):
        """A read repair: give one owner a version it lacks."""
        try:
            self.replicas.call(name, 'apply', bucket, key, version)
        except PartitionError as e:
            log.info('read repair of %s/%s on %s failed: %s', bucket, key, name, e.reason)
