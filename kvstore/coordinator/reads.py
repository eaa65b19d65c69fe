"""Quorum reads and read repair.

A read asks R replicas at once, asking the next one (then the fallbacks'
hints) whenever one fails, and returns the versions no other version
supersedes; owners found stale are repaired in the background.
"""
import dataclasses
import logging

from kvstore.coordinator.validation import quorums
from kvstore.coordinator.versions import (Held, carried, context_of, live, newest_fence, reconcile, resolve,
                                          unfenced)
from kvstore import metrics
from kvstore.engines import PartitionError
from kvstore.errors import StoreError, Unavailable

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
        wanted = max(r, pr)
        replies, failures = self.replicas.at_once(preference[:wanted], 'read', bucket, key)
        return self._conclude(bucket, key, props, r, pr, preference, fallbacks, replies, failures)

    def get_many(self, bucket, keys, r=None, pr=None):
        """get() of many keys of a bucket (distinct): each partition asked for
        all the keys it is among the first max(r, pr) owners of in one query,
        every partition at once.  {key: Read, or the StoreError of its read}."""
        props = self.buckets.properties_cached(bucket)
        r, pr = quorums(self.config, props, r=r, pr=pr)
        wanted = max(r, pr)
        placed, asked = {}, {}
        for key in keys:
            placed[key] = self.placement.of(bucket, key)
            for p in placed[key][0][:wanted]:
                asked.setdefault(p, []).append(key)
        parsed = {}   # a version two owners hold is built once
        answers, failed = self.replicas.at_once(list(asked), 'read_many',
                                                each={p: (bucket, among, parsed) for p, among in asked.items()})
        reads = {}
        for key, (preference, fallbacks) in placed.items():
            replies = {p: Held(answers[p][1].get(key, ()), answers[p][0])   # (fence, {key: versions})
                       for p in preference[:wanted] if p in answers}
            failures = {p: failed[p] for p in preference[:wanted] if p in failed}
            try:
                reads[key] = self._conclude(bucket, key, props, r, pr, preference, fallbacks, replies, failures)
            except StoreError as e:
                reads[key] = e
        return reads

    def _conclude(self, bucket, key, props, r, pr, preference, fallbacks, replies, failures):
        """A key's Read from the replies of the first owners asked
        ({partition: versions}; failures: {partition: reason}): in place of
        those that failed, the next owners, then fallbacks' hints."""
        wanted = max(r, pr)
        if len(replies) < wanted:
            self._ask_more(bucket, key, preference, fallbacks, wanted, replies, failures)
        owners = sum(1 for p in replies if p in preference)
        if len(replies) < r or owners < pr:
            raise Unavailable('%d replicas answered the read, %d of them owners; it needs %d, %d of them owners'
                              % (len(replies), owners, r, pr), failed=failures)
        fence = newest_fence(replies.values())
        held = list(replies.values())
        # Replicas that agree (nearly always: the same versions, each a value or
        # a tombstone alike, under the same fence) need neither merging nor repair.
        first = {(v.version_id, v.deleted) for v in held[0]}
        agreed = all(len(h) == len(held[0]) and {(v.version_id, v.deleted) for v in h} == first
                     and getattr(h, 'fence', None) == getattr(held[0], 'fence', None) for h in held[1:])
        versions = resolve(held[:1] if agreed else held, fence)
        if not versions:   # during a view change the key may be on its previous owners only
            versions = unfenced(self.placement.read_previous_owners(bucket, key, preference, replies), fence)
            agreed = False
        if not agreed:
            self.repair(bucket, key, {p: h for p, h in replies.items() if p in preference}, versions, fence)
        if len(versions) > 1 and props['conflicts'] == 'lww':
            versions = versions[-1:]   # the last writer wins
        return Read(versions=versions, preference_list=preference, replicas=sorted(replies),
                    partitions=tuple(self.replicas.engines))

    def _ask_more(self, bucket, key, preference, fallbacks, wanted, replies, failures):
        """Add to replies (and failures) the versions of as many more replicas
        as it takes to have `wanted`: the next owners, then fallbacks' hints."""
        def read(p):
            # An owner answers from its objects; a fallback from the hints it holds.
            return self.replicas.call(p, 'read' if p in preference else 'read_hints', bucket, key)
        more, failed = self.replicas.fan_out(
            [p for p in preference + fallbacks if p not in replies and p not in failures],
            read, launch=wanted - len(replies), needed=wanted - len(replies))
        replies.update(more)
        failures.update(failed)

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
