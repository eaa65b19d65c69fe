"""A partition's idle connections, kept for reuse."""
import collections
import contextlib


class Pool:
    """Idle connections kept for reuse; a connection that failed is dropped."""

    def __init__(self, connect, broken, stale=lambda conn: False, size=16):
        self._connect = connect
        self._broken = broken  # errors after which a connection is not reused
        self._stale = stale    # is an idle connection closed at the other end?
        self._size = size
        # A deque's append and pop, and a set's add and discard, are atomic: no
        # lock, no Condition to notify (a queue.Queue's cost, paid twice per query).
        self._idle = collections.deque()
        self._in_use = set()

    def take(self):
        """A connection, to give back with release() or, if it failed, discard()."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                conn = self._connect()
                self._in_use.add(conn)
                return conn
            if not self._stale(conn):
                self._in_use.add(conn)
                return conn
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def connection(self):
        conn = self.take()
        try:
            yield conn
        except BaseException as e:
            if isinstance(e, self._broken) or not isinstance(e, Exception):
                self.discard(conn)
                raise
            self.release(conn)
            raise
        self.release(conn)

    def release(self, conn):
        self._in_use.discard(conn)
        if len(self._idle) < self._size:
            self._idle.append(conn)
        else:
            conn.close()

    def discard(self, conn):
        self._in_use.discard(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def counts(self):
        """{'idle': connections kept for reuse, 'in_use': connections taken}."""
        return {'idle': len(self._idle), 'in_use': len(self._in_use)}

    def close(self):
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return
