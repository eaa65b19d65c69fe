"""Views: the rings keys are placed by, as the partitions record them.

A view is the ring keys are placed by: the partitions with a weight above 0
and their weights, the replicas and the placement (ring.describe).  sync.py records each new view as an
epoch in the metadata table of every partition ('view': epoch, ring, state;
'view.previous': the ring before it) and marks it complete once every key is
on exactly its new owners.  Front ends only read these records (placement.py
asks which rings other than their own may still place keys).
"""
import hashlib
import json
import time

from kvstore.coordinator.ring import describe

VIEW_NAMES = ('view', 'view.previous', 'view.progress', 'view.history')
VIEW_HISTORY = 50   # epochs whose rings are remembered (by digest), to refuse going back


class ViewConflict(Exception):
    """sync.py will not record the configured ring as a new view (see record_view)."""


def ring_digest(ring):
    return hashlib.sha1(json.dumps(ring, sort_keys=True).encode()).hexdigest()[:12]


def newest_view(views):
    """The view with the highest epoch among read_views() (a completed copy
    of an epoch before one still rebalancing, a retired one before that), or None."""
    return max((v for v in views.values() if v), default=None, key=view_stage)


def view_stage(view):
    """(epoch, complete, retired): how far a view has gone.  Retired: sync.py
    compared every arc once more after the rebalance completed, so that the
    ring before it no longer decides conditional writes (decider.py)."""
    return view['epoch'], view['state'] == 'complete', bool(view.get('retired'))


class ViewRecords:
    def __init__(self, config, replicas):
        self.config = config
        self.replicas = replicas

    def ring_description(self):
        """The configured view, as recorded: {partitions: {name: weight}, replicas,
        placement} (ring.describe; vnodes instead of placement for a vnode ring)."""
        return describe(self.config)

    def read_views(self):
        """{partition: the view it records, or None} over the partitions that answer."""
        found, _ = self.replicas.everywhere(lambda p: self.replicas.call(p, 'get_metadata', VIEW_NAMES))
        views = {}
        for name, values in found.items():
            view = json.loads(values['view']) if 'view' in values else None
            if view is not None:
                view['previous'] = json.loads(values.get('view.previous') or 'null')
                view['progress'] = json.loads(values.get('view.progress') or 'null')
                view['history'] = json.loads(values.get('view.history') or '[]')
            views[name] = view
        return views

    def record_view(self, force=False, dry_run=False):
        """Record the configured view in every partition that answers, as a new
        epoch when it differs from the newest recorded one.  Refuses (ViewConflict)
        a view that looks like a stale configuration unless forced.
        Returns (the newest view, whether a new epoch was recorded, partitions
        that did not answer); with dry_run, only what it would record."""
        views = self.read_views()
        newest, mine = newest_view(views), self.ring_description()
        unreachable = sorted(set(self.replicas.engines) - set(views))
        changed = newest is None or newest['ring'] != mine
        if changed and newest is not None and not force:
            self._refuse_stale(newest, mine)
        if changed:
            newest = self._next_epoch(newest, mine)
        stale = [p for p, view in views.items() if changed or view is None or view_stage(view) != view_stage(newest)]
        if not dry_run:
            self._write_view(newest, stale)
        return newest, changed, unreachable

    def _refuse_stale(self, newest, mine):
        """ViewConflict when the configured ring (mine) should not follow the newest view."""
        earlier = [epoch for epoch, digest in newest['history'] if digest == ring_digest(mine)]
        if earlier or newest['previous'] == mine:
            raise ViewConflict(
                'this configuration is the ring of epoch %d, which epoch %d replaced: is the '
                'configuration here out of date?  (--force-view records it as a new epoch)'
                % (earlier[-1] if earlier else newest['epoch'] - 1, newest['epoch']))
        if newest['state'] != 'complete':
            raise ViewConflict(
                'the rebalance to epoch %d is not complete; finish it with the configuration it '
                'was recorded with before changing the partitions again (or --force-view)'
                % newest['epoch'])
        dropped = sorted(set(newest['ring']['partitions']) - set(self.replicas.engines))
        if dropped:
            raise ViewConflict(
                '%s of epoch %d is not configured, so the keys on it cannot be moved: give it '
                'weight = 0 until sync.py has emptied it, then remove it (or --force-view if it '
                'is lost)' % (' and '.join(dropped), newest['epoch']))

    @staticmethod
    def _next_epoch(newest, mine):
        """The view that records ring `mine` after the newest one (None: the first)."""
        epoch = newest['epoch'] + 1 if newest else 1
        history = (newest['history'] if newest else []) + [[epoch, ring_digest(mine)]]
        return {'epoch': epoch, 'ring': mine,
                'state': 'rebalancing' if newest else 'complete',
                'recorded': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                'previous': newest['ring'] if newest else None, 'progress': None,
                'history': history[-VIEW_HISTORY:]}

    def _write_view(self, view, partitions):
        record = {k: view[k] for k in ('epoch', 'ring', 'state', 'recorded', 'retired') if k in view}
        values = {'view': json.dumps(record, sort_keys=True), 'view.previous': json.dumps(view['previous']),
                  'view.history': json.dumps(view['history'])}
        if view.get('progress') is not None or view['state'] == 'complete':
            values['view.progress'] = json.dumps(view.get('progress'))
        done, failures = self.replicas.fan_out(partitions, lambda p: self.replicas.call(p, 'set_metadata', values),
                                               launch=len(partitions), needed=len(partitions))
        return failures

    def complete_view(self, view):
        """Mark the view's rebalance complete on every partition: True when all took it."""
        view = dict(view, state='complete', progress=None)
        return not self._write_view(view, list(self.replicas.engines))

    def retire_previous(self, view):
        """Mark a complete view retired on every partition: True when all took it."""
        return not self._write_view(dict(view, retired=True), list(self.replicas.engines))

    def record_progress(self, progress):
        """Store a rebalance's progress where rebalance_status() finds it."""
        values = {'view.progress': json.dumps(progress, sort_keys=True)}
        self.replicas.everywhere(lambda p: self.replicas.call(p, 'set_metadata', values))

    def rebalance_status(self):
        """The recorded view and how far its rebalance is, for GET /cluster."""
        views = self.read_views()
        newest = newest_view(views)
        status = {'epoch': newest['epoch'] if newest else None,
                  'state': newest['state'] if newest else 'unrecorded',
                  'recorded': newest['recorded'] if newest else None,
                  'configuration_matches': bool(newest) and newest['ring'] == self.ring_description(),
                  'partitions': {name: (views[name] or {}).get('epoch') if name in views else 'unreachable'
                                 for name in sorted(self.replicas.engines)},
                  'progress': None}
        progress = [v['progress'] for v in views.values()
                    if v and v['progress'] and newest and v['progress'].get('epoch') == newest['epoch']]
        if progress and status['state'] != 'complete':
            status['progress'] = max(progress, key=lambda p: p.get('updated', ''))
        return status
