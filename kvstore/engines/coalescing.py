"""Replica writes bound for one MariaDB partition, coalesced: group commit at the store's level.

A front end's threads send replica writes (MySQLEngine.send_apply) to a
partition while one of its batches of them is being answered there: those
wait, and go together as the next batch, one compound statement, one
transaction and one commit for all of them (a commit is most of what a
replica write costs the database).  With nothing under way a write goes at
once, alone, as before.

Nothing waits for another thread: whoever needs an answer reads it.  Every
ticket's answer comes on its batch's connection; the owner of any ticket of
the batch, or of a ticket waiting behind it, may read it (once: under the
batch's lock), answer every ticket in it, and send the next batch.
"""
import threading

from kvstore.engines.failures import PartitionError

MAX_BATCH = 16                # replica writes in one transaction at most,
MAX_BATCH_BYTES = 1024 ** 2   # and values of at most this many bytes (but one)


class Ticket:
    """One replica write: its request, then its batch, then its answer (the
    ids its locking read found) or the error that ended its batch."""
    __slots__ = ('request', 'size', 'batch', 'held_ids', 'error', 'abandoned')

    def __init__(self, request, size):
        self.request, self.size = request, size
        self.batch = self.held_ids = self.error = None
        self.abandoned = False

    @property
    def answered(self):
        return self.held_ids is not None or self.error is not None


class Batch:
    """Tickets sent together on one connection (conn, once sent)."""
    __slots__ = ('tickets', 'conn', 'lock', 'answered')

    def __init__(self, tickets):
        self.tickets, self.conn, self.answered = tickets, None, False
        self.lock = threading.Lock()
        for ticket in tickets:
            ticket.batch = self


class ApplyQueue:
    """A partition's replica writes from this process: one batch in flight at
    a time, the writes sent meanwhile waiting to go together as the next.

    send(requests) -> a connection the batch's compound statement was sent on;
    read(conn, count) -> [held ids] of each of its count writes, once committed
    (the connection then back in the pool); discard(conn).  send and read
    raise PartitionError (having dropped the connection) when they fail."""

    def __init__(self, partition, send, read, discard):
        self.partition = partition
        self._send, self._read, self._discard = send, read, discard
        self._lock = threading.Lock()
        self._in_flight = None   # the batch sent and not yet answered
        self._waiting = []       # tickets to go with the next batch

    def send(self, request, size):
        """Send a replica write (size: its value's bytes), or queue it."""
        ticket = Ticket(request, size)
        with self._lock:
            if self._in_flight is not None:
                self._waiting.append(ticket)
                return ticket
            batch = self._start([ticket])
        self._launch(batch)
        return ticket

    def _start(self, tickets):
        """(Under self._lock.)  The next batch in flight, locked until sent."""
        batch = self._in_flight = Batch(tickets)
        batch.lock.acquire()
        return batch

    def _launch(self, batch):
        """Send a batch started (and locked) by _start; one that cannot be sent
        is answered with the failure, and the next one goes."""
        try:
            batch.conn = self._send([t.request for t in batch.tickets])
        except PartitionError as e:
            self._answer(batch, error=e)
            batch.lock.release()
            self._advance(batch)
            return
        batch.lock.release()

    def _answer(self, batch, held_ids=None, error=None):
        for i, ticket in enumerate(batch.tickets):
            ticket.held_ids, ticket.error = (held_ids[i], None) if error is None else (None, error)
        batch.answered, batch.conn = True, None

    def _advance(self, finished):
        """After a batch's answer: the tickets waiting go as the next batch."""
        with self._lock:
            if self._in_flight is not finished:
                return
            waiting = [t for t in self._waiting if not t.abandoned]
            if not waiting:
                self._in_flight, self._waiting = None, []
                return
            taken = 1
            size = waiting[0].size
            while taken < min(len(waiting), MAX_BATCH) and size + waiting[taken].size <= MAX_BATCH_BYTES:
                size += waiting[taken].size
                taken += 1
            batch = self._start(waiting[:taken])
            self._waiting = waiting[taken:]
        self._launch(batch)

    def _read_batch(self, batch):
        """Read a batch's answer unless another thread has; then send the next."""
        with batch.lock:
            if not batch.answered:
                conn = batch.conn
                try:
                    held_ids = self._read(conn, len(batch.tickets))
                except PartitionError as e:
                    self._answer(batch, error=e)
                else:
                    self._answer(batch, held_ids)
        self._advance(batch)

    def finish(self, ticket):
        """The ids the ticket's write found (raising the error that ended its
        batch), reading what it waits for: its batch's answer, or before it
        the answer of the batch in flight."""
        while not ticket.answered:
            batch = ticket.batch or self._in_flight
            if batch is None:   # cannot be: a ticket waits only behind a batch in flight
                raise PartitionError(self.partition, 'replica write lost')
            self._read_batch(batch)
        if ticket.error is not None:
            error = ticket.error   # raised anew in each thread: one exception object per traceback
            raise PartitionError(error.partition, error.reason, error.unavailable)
        return ticket.held_ids

    def socket_batch(self, ticket):
        """The batch whose connection brings what the ticket waits for next;
        None when its answer is here."""
        if ticket.answered:
            return None
        batch = ticket.batch or self._in_flight
        return None if batch is None or batch.answered else batch

    def shared(self, ticket):
        """Whether other threads may read the answer the ticket waits for."""
        return ticket.batch is None or len(ticket.batch.tickets) > 1

    def abandon(self, ticket):
        """A ticket whose answer will not be read.  A batch every ticket of
        which is abandoned is dropped with its connection (unless a thread is
        reading it), and the next one goes."""
        ticket.abandoned = True
        with self._lock:
            if ticket.batch is None:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                return
        batch = ticket.batch
        if not all(t.abandoned or t.answered for t in batch.tickets) or not batch.lock.acquire(blocking=False):
            return
        try:
            if batch.answered:
                return
            self._discard(batch.conn)
            self._answer(batch, error=PartitionError(self.partition, 'abandoned'))
        finally:
            batch.lock.release()
        self._advance(batch)
