"""Settling lazy writes: pending markers for writes answered before every replica held them.

A write answered with fewer than N replicas holding its version (w < N) leaves
a pending marker on its coordinator, written before the answer, so that the
reconciler pushes the version on should this process die.  Once every other
replica holds the version (or a hint for it), the marker is dropped; markers
go in one round trip per partition every PENDING_DROP_DELAY seconds.
"""
import concurrent.futures
import logging
import threading

from kvstore.engines import PartitionError

log = logging.getLogger('kvstore.datastore')
PENDING_DROP_DELAY = 0.5    # seconds a settled write's pending marker waits to go out with others


class Settling:
    def __init__(self, replicas):
        self.replicas = replicas
        self._settled, self._settled_lock = {}, threading.Lock()   # see _drop_pending_later

    def close(self):
        """Drop the markers of the writes settled and not yet dropped."""
        for partition in list(self._settled):
            self._drop_settled(partition)

    def settle(self, coordinator, bucket, key, version, laggards, unfinished, landed_so_far, replicate):
        """A write is about to be answered before every replica holds its
        version: with a pending marker on the coordinator, wait for the
        replicas in the background; without one (it failed), before the answer.
        The arguments are those of _wait_for_replicas."""
        settle = (coordinator, bucket, key, version, laggards, unfinished, landed_so_far, replicate)
        if self._mark_pending(coordinator, bucket, key, version):
            self.replicas.executor.submit(self._wait_for_replicas, *settle)
        else:
            self._wait_for_replicas(*settle)

    def _mark_pending(self, coordinator, bucket, key, version):
        try:
            self.replicas.call(coordinator, 'mark_pending', bucket, key, version.version_id)
            return True
        except PartitionError as e:
            log.warning('no pending marker for %s/%s on %s: %s', bucket, key, coordinator, e.reason)
            return False

    def _wait_for_replicas(self, coordinator, bucket, key, version, laggards, unfinished, landed_so_far,
                           replicate):
        """Once every other replica holds the version (or a hint for it), drop
        its pending marker.  laggards: {partition: sent}, replicas' answers
        still to read (one that failed gets a hint: replicate(partition,
        reason)); unfinished: {future: partition}.  A marker left behind (a
        crash, a failure) is the reconciler's to push on."""
        settled, laggards = landed_so_far, dict(laggards)
        try:
            while laggards:
                p, unread = laggards.popitem()
                try:
                    self.replicas.finish(p, 'apply', unread)
                except PartitionError as e:
                    try:
                        replicate(p, e.reason)
                    except PartitionError:
                        settled = False
        finally:
            self.replicas.abandon(laggards)   # only if something unexpected was raised
        done, _ = concurrent.futures.wait(unfinished, timeout=self.replicas.timeout * (1 + version.chunk_count))
        if not settled or len(done) < len(unfinished) or any(f.exception() for f in done):
            log.info('lazy write of %s/%s left pending', bucket, key)
            return
        self._drop_pending_later(coordinator, bucket, key, version.version_id)

    def _drop_pending_later(self, partition, bucket, key, version_id):
        """Queue a settled write's pending marker: the markers go in one round
        trip per partition every PENDING_DROP_DELAY seconds, not one per write.
        A marker this process dies holding is only pushed on once more."""
        with self._settled_lock:
            queue = self._settled.setdefault(partition, [])
            queue.append((bucket, key, version_id))
            if len(queue) > 1:
                return   # a drop is already due
        timer = threading.Timer(PENDING_DROP_DELAY, self._drop_settled, [partition])
        timer.daemon = True
        timer.start()

    def _drop_settled(self, partition):
        with self._settled_lock:
            markers = self._settled.pop(partition, [])
        if not markers:
            return
        try:
            self.replicas.call(partition, 'clear_pending', markers)
        except PartitionError as e:
            log.info('%d pending markers on %s not cleared: %s', len(markers), partition, e.reason)
