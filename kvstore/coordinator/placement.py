"""Placement: which partitions own a key, now and under the views before it.

While some ring other than the configured one may still place keys (a
rebalance under way, or the configuration changed before sync.py recorded it;
see views.py), a read that finds nothing on a key's owners also asks the
owners that ring gives the key, and a write first copies to the owners what
those hold.
"""
import threading
import time

from kvstore.coordinator.ring import Ring, ring_of
from kvstore.coordinator.versions import carried, resolve
from kvstore.coordinator.views import newest_view, view_stage

VIEW_CACHE_SECONDS = 5.0   # how long the rings of the recorded views are trusted


class Rings(list):
    """[(Ring, replicas)] read from the recorded views; stage: the newest
    view's (epoch, whether complete); deciding: [(Ring, replicas)] of the
    newest view and of the one before it until sync.py retires that, the last
    completed one first (decider.py)."""
    def __init__(self, rings=(), stage=(0, False), deciding=()):
        super().__init__(rings)
        self.stage = stage
        self.deciding = list(deciding)


class Placement:
    def __init__(self, config, replicas, views):
        self.n = config.replicas
        self.ring = Ring.of(config)
        self.replicas = replicas
        self.views = views
        self.previous_rings_cache = (0.0, Rings())   # (expires, rings): see previous_rings
        self._loading = threading.Lock()

    def of(self, bucket, key):
        """(preference list, fallbacks): the N owners, then every other partition."""
        walk = self.ring.walk(bucket, key)
        return list(walk[:self.n]), list(walk[self.n:])

    def bucket_owners(self, bucket):
        """The partitions that hold a bucket's record."""
        return self.ring.preference_list(bucket, '', self.n)

    def previous_rings(self):
        """[(Ring, replicas)] other than the configured one that may still place
        keys (Rings, with the rings that decide conditional writes).  Read at
        first use, then again in the background when older than
        VIEW_CACHE_SECONDS, so that requests do not wait on it."""
        expires, rings = self.previous_rings_cache
        if time.monotonic() < expires:
            return rings
        if expires == 0.0:
            return self._load_previous_rings()
        if not self._loading.locked():
            try:
                self.replicas.executor.submit(self._load_previous_rings)
            except RuntimeError:  # shutting down
                pass
        return rings

    def forget_previous_rings(self):
        """Read the views again at the next use (one was just recorded)."""
        self.previous_rings_cache = (0.0, Rings())

    def _load_previous_rings(self):
        with self._loading:
            expires, rings = self.previous_rings_cache
            if time.monotonic() < expires:
                return rings
            views = self.views.read_views()
            if views:
                newest, mine, rings = newest_view(views), self.views.ring_description(), Rings()
                if newest:
                    others = [newest['ring']] + ([newest['previous']] if newest['state'] != 'complete' else [])
                    epoch, complete, retired = view_stage(newest)
                    deciding = [newest['ring']] if retired else (
                        [newest['ring'], newest['previous']] if complete else [newest['previous'], newest['ring']])
                    rings = Rings([(ring_of(r), r['replicas']) for r in others if r and r != mine],
                                  (epoch, complete), [(ring_of(r), r['replicas']) for r in deciding if r])
            self.previous_rings_cache = (time.monotonic() + VIEW_CACHE_SECONDS, rings)
            return rings

    def previous_owners(self, bucket, key, preference):
        """Partitions a previous view places the key on, beyond its preference list."""
        owners = []
        for ring, n in self.previous_rings():
            for name in ring.preference_list(bucket, key, n):
                if name not in preference and name not in owners and name in self.replicas.engines:
                    owners.append(name)
        return owners

    def read_owners(self, owners, bucket, key, needed=None):
        """What the partitions `owners` hold of a key, resolved."""
        needed = len(owners) if needed is None else needed
        found, _ = self.replicas.fan_out(owners, lambda p: self.replicas.call(p, 'read', bucket, key),
                                         launch=needed, needed=needed)
        return resolve(found.values())

    def read_previous_owners(self, bucket, key, preference, replies):
        """A read found nothing on the key's owners: what its previous owners hold.
        If they hold nothing either, one owner is asked again, since sync.py
        removes a key from a previous owner only after every owner holds it."""
        owners = self.previous_owners(bucket, key, preference)
        if not owners:
            return []
        versions = self.read_owners(owners, bucket, key)
        if not versions:
            versions = self.read_owners([p for p in preference if p in replies], bucket, key, needed=1)
        return versions

    def adopt_previous_owners(self, bucket, key, preference):
        """Before a write: copy what the key's previous owners hold to its owners,
        so that the coordinator decides with it."""
        owners = self.previous_owners(bucket, key, preference)
        self.spread(bucket, key, self.read_owners(owners, bucket, key) if owners else [], preference)

    def spread(self, bucket, key, versions, preference):
        """Copy versions of a key to each of its owners (preference), an
        expired value as its tombstone (versions.carried)."""
        versions = [carried(v) for v in versions]
        if versions:
            self.replicas.fan_out(preference, lambda p: [self.replicas.call(p, 'apply', bucket, key, v)
                                                         for v in versions],
                                  launch=len(preference), needed=len(preference))
