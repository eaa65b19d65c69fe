"""HTTP/1.1 message framing (RFC 9112): what the store accepts as a request
head and how it reads a request body.

Granian (serve.py) parses the request in Rust (hyper): a malformed request
line, header field or chunk never reaches the store, and chunked bodies are
decoded there.  It passes on the Content-Length and Transfer-Encoding fields
a client sends (repeated ones joined with ', ' by kvstore/http/gateway.py);
the checks here refuse every framing that the store and a proxy in front of
it could disagree about, before anything is read or stored.  A client must
keep a body coming at a minimum pace (BodyPace) or it ends with 408; the
gateway waits for it on the event loop, not in a thread.
"""
import re

from kvstore.errors import (BadFraming, HeaderFieldsTooLarge, IncompleteBody, RequestTimeout, UnsupportedTransferCoding,
                    UriTooLong)

MAX_HEADER_FIELDS = 100
MAX_URI_BYTES = 16 * 1024
HTTP_VERSIONS = ('HTTP/1.0', 'HTTP/1.1')
READ_BYTES = 64 * 1024
_DIGITS = re.compile(r'[0-9]+')


# -- the request head --------------------------------------------------------------

def check_request_head(env):
    """Refuse a request line or framing fields the store cannot trust (before
    any body is read); else the body's framing (body_framing)."""
    if env.get('SERVER_PROTOCOL') not in HTTP_VERSIONS:
        raise BadFraming('the request line must be METHOD SP request-target SP HTTP/1.x')
    uri = env.get('REQUEST_URI')
    if uri is None:
        uri = env.get('PATH_INFO', '') + ('?' + env['QUERY_STRING'] if env.get('QUERY_STRING') else '')
    if len(uri) > MAX_URI_BYTES:
        raise UriTooLong('the request target takes at most %d bytes' % MAX_URI_BYTES, limit=MAX_URI_BYTES)
    if len(env) > MAX_HEADER_FIELDS and sum(1 for name in env if name.startswith('HTTP_')) > MAX_HEADER_FIELDS:
        raise HeaderFieldsTooLarge('a request carries at most %d header fields' % MAX_HEADER_FIELDS,
                                   limit=MAX_HEADER_FIELDS)
    return body_framing(env)


def body_framing(env):
    """The body's declared length (an int), 'chunked', or 0 when it has none.

    RFC 9112 6.3: a Content-Length must be digits, once (repeated fields
    arrive joined with ', '); it may not come with Transfer-Encoding; the
    only transfer coding the store decodes is chunked, once."""
    declared = env.get('CONTENT_LENGTH')
    if declared == '' and 'kvstore.gateway' not in env:
        declared = None   # (a WSGI server may set it empty for a request without a body)
    coding = env.get('HTTP_TRANSFER_ENCODING')
    if coding is not None:
        if declared is not None:
            raise BadFraming('a request has Content-Length or Transfer-Encoding, not both')
        codings = [c.strip().lower() for c in coding.split(',')]
        if codings == ['chunked']:
            return 'chunked'
        if codings.count('chunked') > 1 or 'chunked' in codings[:-1]:
            raise BadFraming('chunked is applied once, as the last transfer coding')
        raise UnsupportedTransferCoding('the only transfer coding the store decodes is chunked')
    if declared is None:
        return 0
    if not _DIGITS.fullmatch(declared):
        raise BadFraming('Content-Length must be one decimal number')
    return int(declared)


# -- reading the body -------------------------------------------------------------

class BodyPace:
    """How long the store waits for a client's body.

    Each wait for more bytes lasts at most `timeout` seconds, and the time
    spent waiting in all may not exceed timeout + received / min_rate: after a
    grace of `timeout`, the body must average min_rate bytes a second (0: no
    average).  Time the store spends storing what it read does not count."""

    def __init__(self, timeout, min_rate):
        self.timeout, self.min_rate = timeout, min_rate
        self.waited = 0.0
        self.received = 0

    def allowed(self):
        """Seconds the next wait may last."""
        if not self.min_rate:
            return self.timeout
        return min(self.timeout, self.timeout + self.received / self.min_rate - self.waited)

    def timed_out(self):
        return RequestTimeout('the body did not arrive in time: at least one byte every %g s and %d bytes '
                              'a second on average are needed' % (self.timeout, self.min_rate))


class GatewayInput:
    """The body as kvstore/http/gateway.py receives it, its failures the store's errors."""

    def __init__(self, env, framing):
        self.input, self.framing = env['wsgi.input'], framing

    def read(self, size):
        from kvstore.http.gateway import BodyBroken, BodyTimeout
        try:
            return self.input.read(size)
        except BodyTimeout:
            raise self.input.pace.timed_out() from None
        except BodyBroken:
            if self.framing == 'chunked':
                raise BadFraming('the chunked body was malformed or ended before its last chunk') from None
            raise IncompleteBody('the body ended before its Content-Length') from None


class WsgiInput:
    """Another WSGI server's wsgi.input (tests, the development server)."""

    def __init__(self, env):
        self.input = env['wsgi.input']

    def read(self, size):
        return self.input.read(size)


class RequestBody:
    """The request body as a stream, framed by body_framing: never longer than
    `limit` (too_large() is raised once it would be), and a body that ends
    early is an error, never a shorter value."""

    def __init__(self, env, limit, too_large):
        self.framing = body_framing(env)
        self.limit, self.too_large = limit, too_large
        if self.framing != 'chunked' and self.framing > limit:
            raise too_large()
        self.source = GatewayInput(env, self.framing) if 'kvstore.gateway' in env else WsgiInput(env)
        self.left = None if self.framing == 'chunked' else self.framing
        self.total = 0

    def read(self, size):
        if self.left is not None:
            size = min(size, self.left)
            if size <= 0:
                return b''
        data = self.source.read(size)
        self.total += len(data)
        if self.total > self.limit:
            raise self.too_large()
        if self.left is not None:
            if not data:
                raise IncompleteBody('the body ended before its Content-Length')
            self.left -= len(data)
        return data

    def discard(self, most):
        """Read off and drop up to `most` more bytes of the body, past any
        limit: True when the body ended within them."""
        dropped = 0
        while dropped <= most:
            size = READ_BYTES if self.left is None else min(READ_BYTES, self.left)
            if size <= 0:
                return True
            data = self.source.read(size)
            if not data:
                return self.left is None
            dropped += len(data)
            if self.left is not None:
                self.left -= len(data)
        return False

    def read_all(self):
        parts = []
        while True:
            data = self.read(READ_BYTES)
            if not data:
                return b''.join(parts)
            parts.append(data)
