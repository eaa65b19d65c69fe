"""The repair job: lazy writes first, then anti-entropy: over the keys the
partitions stored since the last runs (changes.py), or, on a full pass (every
[sync] full_pass_interval, after an upgrade, with --full, or done by
rebalance during a view change), over every arc of the ring
(antientropy.Differ finds where the owners differ).  Either way each owner is
given what it lacks, and what another version it holds supersedes is removed."""
import collections

from kvstore.coordinator.versions import resolve
from kvstore.engines import PartitionError
from kvstore.reconciler.antientropy import Differ
from kvstore.reconciler.changes import follow_changes, record_full_pass
from kvstore.reconciler.lazywrites import push_pending
from kvstore.reconciler.partitions import lacking
from kvstore.reconciler.results import JobResult, tell, waiting_text


def repair(parts, view, compared):
    """compared: rebalance already went over every arc in this run."""
    counts = collections.Counter(pending_pushed=0, keys_repaired=0, versions_copied=0)
    waiting = collections.Counter()
    push_pending(parts, counts, waiting)
    full = compared or parts.full_pass
    if full and not compared:
        arc_list = parts.store.ring.arcs(parts.store.n)
        anti_entropy(parts, arc_list, counts, waiting,
                     lambda done: parts.progress.show('repair', done, len(arc_list)))
    if full and not waiting and not parts.dry_run:
        record_full_pass(parts, parts.tops, parts.checkpoints)
    if not full:
        follow_changes(parts, parts.checkpoints, lambda name, keys: check_keys(parts, name, keys, counts, waiting),
                       counts, waiting)
    said = [tell(parts.dry_run, counts['pending_pushed'], '%d lazy writes pushed', 'would push %d lazy writes')]
    if counts['pending_left']:
        said.append('%d left' % counts['pending_left'])
    if compared and not counts['ranges']:
        said.append('anti-entropy done by rebalance')
    elif not full:
        said.append('%d changed keys compared, ' % counts['keys_followed']
                    + tell(parts.dry_run, counts['keys_repaired'], '%d repaired', 'would repair %d'))
        if counts['keys_moved']:
            said.append(tell(parts.dry_run, counts['keys_moved'], '%d moved to their owners',
                             'would move %d to their owners'))
    else:
        said.append('%d ranges compared, %d differed, ' % (counts['ranges'], counts['differing'])
                    + tell(parts.dry_run, counts['keys_repaired'], '%d keys repaired', 'would repair %d keys'))
    if waiting:
        said.append(waiting_text(waiting))
    unbalanced = view['state'] != 'complete'
    if unbalanced:
        said.append('the rebalance to epoch %d is not complete' % view['epoch'])
    return JobResult('repair', dict(counts), dict(waiting),
                     bool(waiting or counts['pending_left'] or unbalanced), 'repair: ' + ', '.join(said))


def check_keys(parts, name, keys, counts, waiting):
    """Repair keys (changed on `name`) across their owners, and move those
    `name` holds without owning them.  False when a partition did not answer."""
    before = sum(waiting.values())
    owners = {key: parts.owners(*key) for key in keys}
    strays = [key for key in keys if name not in owners[key]]
    if strays:
        try:
            rows = parts.call(name, 'read_many', strays, False)
        except PartitionError:
            waiting[name] += 1
            return False
        parts.meter.read(sum(len(v) for v in rows.values()))
        parts.move(name, {key: versions for key, versions in rows.items() if versions}, counts, waiting)
    by_owners = collections.defaultdict(list)
    for key in keys:
        by_owners[tuple(sorted(owners[key]))].append(key)
    for owner_set, group in sorted(by_owners.items()):
        held = parts.read_held({owner: group for owner in owner_set}, waiting)
        if len(held) >= 2:
            repair_page(parts, held, counts, waiting)
        counts['keys_followed'] += len(group)
    return sum(waiting.values()) == before


def anti_entropy(parts, arc_list, counts, waiting, report):
    """Compare the owners of each arc, repair where they differ; report(arcs done)."""
    differ = Differ(parts.each, parts.meter, page=parts.batch)
    alike = differ.alike_owner_sets(arc_list)
    for done, (lo, hi, owners) in enumerate(arc_list):
        if tuple(owners) in alike:
            differ.stats['ranges'] += 1
        else:
            for held in differ.pages(lo, hi, owners):
                repair_page(parts, held, counts, waiting)
        report(done + 1)
    for name, ranges in differ.down.items():
        waiting[name] += ranges
    counts['ranges'] += differ.stats['ranges']
    counts['differing'] += differ.stats['differing']


def repair_page(parts, held, counts, waiting):
    """held: {owner: {(bucket, key): [Version]}} for one range: give each owner
    the current versions it lacks, and remove from it the versions that
    another one it holds supersedes (left by a front end that died between
    a replica's two write steps)."""
    plan, superseded = [], []
    for key in sorted(set().union(*held.values())):
        versions = resolve(h.get(key, []) for h in held.values())
        missing = lacking(held, key, versions)
        for owner, version in missing:
            source = next(name for name in sorted(held)
                          if any(v.version_id == version.version_id for v in held[name].get(key, [])))
            plan.append((source, owner, key[0], key[1], version.version_id))
        stale = [(owner, key, [v.version_id for v in mine if any(u.supersedes(v) for u in mine)])
                 for owner, mine in ((o, h.get(key, [])) for o, h in sorted(held.items()))]
        superseded += [item for item in stale if item[2]]
        if missing or any(ids for _, _, ids in stale):
            counts['keys_repaired'] += 1
    copied, _ = parts.transfer(plan, waiting)
    counts['versions_copied'] += copied
    for owner, (bucket, key), ids in superseded:
        try:
            parts.change(owner, 'delete_versions', bucket, key, ids)
            parts.meter.wrote(len(ids))
            counts['versions_removed'] += len(ids)
        except PartitionError:
            waiting[owner] += 1
