"""The quorum machinery: calling partitions, one or many at once, with deadlines.

Every call to a partition goes through Replicas.call, and so through the
failure detector (health.py): known-down partitions are skipped rather than
waited for.  Many calls go out either in threads (fan_out: the next candidate
starts whenever one fails) or from one thread over the engines' send/finish
halves (at_once: every query is sent before any answer is read).
"""
import concurrent.futures
import select
import sys
import time

from kvstore import metrics
from kvstore.engines import REFUSED, PartitionError

POLL_SLICE = 0.01   # seconds a wait for answers goes without looking again (_answered)


class Replicas:
    def __init__(self, engines, health, executor, timeout, read_timeout, on_recovered):
        """timeout: how long a fan-out waits for its calls; read_timeout: for
        the answers of queries sent at once; on_recovered(partition): called
        when a partition believed down answers again."""
        self.engines = engines
        self.health = health
        self.executor = executor
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.on_recovered = on_recovered

    def call(self, name, method, *args):
        """engine.method(*args) on one partition, through the failure detector."""
        if not self.health.available(name, method):
            metrics.replica_refused(name)
            raise PartitionError(name, 'down')
        try:
            return getattr(self.engines[name], method)(*args)
        except PartitionError as e:
            if e.unavailable:
                # Blame the partition that failed: copying chunks reads another.
                self.health.failed(e.partition, e.reason, refused=method if e.reason.startswith(REFUSED) else None)
            raise
        finally:
            metrics.replica_called(name, method, sys.exc_info()[1])
            # Anything but a PartitionError (a refused precondition, say) means
            # the partition answered: that too ends a probe.
            if sys.exc_info()[0] is not PartitionError and self.health.succeeded(name, method):
                self.on_recovered(name)

    def finish(self, name, what, unread):
        """finish_<what> of a query sent to a partition; one that fails is abandoned."""
        try:
            return self.call(name, 'finish_' + what, unread)
        except PartitionError:
            self.engines[name].abandon_query(unread)   # when found down before reading it
            raise

    def abandon(self, sent):
        """Drop the answers of queries sent ({partition: sent}) unread."""
        for p, unread in sent.items():
            self.engines[p].abandon_query(unread)

    def everywhere(self, call):
        """fan_out over every partition, waiting for them all."""
        names = list(self.engines)
        return self.fan_out(names, call, launch=len(names), needed=len(names))

    def fan_out(self, candidates, call, launch, needed, unfinished=None, timeout=None):
        """Run call(partition) on `launch` candidates at once, starting the next
        candidate whenever one fails, until `needed` succeed or none are left.

        call(partition) -> result, raising PartitionError on failure.
        Returns ({partition: result}, {partition: reason}).  Calls still running
        when enough have answered go on in the background; with `unfinished` (a
        dict) they are left there as {future: partition} rather than counted as
        timed out.
        """
        waiting = list(candidates)
        running, results, failures = {}, {}, {}

        def start():
            name = waiting.pop(0)
            running[self.executor.submit(call, name)] = name

        def take(name, result):
            """result() of the call on name, counted; the next candidate starts when it failed."""
            try:
                results[name] = result()
            except PartitionError as e:
                failures[name] = e.reason
                if waiting:
                    start()

        launch = min(launch, len(waiting))
        # When every call launched must answer anyway, the first one runs in
        # this thread: a hand-off to the pool and back costs more than the query.
        inline = waiting.pop(0) if launch and launch <= needed else None
        for _ in range(launch - (inline is not None)):
            start()
        deadline = time.monotonic() + (timeout or self.timeout)
        if inline is not None:
            take(inline, lambda: call(inline))
        while running and len(results) < needed:
            done, _ = concurrent.futures.wait(running, timeout=max(0, deadline - time.monotonic()),
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                break
            for future in done:
                take(running.pop(future), future.result)
        if unfinished is not None and len(results) >= needed:
            unfinished.update(running)
        else:
            for name in running.values():
                failures[name] = 'timed out'
        return results, failures

    def at_once(self, names, what, *args, needed=None, laggards=None, since=None, each=None):
        """engine.send_<what>(*args) on every partition named (each: {partition:
        its own args} instead), then
        finish_<what> on each as its answer arrives: from this thread, with
        every query sent before any answer is read, so that the databases work
        at once without a thread hand-off (or GIL contention) per partition.
        An answer not there within read_timeout counts as timed out.

        With needed, return once that many have answered and the others have
        had as long again as it took since `since` (a monotonic time; without
        it, no longer); the queries still out go into laggards, {partition:
        sent}, for the caller to finish.
        Returns ({partition: result}, {partition: reason})."""
        sent, results, failures = {}, {}, {}
        needed = len(names) if needed is None else needed
        try:
            for p in names:
                try:
                    sent[p] = self.call(p, 'send_' + what, *(args if each is None else each[p]))
                except PartitionError as e:
                    failures[p] = e.reason
            deadline = time.monotonic() + self.read_timeout   # for the answers needed
            grace = None                                      # for the others, once those are in
            while sent:
                if len(results) < needed:
                    # One answer left to wait for: reading it waits as long.
                    answered = list(sent) if len(sent) == 1 else self._answered(sent, deadline)
                    if not answered:
                        self._timed_out(sent, failures)
                else:
                    if grace is None:
                        now = time.monotonic()
                        grace = min(deadline, now + (now - since)) if since is not None else now
                    answered = self._answered(sent, grace)
                    if not answered and laggards is not None:
                        laggards.update(sent)
                        sent = {}
                if not answered:
                    break
                for p in answered:
                    try:
                        results[p] = self.finish(p, what, sent.pop(p))
                    except PartitionError as e:
                        failures[p] = e.reason
        finally:
            self.abandon(sent)   # timed out, or something unexpected was raised
        return results, failures

    def _timed_out(self, sent, failures):
        for p in sent:
            metrics.replica_timed_out(p)
            self.health.failed(p, 'timed out')
            failures[p] = 'timed out'

    def _answered(self, sent, deadline):
        """The partitions whose answers to sent queries have arrived (or whose
        connections failed), waiting for the first until deadline (a
        monotonic time).  When a connection carries the answers of several
        requests' replica writes (kvstore/engines/coalescing.py), another
        thread may read them, and answer this one, just before this one
        begins to wait: then it looks again every POLL_SLICE."""
        while True:
            poller, partitions, shared = select.poll(), {}, False
            for p, unread in sent.items():
                engine = self.engines[p]
                sock = engine.answer_socket(unread)
                if sock is None:
                    return [p]
                partitions[sock.fileno()] = p
                poller.register(sock, select.POLLIN)
                shared = shared or engine.answer_shared(unread)
            left = deadline - time.monotonic()
            events = poller.poll(max(0.0, min(left, POLL_SLICE) if shared else left) * 1000)
            if events or not shared or left <= POLL_SLICE:
                return [partitions[fd] for fd, _ in events]
