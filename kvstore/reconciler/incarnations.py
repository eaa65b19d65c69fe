"""A partition restored from a backup (or rolled back) without `sync.py
new-incarnation`, found by what the other partitions hold.

Every version a partition coordinates carries its actor's counter (a dot),
and the key's other owners keep it.  When the others hold a counter of a
partition's current actor above every one it holds itself, it lost writes it
coordinated: its next dots for those keys are numbered from the time alone,
at or below the lost ones if a front end's clock ran ahead, and its new
writes would be refused (or hide behind the lost ones).  The run then does
what the restore procedure says (docs/sync.md): it mints the partition a new
incarnation, which cannot collide with any dot issued before, and makes
repair compare every arc (what the backup lacks was announced by no change
it holds).  A new incarnation is always safe; a spurious one (a key moved
away by a rebalance, a tombstone reaped on one owner first) costs a clock
entry and a full pass, once: the new actor has no counters anywhere yet.

Comparing counters reads every version that mentions the actor, so it is
done on a full pass, and otherwise only for a partition whose newest change
number went below the one the last run saw (recorded on every partition:
a restored one's own record went back with it).
"""
import json
import logging

from kvstore.engines.rows import INCARNATION
from kvstore.reconciler.results import JobResult

TOPS = 'sync.tops'          # {partition: its newest change number}, as the last run saw them

log = logging.getLogger('kvstore.sync')


def recorded_tops(parts):
    """{partition: the highest newest change number the runs before saw for it},
    as recorded on the other partitions (a restored one's own record went
    back with it)."""
    recorded, _ = parts.each(parts.names, 'get_metadata', [TOPS])
    seen = {}
    for holder, values in recorded.items():
        for name, top in json.loads(values.get(TOPS, '{}')).items():
            if name != holder:
                seen[name] = max(seen.get(name, 0), top)
    return seen


def suspects(parts, seen):
    """The partitions whose counters are compared in this run."""
    if parts.full_pass:
        return sorted(parts.tops)
    return sorted(name for name, top in parts.tops.items() if top < seen.get(name, 0))


def find_restored(parts, names):
    """{partition: (actor, its highest counter, the others' highest)} for each
    of names that the others hold newer counters of."""
    incarnations, _ = parts.each(names, 'get_metadata', [INCARNATION])
    restored = {}
    for name, values in sorted(incarnations.items()):
        if INCARNATION not in values:
            continue
        actor = '%s.%s' % (name, values[INCARNATION])
        counters, _ = parts.each(parts.names, 'highest_counter', actor)
        if name not in counters:
            continue
        own = counters.pop(name)
        if counters and max(counters.values()) > own:
            restored[name] = (actor, own, max(counters.values()))
    return restored


def renew_restored(parts):
    """Before the jobs: a JobResult naming each restored partition found (None:
    none), after minting it a new incarnation (not in a dry run)."""
    seen = recorded_tops(parts)
    restored = find_restored(parts, suspects(parts, seen))
    if not parts.dry_run and parts.tops:   # a partition down now keeps what was seen of it
        tops = json.dumps(dict(seen, **parts.tops), sort_keys=True)
        parts.each(parts.names, 'set_metadata', {TOPS: tops})
    if not restored:
        return None
    said = []
    for name, (actor, own, others) in sorted(restored.items()):
        log.warning('%s was restored from a backup or rolled back without sync.py new-incarnation %s: '
                    'the other partitions hold counter %d of its actor %s, above the %d it holds',
                    name, name, others, actor, own)
        if parts.dry_run:
            said.append('%s would get a new incarnation' % name)
            continue
        renewed = parts.call(name, 'new_incarnation')
        said.append('%s now writes as %s' % (name, renewed))
    parts.full_pass = True
    # Done by the run itself (a dry run would do it: work left); the warning is on stderr.
    return JobResult('restored', {'restored': len(restored)}, {}, parts.dry_run,
                     'restored: %s found restored without new-incarnation; %s; restart the front ends'
                     % (', '.join(sorted(restored)), '; '.join(said)))
