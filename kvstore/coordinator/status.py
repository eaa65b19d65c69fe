"""What the cluster pages report, read through a Datastore: GET /cluster
(cluster_status) and GET /cluster/locate (locate).

Health is this front-end process's view, which gossip merges with the other
front ends' (the newest observation of each partition wins): each
observation says when it was made and by which process.  Counts that cost a
scan on every partition (keys, bytes, pending markers) are taken at most once
every USAGE_SECONDS per process.
"""
import threading
import time
import weakref

from datastore import iso_time
from kvstore.coordinator.ring import RING_SIZE, key_point
from kvstore.reconciler.history import last_runs

USAGE_SECONDS = 60.0
_usage = weakref.WeakKeyDictionary()   # datastore: (when counted, {partition: usage or None})
_usage_lock = threading.Lock()


def cluster_status(datastore):
    config, health = datastore.config, datastore.health
    now = time.time()
    held, _ = datastore._everywhere(lambda p: datastore.call(p, 'hint_counts'))
    counted, usage = partition_usage(datastore)
    shares = ring_shares(datastore.ring)
    view = health.view()
    expired_before = now - config.hint_window
    partitions = []
    for p in config.partitions:
        seen = view[p.name]
        waiting = [counts[p.name] for counts in held.values() if p.name in counts]
        used = usage.get(p.name) or {}
        partitions.append({
            'name': p.name, 'engine': p.engine, 'weight': p.weight, 'share': round(shares.get(p.name, 0.0), 4),
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
    return {'replicas': datastore.n, 'r': config.r, 'w': config.w, 'front_end': health.name,
            'partitions': partitions, 'usage_counted': iso_time(counted),
            'ring': {'vnodes': config.vnodes, 'digest': datastore.ring_digest(datastore.ring_description())},
            'sync': last_runs(datastore),
            'rebalance': datastore.rebalance_status(),
            'gossip': {'peers': ['%s:%d' % peer for peer in config.peers],
                       'interval': config.gossip_interval, 'rounds': datastore.gossip.rounds}}


def partition_usage(datastore):
    """(when counted, {partition: {keys, bytes, pending}, or None when it did not answer})."""
    with _usage_lock:
        counted, usage = _usage.get(datastore, (0.0, {}))
        if time.time() - counted > USAGE_SECONDS:
            found, _ = datastore._everywhere(lambda p: datastore.call(p, 'usage'))
            counted, usage = time.time(), {name: found.get(name) for name in datastore.engines}
            _usage[datastore] = counted, usage
    return counted, usage


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
    found, _ = datastore._everywhere(
        lambda p: datastore.call(p, 'read' if p in owners else 'read_hints', bucket, key))
    return {'bucket': bucket, 'key': key, 'point': key_point(bucket, key), 'owners': owners, 'fallbacks': fallbacks,
            'replicas': {p: {'state': 'ok', 'versions': [version_summary(v) for v in found[p]]} if p in found
                         else {'state': 'down'} for p in owners + fallbacks}}


def version_summary(version):
    return {'etag': version.etag, 'deleted': version.deleted, 'modified': iso_time(version.modified / 1e6),
            'size': version.size, 'clock': version.full_clock}
