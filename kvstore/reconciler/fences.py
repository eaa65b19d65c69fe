"""Bucket fences spread to every partition, before any job moves a version.

A forced bucket delete drops and fences the bucket on every partition its
front end is configured with (engines/buckets.py, drop_keys).  During a
configuration change that may not be every partition: a front end not yet
reloaded does not know one just added, which keeps what the reloaded front
ends wrote to it, or a rebalance moved there.  Reads and listings already
leave out what any replica's fence covers; the run gives each partition the
newest fence any partition holds of each bucket, which removes what it covers
there, so that no job copies it back and r=1 reads no longer see it.
"""
from kvstore.engines import PartitionError
from kvstore.reconciler.results import JobResult, tell, waiting_text


def spread_fences(parts):
    """Before the jobs: a JobResult when a partition lacked a fence or could
    not be asked (None: every partition holds every fence)."""
    held, failed = parts.each(parts.names, 'bucket_fences')
    newest = {}
    for fences in held.values():
        for bucket, fence in fences.items():
            newest[bucket] = max(newest.get(bucket, fence), fence)
    raised, waiting = 0, {name: 1 for name in failed}
    for name, fences in sorted(held.items()):
        for bucket, fence in sorted(newest.items()):
            if fences.get(bucket, -1) < fence:
                try:
                    parts.change(name, 'fence_bucket', bucket, fence)
                except PartitionError:   # the next run spreads it
                    waiting[name] = waiting.get(name, 0) + 1
                    continue
                parts.meter.wrote(1)
                raised += 1
    if not raised and not waiting:
        return None
    said = tell(parts.dry_run, raised, '%d bucket fences spread', 'would spread %d bucket fences')
    if waiting:
        said += ', ' + waiting_text(waiting)
    return JobResult('fences', {'fences_spread': raised}, waiting, bool(waiting) or parts.dry_run,
                     'fences: %s' % said)
