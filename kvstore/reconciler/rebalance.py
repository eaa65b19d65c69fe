"""The rebalance job: put every key (and bucket record) on the partitions the
configured ring gives it, and see a view change's rebalance through."""
import collections
import time

from kvstore.engines import PartitionError
from kvstore.reconciler.antientropy import SlotDigests, ranges_outside, scan_pages, whole_slots
from kvstore.reconciler.repair import anti_entropy
from kvstore.coordinator.versions import iso_time
from kvstore.reconciler.results import JobResult, tell, waiting_text

PROGRESS_SECONDS = 2.0      # how often a rebalance records its progress


def rebalance(parts, view, changed):
    """view: the newest recorded view; changed: this run recorded it (or, in a
    dry run, would).  Compares every arc while the view is rebalancing, and
    once more in the first run after it completed: a conditional write that
    failed halfway under the old ring may have left its version on the old
    first owner alone, so the ring before stops deciding conditional writes
    (retired, decider.py) only once every key is on its owners again."""
    counts = collections.Counter(keys_moved=0, versions_copied=0, bucket_records=0)
    waiting = collections.Counter()
    place_bucket_records(parts, counts, waiting)

    retiring = view['state'] == 'complete' and bool(view.get('previous')) and not view.get('retired')
    comparing = view['state'] != 'complete' or retiring   # every arc
    arc_list = parts.store.ring.arcs(parts.store.n) if comparing or parts.full_pass else []
    # Keys on a partition that does not own them: every one while the view
    # changes, and on a full pass; otherwise repair finds them among the
    # changes (a front end with an out-of-date configuration wrote them).
    outside = [(name, lo, hi) for name in parts.names for lo, hi in ranges_outside(arc_list, name)
               ] if comparing or parts.full_pass else []
    total = len(outside) + (len(arc_list) if comparing else 0)
    reporter = _progress_reporter(parts, view, total, counts)
    held = SlotDigests(parts.each, parts.meter)
    for done, (name, lo, hi) in enumerate(outside):
        drain(parts, name, lo, hi, counts, waiting, held)
        reporter(done + 1, 'moving keys off %s' % name)
    if comparing:
        anti_entropy(parts, arc_list, counts, waiting,
                     lambda done: reporter(len(outside) + done, 'comparing owners'))

    state, retired = view['state'], False
    if state == 'rebalancing' and not waiting and not parts.dry_run and parts.store.complete_view(view):
        state = view['state'] = 'complete'
    elif retiring and not waiting and not parts.dry_run and parts.store.retire_previous(view):
        retired = view['retired'] = True
    return JobResult('rebalance', dict(counts, epoch=view['epoch'], state=state),
                     dict(waiting), bool(waiting) or state != 'complete',
                     _summary(parts.dry_run, view['epoch'], state, changed, counts, waiting, retired))


def _summary(dry_run, epoch, state, changed, counts, waiting, retired=False):
    said = [tell(dry_run, counts['keys_moved'], '%d keys moved to their owners',
                 'would move %d keys to their owners')]
    if counts['keys_repaired']:
        said.append(tell(dry_run, counts['keys_repaired'], '%d keys copied between owners',
                         'would copy %d keys between owners'))
    if counts['bucket_records']:
        said.append(tell(dry_run, counts['bucket_records'], '%d bucket records copied',
                         'would copy %d bucket records'))
    if waiting:
        said.append(waiting_text(waiting))
    recorded = '%sepoch %d %s' % ('would record ' if dry_run and changed else '', epoch, state)
    if retired:
        said.append('the ring before it no longer decides conditional writes')
    return 'rebalance: %s; %s' % (recorded, ', '.join(said))


def _progress_reporter(parts, view, total, counts):
    """report(done, note): the progress bar, and every PROGRESS_SECONDS the
    rebalance's progress recorded where GET /cluster shows it."""
    last = [0.0]

    def report(done, note):
        parts.progress.show('rebalance', done, total, note)
        if (parts.dry_run or view['state'] == 'complete'
                or (time.monotonic() - last[0] < PROGRESS_SECONDS and done < total)):
            return
        last[0] = time.monotonic()
        parts.store.record_progress({
            'epoch': view['epoch'], 'ranges_done': done, 'ranges_total': total,
            'keys_moved': counts['keys_moved'], 'keys_copied': counts['keys_repaired'],
            'updated': iso_time()})
    return report


def drain(parts, name, lo, hi, counts, waiting, held):
    """Move the keys `name` holds in [lo, hi), which it does not own, to their
    owners; delete each from `name` only once every owner holds it.
    held: SlotDigests, which say at once how many rows whole slots hold."""
    slots = whole_slots(lo, hi)
    try:
        count, _ = held.of([name], *slots)[0][name] if slots else parts.call(name, 'range_digest', lo, hi)
    except (PartitionError, KeyError):   # KeyError: it did not answer for its slots
        waiting[name] += 1
        return
    if not count:
        return
    for page, failures in scan_pages(parts.each, [name], lo, hi, parts.batch):
        if failures:
            waiting[name] += 1
            return
        rows = page[name]
        parts.meter.read(sum(len(v) for v in rows.values()))
        if not parts.move(name, rows, counts, waiting):
            return


def place_bucket_records(parts, counts, waiting):
    """Copy each bucket's newest record to the owners of the bucket's point
    that lack it; remove it from other partitions once every owner has it."""
    found, failures = parts.each(parts.names, 'bucket_records')
    for name in failures:
        waiting[name] += 1
    newest = {}
    for records in found.values():
        for bucket, (properties, modified) in records.items():
            if bucket not in newest or modified > newest[bucket][1]:
                newest[bucket] = (properties, modified)
    for bucket, (properties, modified) in sorted(newest.items()):
        owners = parts.store.ring.preference_list(bucket, '', parts.store.n)
        if _copy_bucket_record(parts, bucket, properties, modified, owners, found, counts, waiting):
            _drop_bucket_record(parts, bucket, owners, found, waiting)


def _copy_bucket_record(parts, bucket, properties, modified, owners, found, counts, waiting):
    """Give the owners that lack it the bucket's newest record: True when every owner has it."""
    placed = True
    for owner in owners:
        if owner not in found:
            placed = False
        elif found[owner].get(bucket, (None, -1))[1] < modified:
            try:
                parts.change(owner, 'put_bucket_record', bucket, properties, modified)
                parts.meter.wrote(1)
                counts['bucket_records'] += 1
            except PartitionError:
                waiting[owner] += 1
                placed = False
    return placed


def _drop_bucket_record(parts, bucket, owners, found, waiting):
    """Remove the bucket's record from the partitions that do not own it."""
    if parts.dry_run:
        return
    for name, records in found.items():
        if name not in owners and bucket in records:
            try:
                parts.call(name, 'drop_bucket', bucket)
                parts.meter.wrote(1)
            except PartitionError:
                waiting[name] += 1
