"""Anti-entropy that follows the writes: each partition numbers the version
rows it stores (the change sequence, objects.seq), and a run reads only the
rows stored since the runs before it; repair.py compares each such key
across its owners and repairs it, and moves it to its owners when the
partition holding it does not own it.  A run over a store nobody wrote to reads one index entry
per partition; a run after K writes reads about K keys (twice: see below).

Where each partition stands is recorded in its own metadata (CHECKPOINT):
{"done": the change number below which every row was looked at, "marks":
[[the last change number a run saw, when]], "full": when the last full pass
ended}.  On MariaDB a number is taken when a row is inserted and seen when its
transaction commits, so a run can see number 11 while 10 is still on its way;
a run therefore starts after the mark of a run at least the engine's
changes_settle() seconds older (60: its transactions have all committed
since), and so reads again what the run before it read.  SQLite's writes are
serialized, its numbers follow the commits, and it settles at once.  The full pass (every arc digested, as before) still runs
every [sync] full_pass_interval, to find what no write announced: a replica
restored from a backup, a row changed behind the store's back, bit rot.
"""
import json
import time

from kvstore.engines import PartitionError
from kvstore.engines.rows import CHANGES_CHECKPOINT as CHECKPOINT


def read_checkpoints(parts):
    """{partition: its checkpoint, or None} over the partitions that answer."""
    found, _ = parts.each(parts.names, 'get_metadata', [CHECKPOINT])
    return {name: json.loads(values[CHECKPOINT]) if CHECKPOINT in values else None
            for name, values in found.items()}


def full_pass_due(parts, checkpoints):
    """A full pass is due when a partition has no checkpoint (never followed,
    just upgraded, or restored: what it lacks is in no change), or, once
    every partition answers, when its last one is older than full_pass_interval."""
    if any(c is None for c in checkpoints.values()):
        return True
    if set(checkpoints) != set(parts.names):
        return False   # a partition is down: the changes of the others are followed
    horizon = time.time() - parts.config.sync_full_pass_interval
    return any(c.get('full', 0) <= horizon for c in checkpoints.values())


def record_full_pass(parts, tops, checkpoints):
    """After a full pass over every arc: each partition is done up to the
    change number it had when the run started (tops)."""
    now = time.time()
    for name, top in tops.items():
        previous = checkpoints.get(name) or {}
        _write(parts, name, {'done': max(top, previous.get('done', 0)), 'marks': [], 'full': now})


def follow_changes(parts, checkpoints, check, counts, waiting):
    """check(name, keys) -> False when it could not finish: called with the
    keys each partition stored since its checkpoint, a batch at a time; the
    checkpoint moves on once all of a partition's were checked."""
    for name in sorted(checkpoints):
        checkpoint = checkpoints[name] or {'done': 0, 'marks': [], 'full': 0}
        after = seen = checkpoint['done']
        complete, started = True, time.time()
        try:
            settle = parts.call(name, 'changes_settle')
        except PartitionError:
            waiting[name] += 1
            continue
        while True:
            try:
                rows = parts.call(name, 'changes', after, parts.batch)
            except PartitionError:
                waiting[name] += 1
                complete = False
                break
            parts.meter.read(len(rows))
            counts['changes_read'] += len(rows)
            if not rows:
                break
            if not check(name, sorted({(b, k) for _, b, k in rows})):
                complete = False
                break
            after = seen = rows[-1][0]
            if len(rows) < parts.batch:
                break
        if complete:
            marks = checkpoint['marks'] + [[seen, started]]
            settled = [seq for seq, when in marks if when <= started - settle]
            done = max([checkpoint['done']] + settled)
            _write(parts, name, dict(checkpoint, done=done, marks=[m for m in marks if m[0] > done][-10:]))


def _write(parts, name, checkpoint):
    if not parts.dry_run:
        try:
            parts.call(name, 'set_metadata', {CHECKPOINT: json.dumps(checkpoint, sort_keys=True)})
        except PartitionError:
            pass   # the next run reads again from the checkpoint before
