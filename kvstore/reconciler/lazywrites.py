"""Lazy writes: a write with w below N leaves a pending marker on its
coordinator until every replica holds it; push each to the replicas that lack it."""
from kvstore.engines import PartitionError


def push_pending(parts, counts, waiting):
    """Push each pending write's key, as its coordinator holds it, to the key's
    other owners; drop the marker once every owner holds it."""
    for name in parts.names:
        after = None
        while True:
            try:
                markers = parts.call(name, 'pending_markers', parts.batch, after)
            except PartitionError:
                waiting[name] += 1
                break
            parts.meter.read(len(markers))
            if not markers:
                break
            after = markers[-1][:3]
            if not _push_batch(parts, name, markers, counts, waiting) or len(markers) < parts.batch:
                break


def _push_batch(parts, name, markers, counts, waiting):
    """One batch of name's markers: False when name stopped answering."""
    keys = sorted({(b, k) for b, k, _, _ in markers})
    try:
        mine = parts.call(name, 'read_many', keys, False)
    except PartitionError:
        waiting[name] += len(markers)
        return False
    parts.meter.read(sum(len(v) for v in mine.values()))
    plan, blocked = parts.plan_copies(name, mine, waiting)
    copied, failed = parts.transfer(plan, waiting)
    counts['versions_copied'] += copied
    for bucket, key, version_id, _ in markers:
        if (bucket, key) in blocked or (bucket, key) in failed:
            counts['pending_left'] += 1
            continue
        try:
            parts.change(name, 'clear_pending', [(bucket, key, version_id)])
        except PartitionError:
            counts['pending_left'] += 1
            continue
        parts.meter.wrote(1)
        counts['pending_pushed'] += 1
    return True
