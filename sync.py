#!/usr/bin/env python3
"""sync.py: the lazy reconciler.  Run it from cron (crontab.example).

    ./sync.py [hints|rebalance|repair|gc|all] [--dry-run] [--json] [--config PATH]
    ./sync.py new-incarnation PARTITION

It makes every replica of every key hold the same versions, and every key sit
on exactly the partitions the configured ring gives it.  `all` (the default)
runs the jobs in this order:

    hints      deliver hinted writes to their target once it is back (to the
               key's owners when the target no longer owns it); a hint is
               deleted only after they committed the version
    rebalance  record the configured ring as a new epoch when it changed, copy
               bucket records to their owners, move every key a partition holds
               but does not own (a partition added, removed with weight 0, or
               reweighted) to its owners and delete it there once every owner
               holds it, compare all arcs while the epoch's rebalance is under
               way, and mark the epoch complete when nothing is left
    repair     push lazy writes (pending markers left by writes with w < N) to
               the replicas that lack them; then anti-entropy (antientropy.py):
               compare the owners of each arc of the ring by digests, descend
               only where they differ, copy what each owner lacks, and remove
               from each owner the versions another it holds supersedes
    gc         remove chunks no version or hint points to (uploads cut off,
               versions superseded or moved away) once older than chunk_grace;
               reap a key's tombstones (one, or concurrent ones) held alike by
               every owner for longer than tombstone_grace, when no other
               partition holds a row or a hint of the key

`new-incarnation PARTITION` is a step of restoring a partition from a backup
(docs/sync.md): the partition mints a new incarnation, so the writes it
coordinates from then on cannot reuse a version counter it issued after the
backup was taken.

Every step copies before it deletes and can be repeated, so a run killed at any
moment loses nothing: the next one finishes the work.  A run holds an advisory
lock on a majority of the partitions; a second run finds it taken, says it is
skipping and exits 0.  [sync] batch_size and rate_limit throttle it.

Exit status: 0 converged (nothing was left undone), 1 work left (a partition
was down, hints wait for their owner, a rebalance is unfinished), 2 error.
"""
import argparse
import collections
import dataclasses
import json
import logging
import shutil
import sys
import time

try:
    from kvstore import configuration
    from kvstore.reconciler.antientropy import Differ, ranges_outside, scan_pages
    from datastore import Datastore, ViewConflict
    from kvstore.engines import PartitionError
    from kvstore.coordinator.versions import reconcile, resolve
except ImportError as e:   # exit 2, not Python's 1 (which means "work left" here)
    sys.stderr.write('sync: %s (run it with the project\'s virtualenv: .venv/bin/python sync.py)\n' % e)
    sys.exit(2)

JOBS = ('hints', 'rebalance', 'repair', 'gc')   # the order `all` runs them in
NEW_INCARNATION = 'new-incarnation'
CONVERGED, WORK_LEFT, ERROR = 0, 1, 2
LOCK_NAME = 'sync'
KEYS_PER_COPY = 32          # keys whose values are read and applied at once
PROGRESS_SECONDS = 2.0      # how often a rebalance records its progress

log = logging.getLogger('kvstore.sync')


def by_owner(owners):
    """{owner: {keys}} from {key: [owners]}."""
    wanted = collections.defaultdict(set)
    for key, names in owners.items():
        for owner in names:
            wanted[owner].add(key)
    return wanted


class Meter:
    """Rows read from and written to partitions (and rows the partitions
    digested without sending them); holds reads plus writes to `rate` rows
    per second when rate > 0."""

    def __init__(self, rate=0.0):
        self.rate = rate
        self.rows_read = self.rows_written = self.rows_digested = 0
        self._next = time.monotonic()

    def read(self, rows):
        self.rows_read += rows
        self._throttle(rows)

    def wrote(self, rows):
        self.rows_written += rows
        self._throttle(rows)

    def digested(self, rows):
        """Rows a partition hashed without sending them: each counts as a tenth of
        a row read towards the rate limit."""
        self.rows_digested += rows
        self._throttle(rows / 10)

    def _throttle(self, rows):
        if self.rate <= 0 or rows <= 0:
            return
        now = time.monotonic()
        self._next = max(self._next, now) + rows / self.rate
        if self._next > now:
            time.sleep(self._next - now)


class Progress:
    """A progress bar on stderr when it is a terminal."""

    def __init__(self, enabled):
        self.enabled = enabled and sys.stderr.isatty()
        self._shown = 0.0

    def show(self, job, done, total, note=''):
        if not self.enabled or time.monotonic() - self._shown < 0.1:
            return
        self._shown = time.monotonic()
        width = 30
        filled = width * done // total if total else width
        line = '%-9s [%s%s] %3d%% %s' % (job, '#' * filled, '.' * (width - filled),
                                        100 * done // total if total else 100, note)
        sys.stderr.write('\r' + line[:shutil.get_terminal_size().columns - 1].ljust(
            shutil.get_terminal_size().columns - 1))
        sys.stderr.flush()

    def clear(self):
        if self.enabled and self._shown:
            sys.stderr.write('\r' + ' ' * (shutil.get_terminal_size().columns - 1) + '\r')
            sys.stderr.flush()
            self._shown = 0.0


@dataclasses.dataclass
class JobResult:
    name: str
    counts: dict
    waiting: dict                 # {partition: how many things wait for it}
    work_left: bool
    summary: str
    error: str = None

    def document(self):
        return {'counts': self.counts, 'waiting': self.waiting, 'work_left': self.work_left,
                'summary': self.summary, 'error': self.error}


def waiting_text(waiting):
    return ', '.join('%d waiting for %s' % (n, name) for name, n in sorted(waiting.items()))


class ClusterLock:
    """An advisory lock held on a majority of the partitions (any two
    majorities share a partition, so two runs never both hold one)."""

    def __init__(self, store):
        self.store = store
        self.handles = {}
        self.busy = []

    def acquire(self):
        """'taken', 'busy' (another run holds it) or 'unreachable' (no majority answered)."""
        names = sorted(self.store.engines)
        self.busy = []
        for name in names:
            try:
                handle = self.store.call(name, 'try_lock', LOCK_NAME)
            except PartitionError:
                continue
            if handle is None:
                self.busy.append(name)
                break
            self.handles[name] = handle
        if self.busy or 2 * len(self.handles) <= len(names):
            self.release()
            return 'busy' if self.busy else 'unreachable'
        return 'taken'

    def release(self):
        for name, handle in self.handles.items():
            self.store.engines[name].unlock(handle)
        self.handles = {}


class Reconciler:
    """The jobs, over one Datastore (its partitions, ring and failure detector)."""

    def __init__(self, store, dry_run=False, progress=None, force_view=False):
        self.store = store
        self.config = store.config
        self.dry_run = dry_run
        self.force_view = force_view
        self.batch = store.config.sync_batch_size
        self.meter = Meter(store.config.sync_rate_limit)
        self.progress = progress or Progress(False)
        self.compared = False     # anti-entropy already went over every arc in this run
        self.view = None          # the newest recorded view, once prepare() ran
        self.view_changed = False
        if dry_run:               # a partition coming back must not trigger a hand-off
            store.hand_off = lambda *args, **kwargs: (0, 0)

    def prepare(self):
        """Record the configured ring as the newest view (a new epoch when it
        changed) before any job runs: raises ViewConflict for a configuration
        that looks out of date, which no job may act on."""
        self.view, self.view_changed, _ = self.store.record_view(force=self.force_view, dry_run=self.dry_run)
        if self.dry_run and self.view_changed:
            self.meter.wrote(len(self.store.engines))

    # -- calling partitions -------------------------------------------------------

    def each(self, names, method, *args):
        """engine.method(*args) on several partitions at once: ({name: result}, {name: reason})."""
        names = list(names)
        if not names:
            return {}, {}
        return self.store._fan_out(names, lambda p: self.store.call(p, method, *args),
                                   launch=len(names), needed=len(names))

    def call(self, name, method, *args):
        return self.store.call(name, method, *args)

    def owners(self, bucket, key):
        return self.store.placement(bucket, key)[0]

    def read_held(self, keys_by_partition, waiting):
        """{partition: {(bucket, key): [Version without value]}} for the partitions
        that answered; those that did not are counted in waiting."""
        held = {}
        for name, keys in keys_by_partition.items():
            try:
                held[name] = self.call(name, 'read_many', sorted(keys), False)
                self.meter.read(sum(len(v) for v in held[name].values()))
            except PartitionError:
                waiting[name] += len(keys)
        return held

    def transfer(self, plan, waiting):
        """Copy versions: plan [(source, target, bucket, key, version_id)].  Values
        are read from the source a few keys at a time and applied on the target
        in one transaction per batch.  Returns (versions stored, {(bucket, key)
        some copy of which failed})."""
        stored, failed = 0, set()
        by_source = collections.defaultdict(list)
        for item in plan:
            by_source[item[0]].append(item)
        for source, items in sorted(by_source.items()):
            keys = sorted({(b, k) for _, _, b, k, _ in items})
            for start in range(0, len(keys), KEYS_PER_COPY):
                chunk = set(keys[start:start + KEYS_PER_COPY])
                todo = [item for item in items if (item[2], item[3]) in chunk]
                if self.dry_run:
                    stored += len(todo)
                    self.meter.wrote(len(todo))
                    continue
                try:
                    full = self.call(source, 'read_many', sorted(chunk))
                except PartitionError:
                    waiting[source] += len(chunk)
                    failed |= chunk
                    continue
                self.meter.read(sum(len(v) for v in full.values()))
                versions = {(b, k, v.version_id): v for (b, k), held in full.items() for v in held}
                by_target = collections.defaultdict(list)
                for _, target, bucket, key, version_id in todo:
                    version = versions.get((bucket, key, version_id))
                    if version is not None:   # else superseded at the source meanwhile
                        by_target[target].append((bucket, key, version))
                for target, copies in sorted(by_target.items()):
                    try:
                        stored += sum(self.call(target, 'apply_many', copies))
                        self.meter.wrote(len(copies))
                    except PartitionError:
                        waiting[target] += len({(b, k) for b, k, _ in copies})
                        failed |= {(b, k) for b, k, _ in copies}
        return stored, failed

    @staticmethod
    def lacking(held_by_partition, key, versions):
        """[(partition, version)]: who lacks which of versions for key."""
        return [(name, v) for name, held in sorted(held_by_partition.items()) for v in versions
                if reconcile(held.get(key, []), v)[1]]

    # -- hints -------------------------------------------------------------------

    def hints(self):
        counts, waiting = collections.Counter(delivered=0, expired=0), collections.Counter()
        found, unreachable = self.each(sorted(self.store.engines), 'hint_counts')
        total = sum(n for held in found.values() for n, _ in held.values())
        expired_before = (time.time() - self.config.hint_window) * 1e6
        done = 0
        for holder in sorted(found):
            for target, (count, _) in sorted(found[holder].items()):
                if self.dry_run:
                    if target in found or target not in self.store.engines:
                        counts['delivered'] += count
                    else:
                        waiting[target] += count
                    continue
                done += self._deliver(holder, target, count, expired_before, counts, waiting)
                self.progress.show('hints', done, total)
        parts = ['%d delivered' % counts['delivered']]
        if counts['expired']:
            parts.append('%d expired (pushed to the other owners)' % counts['expired'])
        if waiting:
            parts.append(waiting_text(waiting))
        if unreachable:
            counts['holders_unreachable'] = len(unreachable)
            parts.append('the hints on %s are unknown (down)' % ', '.join(sorted(unreachable)))
        return JobResult('hints', dict(counts), dict(waiting), bool(waiting or unreachable),
                         'hints: ' + ', '.join(parts) if total or waiting or unreachable else 'hints: none held')

    def _deliver(self, holder, target, count, expired_before, counts, waiting):
        """Deliver holder's hints for target, oldest first; stop at the first that
        cannot be.  A hint goes to its target while the target owns the key, else
        to the key's owners; one older than hint_window whose target is down goes
        to the other owners instead.  Returns the hints dealt with."""
        dealt = 0
        while dealt < count:
            try:
                hints = self.call(holder, 'hints_for', target, self.batch)
            except PartitionError:
                waiting[holder] += count - dealt
                return dealt
            self.meter.read(len(hints))
            for bucket, key, version, created in hints:
                owners = self.owners(bucket, key)
                try:
                    self._put(self.store.hint_destinations(bucket, key, target), bucket, key, version)
                    counts['delivered'] += 1
                except PartitionError as e:
                    if created >= expired_before or target not in owners:
                        waiting[e.partition] += count - dealt
                        return dealt
                    try:
                        self._put([o for o in owners if o != target], bucket, key, version)
                        counts['expired'] += 1
                    except PartitionError as e:
                        waiting[e.partition] += count - dealt
                        return dealt
                try:
                    self.call(holder, 'delete_hint', target, bucket, key, version.version_id)
                except PartitionError:
                    waiting[holder] += count - dealt
                    return dealt
                dealt += 1
            if len(hints) < self.batch:
                break
        return dealt

    def _put(self, destinations, bucket, key, version):
        for name in destinations:
            if not self.dry_run:
                self.call(name, 'apply', bucket, key, version)
            self.meter.wrote(1)

    # -- rebalance ---------------------------------------------------------------

    def rebalance(self):
        counts = collections.Counter(keys_moved=0, versions_copied=0, bucket_records=0)
        waiting = collections.Counter()
        view, changed = self.view, self.view_changed
        arc_list = self.store.ring.arcs(self.store.n)
        self._place_bucket_records(counts, waiting)

        outside = [(name, lo, hi) for name in sorted(self.store.engines)
                   for lo, hi in ranges_outside(arc_list, name)]
        rebalancing = view['state'] != 'complete'
        total = len(outside) + (len(arc_list) if rebalancing else 0)
        reporter = self._progress_reporter(view, total, counts)
        for done, (name, lo, hi) in enumerate(outside):
            self._drain(name, lo, hi, counts, waiting)
            reporter(done + 1, 'moving keys off %s' % name)
        if rebalancing:
            self._anti_entropy(arc_list, counts, waiting, 'rebalance',
                               lambda done: reporter(len(outside) + done, 'comparing owners'))
            self.compared = True

        state = view['state']
        if state == 'rebalancing' and not waiting and not self.dry_run and self.store.complete_view(view):
            state = view['state'] = 'complete'
        epoch = '%sepoch %d %s' % ('would record ' if self.dry_run and changed else '', view['epoch'], state)
        parts = ['%d keys moved to their owners' % counts['keys_moved']]
        if counts['keys_repaired']:
            parts.append('%d keys copied between owners' % counts['keys_repaired'])
        if counts['bucket_records']:
            parts.append('%d bucket records copied' % counts['bucket_records'])
        if waiting:
            parts.append(waiting_text(waiting))
        return JobResult('rebalance', dict(counts, epoch=view['epoch'], state=state),
                         dict(waiting), bool(waiting) or state != 'complete',
                         'rebalance: %s; %s' % (epoch, ', '.join(parts)))

    def _progress_reporter(self, view, total, counts):
        last = [0.0]

        def report(done, note):
            self.progress.show('rebalance', done, total, note)
            if (self.dry_run or view['state'] == 'complete'
                    or (time.monotonic() - last[0] < PROGRESS_SECONDS and done < total)):
                return
            last[0] = time.monotonic()
            self.store.record_progress({
                'epoch': view['epoch'], 'ranges_done': done, 'ranges_total': total,
                'keys_moved': counts['keys_moved'], 'keys_copied': counts['keys_repaired'],
                'updated': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})
        return report

    def _drain(self, name, lo, hi, counts, waiting):
        """Move the keys `name` holds in [lo, hi), which it does not own, to their
        owners; delete each from `name` only once every owner holds it."""
        try:
            count, _ = self.call(name, 'range_digest', lo, hi)
        except PartitionError:
            waiting[name] += 1
            return
        if not count:
            return
        for page, failures in scan_pages(self.each, [name], lo, hi, self.batch):
            if failures:
                waiting[name] += 1
                return
            rows = page[name]
            self.meter.read(sum(len(v) for v in rows.values()))
            owners = {key: self.owners(*key) for key in rows}
            held = self.read_held(by_owner(owners), waiting)
            plan, blocked = [], set()
            for key, versions in rows.items():
                if any(o not in held for o in owners[key]):
                    blocked.add(key)
                    continue
                plan += [(name, owner, key[0], key[1], v.version_id)
                         for owner, v in self.lacking({o: held[o] for o in owners[key]}, key, versions)]
            copied, failed = self.transfer(plan, waiting)
            counts['versions_copied'] += copied
            for key, versions in sorted(rows.items()):
                if key in blocked or key in failed:
                    continue
                if not self.dry_run:
                    try:
                        self.call(name, 'delete_versions', key[0], key[1], [v.version_id for v in versions])
                    except PartitionError:
                        waiting[name] += 1
                        return
                self.meter.wrote(len(versions))
                counts['keys_moved'] += 1

    def _place_bucket_records(self, counts, waiting):
        """Copy each bucket's newest record to the owners of the bucket's point
        that lack it; remove it from other partitions once every owner has it."""
        found, failures = self.each(sorted(self.store.engines), 'bucket_records')
        for name in failures:
            waiting[name] += 1
        newest = {}
        for records in found.values():
            for bucket, (properties, modified) in records.items():
                if bucket not in newest or modified > newest[bucket][1]:
                    newest[bucket] = (properties, modified)
        for bucket, (properties, modified) in sorted(newest.items()):
            owners = self.store.ring.preference_list(bucket, '', self.store.n)
            placed = True
            for owner in owners:
                if owner not in found:
                    placed = False
                elif found[owner].get(bucket, (None, -1))[1] < modified:
                    try:
                        if not self.dry_run:
                            self.call(owner, 'put_bucket_record', bucket, properties, modified)
                        self.meter.wrote(1)
                        counts['bucket_records'] += 1
                    except PartitionError:
                        waiting[owner] += 1
                        placed = False
            if placed and not self.dry_run:
                for name, records in found.items():
                    if name not in owners and bucket in records:
                        try:
                            self.call(name, 'drop_bucket', bucket)
                            self.meter.wrote(1)
                        except PartitionError:
                            waiting[name] += 1

    # -- repair ------------------------------------------------------------------

    def repair(self):
        counts = collections.Counter(pending_pushed=0, keys_repaired=0, versions_copied=0)
        waiting = collections.Counter()
        self._push_pending(counts, waiting)
        if not self.compared:
            arc_list = self.store.ring.arcs(self.store.n)
            self._anti_entropy(arc_list, counts, waiting, 'repair',
                               lambda done: self.progress.show('repair', done, len(arc_list)))
        parts = ['%d lazy writes pushed' % counts['pending_pushed']]
        if counts['pending_left']:
            parts.append('%d left' % counts['pending_left'])
        if self.compared and not counts['ranges']:
            parts.append('anti-entropy done by rebalance')
        else:
            parts.append('%d ranges compared, %d differed, %d keys repaired'
                         % (counts['ranges'], counts['differing'], counts['keys_repaired']))
        if waiting:
            parts.append(waiting_text(waiting))
        unbalanced = self.view['state'] != 'complete'
        if unbalanced:
            parts.append('the rebalance to epoch %d is not complete' % self.view['epoch'])
        return JobResult('repair', dict(counts), dict(waiting),
                         bool(waiting or counts['pending_left'] or unbalanced), 'repair: ' + ', '.join(parts))

    def _push_pending(self, counts, waiting):
        """Push each pending write's key, as its coordinator holds it, to the key's
        other owners; drop the marker once every owner holds it."""
        for name in sorted(self.store.engines):
            after = None
            while True:
                try:
                    markers = self.call(name, 'pending_markers', self.batch, after)
                except PartitionError:
                    waiting[name] += 1
                    break
                self.meter.read(len(markers))
                if not markers:
                    break
                after = markers[-1][:3]
                keys = sorted({(b, k) for b, k, _, _ in markers})
                try:
                    mine = self.call(name, 'read_many', keys, False)
                except PartitionError:
                    waiting[name] += len(markers)
                    break
                self.meter.read(sum(len(v) for v in mine.values()))
                owners = {key: [o for o in self.owners(*key) if o != name] for key in keys}
                held = self.read_held(by_owner(owners), waiting)
                plan, blocked = [], set()
                for key in keys:
                    if any(o not in held for o in owners[key]):
                        blocked.add(key)
                        continue
                    plan += [(name, owner, key[0], key[1], v.version_id)
                             for owner, v in self.lacking({o: held[o] for o in owners[key]}, key, mine[key])]
                copied, failed = self.transfer(plan, waiting)
                counts['versions_copied'] += copied
                for bucket, key, version_id, _ in markers:
                    if (bucket, key) in blocked or (bucket, key) in failed:
                        counts['pending_left'] += 1
                        continue
                    if not self.dry_run:
                        try:
                            self.call(name, 'clear_pending', [(bucket, key, version_id)])
                        except PartitionError:
                            counts['pending_left'] += 1
                            continue
                    self.meter.wrote(1)
                    counts['pending_pushed'] += 1
                if len(markers) < self.batch:
                    break

    def _anti_entropy(self, arc_list, counts, waiting, job, report):
        differ = Differ(self.each, self.meter, page=self.batch)
        for done, (lo, hi, owners) in enumerate(arc_list):
            for held in differ.pages(lo, hi, owners):
                self._repair_page(held, counts, waiting)
            report(done + 1)
        for name, ranges in differ.down.items():
            waiting[name] += ranges
        counts['ranges'] += differ.stats['ranges']
        counts['differing'] += differ.stats['differing']

    def _repair_page(self, held, counts, waiting):
        """held: {owner: {(bucket, key): [Version]}} for one range: give each owner
        the current versions it lacks, and remove from it the versions that
        another one it holds supersedes (left by a front end that died between
        a replica's two write steps)."""
        plan, superseded = [], []
        for key in sorted(set().union(*held.values())):
            versions = resolve(h.get(key, []) for h in held.values())
            missing = self.lacking(held, key, versions)
            for owner, version in missing:
                source = next(name for name in sorted(held)
                              if any(v.version_id == version.version_id for v in held[name].get(key, [])))
                plan.append((source, owner, key[0], key[1], version.version_id))
            stale = [(owner, key, [v.version_id for v in mine if any(u.supersedes(v) for u in mine)])
                     for owner, mine in ((o, h.get(key, [])) for o, h in sorted(held.items()))]
            superseded += [item for item in stale if item[2]]
            if missing or any(ids for _, _, ids in stale):
                counts['keys_repaired'] += 1
        copied, _ = self.transfer(plan, waiting)
        counts['versions_copied'] += copied
        for owner, (bucket, key), ids in superseded:
            try:
                if not self.dry_run:
                    self.call(owner, 'delete_versions', bucket, key, ids)
                self.meter.wrote(len(ids))
                counts['versions_removed'] += len(ids)
            except PartitionError:
                waiting[owner] += 1

    # -- garbage collection ------------------------------------------------------

    def gc(self):
        counts = collections.Counter(tombstones_reaped=0, tombstones_kept=0, chunked_versions_removed=0)
        waiting = collections.Counter()
        self._collect_chunks(counts, waiting)
        chunks = (', chunks of %d versions removed' % counts['chunked_versions_removed']
                  if counts['chunked_versions_removed'] else '')
        if self.view['state'] != 'complete':
            return JobResult('gc', dict(counts), dict(waiting), True, 'gc: tombstones skipped until the '
                             'rebalance to epoch %d is complete%s' % (self.view['epoch'], chunks))
        hinted, unreachable = self.each(sorted(self.store.engines), 'hinted_keys')
        if unreachable:
            return JobResult('gc', dict(counts), dict(waiting, **{n: 1 for n in unreachable}), True,
                             'gc: tombstones skipped, the hints on %s are unknown%s'
                             % (', '.join(sorted(unreachable)), chunks))
        hinted = set().union(*hinted.values())
        before = int((time.time() - self.config.tombstone_grace) * 1e6)
        seen = set()
        for name in sorted(self.store.engines):
            after = None
            while True:
                try:
                    rows = self.call(name, 'tombstones', before, self.batch, after)
                except PartitionError:
                    waiting[name] += 1
                    break
                self.meter.read(len(rows))
                if not rows:
                    break
                after = rows[-1]
                self._reap(name, [r for r in rows if (r[1], r[2]) not in seen], hinted, before, counts, waiting)
                seen.update((r[1], r[2]) for r in rows)
                if len(rows) < self.batch:
                    break
        parts = ['%d tombstones reaped' % counts['tombstones_reaped']]
        if counts['tombstones_kept']:
            parts.append('%d kept (not alike on every owner, or held elsewhere)' % counts['tombstones_kept'])
        if chunks:
            parts.append(chunks[2:])
        if waiting:
            parts.append(waiting_text(waiting))
        return JobResult('gc', dict(counts), dict(waiting), bool(waiting), 'gc: ' + ', '.join(parts))

    def _collect_chunks(self, counts, waiting):
        """Remove, on each partition, the chunks older than chunk_grace that no
        version or hint there points to (engines.SQLEngine.collect_chunks)."""
        if self.dry_run:
            return   # collect_chunks finds and deletes in one go
        before = int((time.time() - self.config.chunk_grace) * 1e6)
        for name in sorted(self.store.engines):
            after = ''
            while after is not None:
                try:
                    removed, after = self.call(name, 'collect_chunks', before, self.batch, after)
                except PartitionError:
                    waiting[name] += 1
                    break
                counts['chunked_versions_removed'] += removed
                self.meter.wrote(removed)

    def _reap(self, name, rows, hinted, before, counts, waiting):
        """Delete a key's tombstones from every owner once each owner holds the
        same tombstones (one, or concurrent ones) and nothing else, all written
        before `before`, and no other partition holds a copy of the key that a
        drain or a hand-off could bring back: no row (rebalance moves a
        non-owner's rows to the owners) and no hint."""
        rows_of = collections.Counter((b, k) for _, b, k, _ in rows)
        owners = {key: self.owners(*key) for key in rows_of}
        keys = {key for key in rows_of if name in owners[key]}   # a non-owner's copy is rebalance's to move
        candidates = keys - hinted
        held = self.read_held({p: candidates for p in self.store.engines}, waiting) if candidates else {}
        for key in sorted(keys):
            tombstones = {v.version_id for v in held.get(name, {}).get(key, [])
                          if v.deleted and v.modified < before}
            alike = key in candidates and len(held) == len(self.store.engines) and bool(tombstones) and all(
                {v.version_id for v in held[p].get(key, [])} == (tombstones if p in owners[key] else set())
                for p in self.store.engines)
            if not alike:
                counts['tombstones_kept'] += rows_of[key]
                continue
            try:
                for owner in owners[key]:
                    if not self.dry_run:
                        self.call(owner, 'delete_versions', key[0], key[1], sorted(tombstones))
                    self.meter.wrote(len(tombstones))
                counts['tombstones_reaped'] += len(tombstones)
            except PartitionError as e:
                waiting[e.partition] += 1

def run(store, jobs, dry_run=False, progress=None, force_view=False, report=None):
    """Run the jobs (names, in JOBS order) over store: ([JobResult], the Meter).
    report(JobResult) is called as each job ends."""
    reconciler = Reconciler(store, dry_run=dry_run, progress=progress, force_view=force_view)
    try:
        reconciler.prepare()
    except ViewConflict as e:
        return [JobResult('view', {}, {}, True, 'view: no job run: %s' % e, error=str(e))], reconciler.meter
    results = []
    for job in JOBS:
        if job not in jobs:
            continue
        written = reconciler.meter.rows_written
        try:
            result = getattr(reconciler, job)()
            if dry_run and reconciler.meter.rows_written > written:
                result.work_left = True   # a real run would change something
        except Exception as e:   # reported; the other jobs still run
            log.exception('%s failed', job)
            result = JobResult(job, {}, {}, True, '%s: failed: %s' % (job, e), error=str(e) or type(e).__name__)
        finally:
            reconciler.progress.clear()
        results.append(result)
        if report:
            report(result)
    return results, reconciler.meter


def exit_status(results):
    if any(r.error for r in results):
        return ERROR
    return WORK_LEFT if any(r.work_left for r in results) else CONVERGED


def new_incarnation(store, partition):
    if partition not in store.engines:
        print('sync: no partition %r is configured' % partition, file=sys.stderr)
        return ERROR
    try:
        actor = store.engines[partition].new_incarnation()
    except PartitionError as e:
        print('sync: %s: %s' % (partition, e.reason), file=sys.stderr)
        return ERROR
    print('sync: %s now writes as %s; restart the front ends so that they use it, then run sync.py'
          % (partition, actor))
    return CONVERGED


STATUS_WORDS = {CONVERGED: 'converged', WORK_LEFT: 'work left', ERROR: 'error'}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='sync.py', description='The lazy reconciler: hand off hints, rebalance, repair '
        'replicas by anti-entropy, collect garbage.  Exit status: 0 converged, 1 work left, 2 error.')
    parser.add_argument('job', nargs='?', default='all', choices=JOBS + ('all', NEW_INCARNATION),
                        help='the job to run (default: all of them, in the order %s); %s PARTITION '
                        'after restoring that partition from a backup' % (', '.join(JOBS), NEW_INCARNATION))
    parser.add_argument('partition', nargs='?', help='the partition, for %s' % NEW_INCARNATION)
    parser.add_argument('--dry-run', action='store_true', help='report what would be done; change nothing')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of summary lines')
    parser.add_argument('--config', help='configuration file (default: $STORE_CONFIG or configuration.cfg)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar, even on a terminal')
    parser.add_argument('--force-view', action='store_true',
                        help='record the configured ring as a new epoch even when it looks stale')
    args = parser.parse_args(argv)
    if (args.job == NEW_INCARNATION) != (args.partition is not None):
        parser.error('a partition is named with %s, and only then' % NEW_INCARNATION)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format='sync: %(message)s')

    started = time.monotonic()

    def summary(result):
        print(result.summary)
        sys.stdout.flush()

    def finish(status, results=(), meter=None, message=None):
        seconds = round(time.monotonic() - started, 3)
        if args.json:
            document = {'status': message and 'skipped' or STATUS_WORDS[status], 'exit': status,
                        'dry_run': args.dry_run, 'seconds': seconds,
                        'jobs': {r.name: r.document() for r in results}}
            if meter is not None:
                document.update(rows_read=meter.rows_read, rows_written=meter.rows_written,
                                rows_digested=meter.rows_digested)
            if message:
                document['message'] = message
            print(json.dumps(document, sort_keys=True))
        else:
            if message:
                print('sync: ' + message)
            elif meter is not None:
                print('sync: %s%s in %.1fs (%d rows read, %d written, %d digested by the partitions)'
                      % (STATUS_WORDS[status], ' (dry run)' if args.dry_run else '', seconds,
                         meter.rows_read, meter.rows_written, meter.rows_digested))
        sys.stdout.flush()
        return status

    try:
        config = configuration.load(args.config)
    except configuration.ConfigError as e:
        print('sync: %s' % e, file=sys.stderr)
        return finish(ERROR, message=str(e))
    store = Datastore(config)
    try:
        if args.job == NEW_INCARNATION:
            return new_incarnation(store, args.partition)
        lock = ClusterLock(store)
        taken = lock.acquire()
        if taken == 'busy':
            return finish(CONVERGED, message='another sync.py holds the lock (on %s); skipping'
                          % ', '.join(lock.busy))
        if taken == 'unreachable':
            return finish(WORK_LEFT, message='work left: fewer than a majority of the partitions '
                          'answered, so the lock cannot be taken')
        try:
            jobs = JOBS if args.job == 'all' else (args.job,)
            results, meter = run(store, jobs, dry_run=args.dry_run,
                                 progress=Progress(not args.json and not args.no_progress),
                                 force_view=args.force_view, report=None if args.json else summary)
        finally:
            lock.release()
        return finish(exit_status(results), results, meter)
    finally:
        store.close()


if __name__ == '__main__':
    try:
        sys.exit(main())
    except Exception:   # exit 2, not Python's 1 (which means "work left" here)
        log.exception('failed')
        sys.exit(ERROR)
