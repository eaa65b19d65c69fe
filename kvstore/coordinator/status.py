"""What a front end reports of the cluster: GET /cluster and /ready."""
import time

KEY_COUNT_SECONDS = 60.0     # how long GET /cluster reuses its count of keys per partition


def iso_time(seconds):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(seconds))


class ClusterStatus:
    def __init__(self, config, replicas, views, gossip):
        self.config = config
        self.replicas = replicas
        self.views = views
        self.gossip = gossip
        self._key_counts = (0.0, {})   # (when counted, keys_per_partition())

    def cluster_status(self):
        """What this front end knows of the partitions: health, and the hints
        each holds for others (counted on the partitions that answer)."""
        held, _ = self.replicas.everywhere(lambda p: self.replicas.call(p, 'hint_counts'))
        keys = self.keys_per_partition_cached()
        view = self.replicas.health.view()
        expired_before = time.time() - self.config.hint_window
        partitions = []
        for p in self.config.partitions:
            seen = view[p.name]
            waiting = [counts[p.name] for counts in held.values() if p.name in counts]
            partitions.append({
                'name': p.name, 'engine': p.engine, 'weight': p.weight,
                'state': seen['state'], 'since': iso_time(seen['since']),
                'last_error': seen['last_error'],
                'hints_waiting': sum(count for count, _ in waiting),
                'hints_expired': sum(count for count, oldest in waiting
                                     if oldest / 1e6 < expired_before),
                'hints_held': sum(c for c, _ in held[p.name].values()) if p.name in held else None,
                'keys': keys.get(p.name),
            })
        return {'replicas': self.config.replicas, 'r': self.config.r, 'w': self.config.w,
                'partitions': partitions, 'keys_counted': iso_time(self._key_counts[0]),
                'rebalance': self.views.rebalance_status(),
                'gossip': {'peers': ['%s:%d' % peer for peer in self.config.peers],
                           'interval': self.config.gossip_interval, 'rounds': self.gossip.rounds}}

    def readiness(self):
        """(ready, {partition: 'up' or 'down'}): ready while enough partitions
        answer that every key can meet the configured quorums: R and W
        partitions in all, and no more down than leaves PR and PW owners."""
        found, failures = self.replicas.everywhere(lambda p: self.replicas.call(p, 'get_metadata', ('view',)))
        c = self.config
        ready = len(found) >= max(c.r, c.w) and len(failures) <= c.replicas - max(c.pr, c.pw)
        # Only the states: /ready answers anyone; /cluster (admin) says why.
        return ready, {p: 'up' if p in found else 'down' for p in self.replicas.engines}

    def keys_per_partition_cached(self):
        """keys_per_partition(), counted at most once a minute by this front end."""
        if time.time() - self._key_counts[0] > KEY_COUNT_SECONDS:
            self._key_counts = (time.time(), self.keys_per_partition())
        return self._key_counts[1]

    def keys_per_partition(self):
        """{partition: distinct keys it holds (tombstoned ones included), None when
        it did not answer}.  Counting costs an index scan on every partition."""
        found, _ = self.replicas.everywhere(lambda p: self.replicas.call(p, 'count_keys'))
        return {name: found.get(name) for name in sorted(self.replicas.engines)}
