"""A TCP proxy that can drop everything: a partition one front end finds
down while another finds it up (test_chaos, test_compare_and_swap)."""
import select
import socket
import threading

TIMEOUT = 5.0   # seconds a relayed connection waits on either side


class BlackHoleProxy:
    """A TCP proxy to a port on 127.0.0.1 that can be black-holed.

    While black-holed nothing is forwarded either way and new connections are
    accepted but never answered, as on a path that drops every packet; the
    connections that lived through it are closed when it ends, as their peers
    would have reset them by then.
    """

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.forwarding, self.stopped = threading.Event(), threading.Event()
        self.forwarding.set()
        self.epoch = 0   # black holes so far
        self.relays = []
        self.accepter = threading.Thread(target=self._accept, name='proxy-accept', daemon=True)
        self.accepter.start()

    def black_hole(self):
        self.forwarding.clear()
        self.epoch += 1

    def heal(self):
        self.forwarding.set()

    def close(self):
        """Stop; returns the threads still running (none, normally)."""
        self.stopped.set()
        self.forwarding.set()
        self.accepter.join(5)
        for relay in self.relays:
            relay.join(5)
        self.listener.close()
        return [t for t in [self.accepter] + self.relays if t.is_alive()]

    def _accept(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:   # the timeout, or the listener closed
                continue
            relay = threading.Thread(target=self._relay, args=(client,), name='proxy-relay', daemon=True)
            self.relays = [r for r in self.relays if r.is_alive()] + [relay]
            relay.start()

    def _relay(self, client):
        upstream = None
        try:
            while not self.forwarding.is_set():   # accepted inside a black hole: not answered
                if self.stopped.is_set():
                    return
                self.forwarding.wait(0.2)
            epoch = self.epoch
            client.settimeout(TIMEOUT)
            upstream = socket.create_connection(('127.0.0.1', self.upstream_port), timeout=TIMEOUT)
            while not self.stopped.is_set():
                if not self.forwarding.is_set():
                    self.forwarding.wait(0.2)
                    continue
                if self.epoch != epoch:
                    return
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                if not self.forwarding.is_set() or self.epoch != epoch:
                    continue   # black-holed while select waited: what came stays unread
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()
