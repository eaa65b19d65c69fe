"""The reconciler's cluster lock: one run at a time, across hosts."""
from kvstore.engines import PartitionError

LOCK_NAME = 'sync'


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
