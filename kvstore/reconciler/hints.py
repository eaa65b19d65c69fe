"""The hints job: hand hinted writes back to their target once it answers."""
import collections
import time

from kvstore.engines import PartitionError
from kvstore.reconciler.results import JobResult, tell, waiting_text


def deliver_hints(parts):
    """Deliver every partition's hints, oldest first: a JobResult."""
    counts, waiting = collections.Counter(delivered=0, expired=0), collections.Counter()
    found, unreachable = parts.each(parts.names, 'hint_counts')
    total = sum(n for held in found.values() for n, _ in held.values())
    expired_before = (time.time() - parts.config.hint_window) * 1e6
    done = 0
    for holder in sorted(found):
        for target, (count, _) in sorted(found[holder].items()):
            if parts.dry_run:
                if target in found or target not in parts.store.engines:
                    counts['delivered'] += count
                else:
                    waiting[target] += count
                continue
            done += _deliver(parts, holder, target, count, expired_before, counts, waiting)
            parts.progress.show('hints', done, total)
    parts_said = [tell(parts.dry_run, counts['delivered'], '%d delivered', 'would deliver %d')]
    if counts['refused']:
        parts_said.append('%d refused and kept: their owners hold versions claiming to have seen them that '
                          'their coordinators never held (a partition restored or rolled back without '
                          '`sync.py new-incarnation`? see docs/sync.md and the log)' % counts['refused'])
    if counts['expired']:
        parts_said.append('%d expired (pushed to the other owners)' % counts['expired'])
    if waiting:
        parts_said.append(waiting_text(waiting))
    if unreachable:
        counts['holders_unreachable'] = len(unreachable)
        parts_said.append('the hints on %s are unknown (down)' % ', '.join(sorted(unreachable)))
    summary = 'hints: ' + ', '.join(parts_said) if total or waiting or unreachable else 'hints: none held'
    return JobResult('hints', dict(counts), dict(waiting), bool(waiting or unreachable), summary)


def _deliver(parts, holder, target, count, expired_before, counts, waiting):
    """Deliver holder's hints for target, oldest first; stop at the first that
    cannot be.  A hint goes to its target while the target owns the key, else
    to the key's owners; one older than hint_window whose target is down goes
    to the other owners instead.  Returns the hints dealt with."""
    dealt = 0
    while dealt < count:
        try:
            hints = parts.call(holder, 'hints_for', target, parts.batch)
        except PartitionError:
            waiting[holder] += count - dealt
            return dealt
        parts.meter.read(len(hints))
        refused = 0
        for bucket, key, version, created in hints:
            try:
                outcome = _hand_back(parts, target, bucket, key, version, created < expired_before)
                counts[outcome] += 1
                if outcome == 'refused':
                    waiting[target] += 1
                    refused += 1
                else:
                    parts.call(holder, 'delete_hint', target, bucket, key, version.version_id)
            except PartitionError as e:
                waiting[e.partition] += count - dealt
                return dealt
            dealt += 1
        if len(hints) < parts.batch or refused == len(hints):
            break
    return dealt


def _hand_back(parts, target, bucket, key, version, expired):
    """Apply one hinted version where it belongs: 'delivered', 'expired' (an
    expired hint whose target is down, pushed to the key's other owners) or
    'refused' (a destination holds a version claiming to have seen it that its
    coordinator never held: the hint is kept, HintedHandoff.refused_anywhere).
    Raises PartitionError when neither could be done."""
    owners = parts.owners(bucket, key)
    try:
        return _put(parts, parts.store.hint_destinations(bucket, key, target), bucket, key, version) or 'delivered'
    except PartitionError:
        if not expired or target not in owners:
            raise
    return _put(parts, [o for o in owners if o != target], bucket, key, version) or 'expired'


def _put(parts, destinations, bucket, key, version):
    """'refused', or None once every destination holds the version."""
    if not parts.dry_run:
        parts.meter.wrote(len(destinations))
        if parts.store.handoff.refused_anywhere(bucket, key, version, destinations):
            return 'refused'
    return None
