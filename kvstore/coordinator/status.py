"""What a front end reports of the cluster: GET /cluster, /ready and
/cluster/locate.

Health is this front-end process's view, which gossip merges with the other
front ends' (the newest observation of each partition wins): each
observation says when it was made and by which process.  Counts that cost a
scan on every partition (keys, bytes, pending markers) are taken at most once
every USAGE_SECONDS per process.
"""
import threading
import time

from kvstore.coordinator.ring import RING_SIZE, Ring, key_point
from kvstore.coordinator.views import ring_digest
from kvstore.coordinator.sync_runs import last_runs
from kvstore.coordinator.versions import iso_time
from kvstore.coordinator.workers import front_end_view

USAGE_SECONDS = 60.0     # how long GET /cluster reuses its count of keys, bytes and pending markers
READY_SECONDS = 1.0      # how long GET /ready, which anyone may ask, reuses its answer


class ClusterStatus:
    def __init__(self, config, replicas, views, gossip):
        self.config = config
        self.replicas = replicas
        self.views = views
        self.gossip = gossip
        self.shares = ring_shares(Ring.of(config))
        self._usage = (0.0, {})   # (when counted, usage())
        self._usage_lock = threading.Lock()
        self._ready = (-READY_SECONDS, None)   # (when asked, monotonic; readiness())
        self._ready_lock = threading.Lock()

    def cluster_status(self):
        """What this front end knows of the partitions, the ring, sync.py's runs and a rebalance."""
        config, health = self.config, self.replicas.health
        now = time.time()
        held, _ = self.replicas.everywhere(lambda p: self.replicas.call(p, 'hint_counts'))
        counted, usage = self.usage_cached()
        view = front_end_view(health.view())   # every worker's of this front end
        expired_before = now - config.hint_window
        partitions = []
        for p in config.partitions:
            seen = view[p.name]
            waiting = [counts[p.name] for counts in held.values() if p.name in counts]
            used = usage.get(p.name) or {}
            partitions.append({
                'name': p.name, 'engine': p.engine, 'weight': p.weight,
                'share': round(self.shares.get(p.name, 0.0), 4),
                'state': seen['state'], 'since': iso_time(seen['since']),
                # 0: not yet used by this process nor heard of by gossip.
                'observed': iso_time(seen['observed']) if seen['observed'] else None,
                'observed_seconds_ago': round(max(0.0, now - seen['observed']), 1) if seen['observed'] else None,
                'observer': seen['observer'],
                'last_error': seen['last_error'],
                'keys': used.get('keys'), 'bytes': used.get('bytes'), 'pending': used.get('pending'),
                'hints_waiting': sum(count for count, _ in waiting),
                'hints_expired': sum(count for count, oldest in waiting if oldest / 1e6 < expired_before),
                'hints_held': sum(c for c, _ in held[p.name].values()) if p.name in held else None,
            })
        return {'replicas': config.replicas, 'r': config.r, 'w': config.w, 'front_end': health.name,
                'partitions': partitions, 'usage_counted': iso_time(counted),
                'ring': {'vnodes': config.vnodes, 'digest': ring_digest(self.views.ring_description())},
                'sync': last_runs(self.replicas),
                'rebalance': self.views.rebalance_status(),
                'gossip': {'peers': ['%s:%d' % peer for peer in config.peers],
                           'interval': config.gossip_interval, 'rounds': self.gossip.rounds}}

    def readiness_cached(self):
        """readiness(), asked of the partitions at most once every
        READY_SECONDS by this process: /ready needs no token, so its
        queries must not be had for the asking."""
        with self._ready_lock:
            if time.monotonic() - self._ready[0] >= READY_SECONDS:
                self._ready = (time.monotonic(), self.readiness())
            return self._ready[1]

    def readiness(self):
        """(ready, {partition: 'up' or 'down'}): ready while enough partitions
        answer that every key can meet the configured quorums: R and W
        partitions in all, and no more down than leaves PR and PW owners."""
        found, failures = self.replicas.everywhere(lambda p: self.replicas.call(p, 'get_metadata', ('view',)))
        c = self.config
        ready = len(found) >= max(c.r, c.w) and len(failures) <= c.replicas - max(c.pr, c.pw)
        # Only the states: /ready answers anyone; /cluster (admin) says why.
        return ready, {p: 'up' if p in found else 'down' for p in self.replicas.engines}

    def usage_cached(self):
        """(when counted, usage()), counted at most once every USAGE_SECONDS by this process."""
        with self._usage_lock:
            if time.time() - self._usage[0] > USAGE_SECONDS:
                self._usage = (time.time(), self.usage())
            return self._usage

    def usage(self):
        """{partition: {keys, bytes, pending}, None when it did not answer}.
        Counting costs a scan on every partition."""
        found, _ = self.replicas.everywhere(lambda p: self.replicas.call(p, 'usage'))
        return {name: found.get(name) for name in sorted(self.replicas.engines)}

    def keys_per_partition(self):
        """{partition: distinct keys it holds (tombstoned ones included), None when
        it did not answer}.  Counting costs an index scan on every partition."""
        found, _ = self.replicas.everywhere(lambda p: self.replicas.call(p, 'count_keys'))
        return {name: found.get(name) for name in sorted(self.replicas.engines)}


def ring_shares(ring):
    """{partition: the fraction of the ring whose keys it is first owner of}."""
    shares = {}
    for lo, hi, (owner,) in ring.arcs(1):
        shares[owner] = shares.get(owner, 0) + (hi - lo) / RING_SIZE
    return shares


def locate(datastore, bucket, key):
    """Where a key lives and what each partition holds of it: owners their
    versions, fallbacks the hints they hold for it."""
    datastore.check_key(bucket, key)
    owners, fallbacks = datastore.placement(bucket, key)
    found, _ = datastore.replicas.everywhere(
        lambda p: datastore.call(p, 'read' if p in owners else 'read_hints', bucket, key))
    return {'bucket': bucket, 'key': key, 'point': key_point(bucket, key), 'owners': owners, 'fallbacks': fallbacks,
            'replicas': {p: {'state': 'ok', 'versions': [version_summary(v) for v in found[p]]} if p in found
                         else {'state': 'down'} for p in owners + fallbacks}}


def version_summary(version):
    return {'etag': version.etag, 'deleted': version.deleted, 'modified': iso_time(version.modified / 1e6),
            'size': version.size, 'sha256': version.digest, 'clock': version.full_clock}
