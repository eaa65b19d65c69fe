"""The gc job: turn values expired for longer than max_clock_skew into their
tombstones, remove chunks no version or hint points to, idempotency records
past their window, the change feed's changes past its retention, and reap
tombstones every owner holds alike once tombstone_grace has passed (since
their write, or their value's expiry)."""
import collections
import time

from kvstore.coordinator.writes import IDEMPOTENCY_WINDOW
from kvstore.engines import PartitionError
from kvstore.reconciler.results import JobResult, tell, waiting_text


def collect_garbage(parts, view):
    """view: the newest recorded view (tombstones wait while it rebalances)."""
    counts = collections.Counter(expired_reaped=0, tombstones_reaped=0, tombstones_kept=0,
                                 chunked_versions_removed=0, changes_trimmed=0)
    waiting = collections.Counter()
    reap_expired(parts, counts, waiting)
    collect_chunks(parts, counts, waiting)
    collect_idempotency_records(parts, counts, waiting)
    trim_changes(parts, counts, waiting)
    chunks = (', chunks of %d versions removed' % counts['chunked_versions_removed']
              if counts['chunked_versions_removed'] else '')
    if counts['expired_reaped']:
        chunks = ', ' + tell(parts.dry_run, counts['expired_reaped'], '%d expired values made tombstones',
                             'would make %d expired values tombstones') + chunks
    if view['state'] != 'complete':
        return JobResult('gc', dict(counts), dict(waiting), True, 'gc: tombstones skipped until the '
                         'rebalance to epoch %d is complete%s' % (view['epoch'], chunks))
    hinted, unreachable = parts.each(parts.names, 'hinted_keys')
    if unreachable:
        return JobResult('gc', dict(counts), dict(waiting, **{n: 1 for n in unreachable}), True,
                         'gc: tombstones skipped, the hints on %s are unknown%s'
                         % (', '.join(sorted(unreachable)), chunks))
    reap_tombstones(parts, set().union(*hinted.values()), counts, waiting)
    said = [tell(parts.dry_run, counts['tombstones_reaped'], '%d tombstones reaped', 'would reap %d tombstones')]
    if counts['tombstones_kept']:
        said.append('%d kept (not alike on every owner, or held elsewhere)' % counts['tombstones_kept'])
    if chunks:
        said.append(chunks[2:])
    if counts['changes_trimmed']:
        said.append('%d changes trimmed from the feed' % counts['changes_trimmed'])
    if waiting:
        said.append(waiting_text(waiting))
    return JobResult('gc', dict(counts), dict(waiting), bool(waiting), 'gc: ' + ', '.join(said))


def reap_expired(parts, counts, waiting):
    """Turn, on each partition, the values whose expiry passed more than
    max_clock_skew ago into their tombstones, in place (engines'
    reap_expired, found by an index on the expiry, not by reading every row).
    A tombstone is the same version, so it still supersedes every older copy
    of the key, wherever one turns up; tombstones are reaped as any other.
    The margin: a front end whose clock is behind gc's by less than
    max_clock_skew has seen the value expire too."""
    before = int((time.time() - parts.config.max_clock_skew) * 1e6)
    for name in parts.names:
        try:
            if parts.dry_run:
                counts['expired_reaped'] += parts.call(name, 'count_expired', before)
                continue
            while True:
                found = parts.call(name, 'reap_expired', before, parts.batch)
                counts['expired_reaped'] += found
                parts.meter.wrote(found)
                if found < parts.batch:
                    break
        except PartitionError:
            waiting[name] += 1


def collect_chunks(parts, counts, waiting):
    """Remove, on each partition, the chunks older than chunk_grace that no
    version or hint there points to (engines.SQLEngine.collect_chunks)."""
    if parts.dry_run:
        return   # collect_chunks finds and deletes in one go
    before = int((time.time() - parts.config.chunk_grace) * 1e6)
    for name in parts.names:
        after = ''
        while after is not None:
            try:
                removed, after = parts.call(name, 'collect_chunks', before, parts.batch, after)
            except PartitionError:
                waiting[name] += 1
                break
            counts['chunked_versions_removed'] += removed
            parts.meter.wrote(removed)


def collect_idempotency_records(parts, counts, waiting):
    """Remove the records of writes sent with an Idempotency-Key once their
    window has passed (a retry after that is a new write)."""
    if parts.dry_run:
        return
    before = int((time.time() - IDEMPOTENCY_WINDOW) * 1e6)
    for name in parts.names:
        try:
            removed = parts.call(name, 'collect_idempotency', before)
        except PartitionError:
            waiting[name] += 1
            continue
        if removed:
            counts['idempotency_records_removed'] += removed


def trim_changes(parts, counts, waiting):
    """Trim each partition's change log (the feed's) to [feed] retention and
    max_rows; a feed cursor before what is left gets 410 (engines/feed.py)."""
    if parts.dry_run:
        return
    before = int((time.time() - parts.config.feed_retention) * 1e6)
    for name in parts.names:
        removed = parts.batch
        while removed == parts.batch:
            try:
                removed = parts.call(name, 'trim_changes', before, parts.config.feed_max_rows, parts.batch)
            except PartitionError:
                waiting[name] += 1
                break
            counts['changes_trimmed'] += removed
            parts.meter.wrote(removed)


def reap_tombstones(parts, hinted, counts, waiting):
    """Go over every partition's tombstones older than tombstone_grace, a batch
    at a time; hinted: the keys some partition holds a hint for."""
    before = int((time.time() - parts.config.tombstone_grace) * 1e6)
    seen = set()
    for name in parts.names:
        after = None
        while True:
            try:
                rows = parts.call(name, 'tombstones', before, parts.batch, after)
            except PartitionError:
                waiting[name] += 1
                break
            parts.meter.read(len(rows))
            if not rows:
                break
            after = rows[-1]
            _reap(parts, name, [r for r in rows if (r[1], r[2]) not in seen], hinted, before, counts, waiting)
            seen.update((r[1], r[2]) for r in rows)
            if len(rows) < parts.batch:
                break


def _reap(parts, name, rows, hinted, before, counts, waiting):
    """Delete a key's tombstones from every owner once each owner holds the
    same tombstones (one, or concurrent ones) and nothing else, all written
    before `before`, and no other partition holds a copy of the key that a
    drain or a hand-off could bring back: no row (rebalance moves a
    non-owner's rows to the owners) and no hint."""
    rows_of = collections.Counter((b, k) for _, b, k, _ in rows)
    owners = {key: parts.owners(*key) for key in rows_of}
    keys = {key for key in rows_of if name in owners[key]}   # a non-owner's copy is rebalance's to move
    candidates = keys - hinted
    everywhere = parts.store.engines
    held = parts.read_held({p: candidates for p in everywhere}, waiting) if candidates else {}
    for key in sorted(keys):
        tombstones = {v.version_id for v in held.get(name, {}).get(key, [])
                      if v.deleted and v.modified < before and v.expires < before}
        alike = key in candidates and len(held) == len(everywhere) and bool(tombstones) and all(
            {v.version_id for v in held[p].get(key, [])} == (tombstones if p in owners[key] else set())
            for p in everywhere)
        if not alike:
            counts['tombstones_kept'] += rows_of[key]
            continue
        try:
            for owner in owners[key]:
                parts.change(owner, 'delete_versions', key[0], key[1], sorted(tombstones))
                parts.meter.wrote(len(tombstones))
            counts['tombstones_reaped'] += len(tombstones)
        except PartitionError as e:
            waiting[e.partition] += 1
