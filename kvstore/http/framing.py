"""HTTP/1.1 message framing (RFC 9112): what the store accepts as a request
head and how it reads a request body.

uWSGI's HTTP router (serve.py) passes on whatever Content-Length and
Transfer-Encoding a client sends, merging repeated fields into one value; the
checks here refuse every framing the router and the store could disagree
about before anything is read or stored.  Under uWSGI the body is read raw
from the router's connection and chunked bodies are decoded here: uWSGI's own
chunked reader accepts any letters as a chunk size (`zz` is an empty last
chunk) and holds each chunk whole in memory.  A client must keep a body coming
at a minimum pace (BodyPace) or it ends with 408 and frees the thread.
"""
import ctypes
import errno
import os
import re
import select
import socket
import struct
import sys
import time

from kvstore.errors import (BadFraming, HeaderFieldsTooLarge, IncompleteBody, RequestTimeout, UnsupportedTransferCoding,
                    UriTooLong)

MAX_HEADER_FIELDS = 100
MAX_URI_BYTES = 16 * 1024
MAX_LINE_BYTES = 4096          # a chunk-size line or a trailer field
HTTP_VERSIONS = ('HTTP/1.0', 'HTTP/1.1')
READ_BYTES = 64 * 1024
_DIGITS = re.compile(r'[0-9]+')
# RFC 9112 7.1: chunk-size [ chunk-ext ]; an extension is ignored.
_CHUNK_SIZE = re.compile(rb'([0-9A-Fa-f]{1,15})[ \t]*(;[\t\x20-\x7e]*)?')


# -- the request head --------------------------------------------------------------

def check_request_head(env):
    """Refuse a request line or framing fields the store cannot trust (before any body is read)."""
    if env.get('SERVER_PROTOCOL') not in HTTP_VERSIONS:
        # uWSGI's router splits the request line at its first two spaces: a
        # raw space in the target leaves the rest in the protocol.
        raise BadFraming('the request line must be METHOD SP request-target SP HTTP/1.x')
    uri = env.get('REQUEST_URI')
    if uri is None:
        uri = env.get('PATH_INFO', '') + ('?' + env['QUERY_STRING'] if env.get('QUERY_STRING') else '')
    if len(uri) > MAX_URI_BYTES:
        raise UriTooLong('the request target takes at most %d bytes' % MAX_URI_BYTES, limit=MAX_URI_BYTES)
    if sum(1 for name in env if name.startswith('HTTP_')) > MAX_HEADER_FIELDS:
        raise HeaderFieldsTooLarge('a request carries at most %d header fields' % MAX_HEADER_FIELDS,
                                   limit=MAX_HEADER_FIELDS)
    body_framing(env)


def answer_in_http11(env):
    """Make uWSGI start the response's status line with HTTP/1.1 when the
    request's protocol is not one: it writes the request's protocol there, and
    a request line with a raw space would have it echo `b HTTP/1.1 400 ...`."""
    if env.get('SERVER_PROTOCOL') not in HTTP_VERSIONS and 'uwsgi.version' in env:
        _uwsgi_functions().answer_as_http11(env.get('SERVER_PROTOCOL', ''))


def body_framing(env):
    """The body's declared length (an int), 'chunked', or 0 when it has none.

    RFC 9112 6.3: a Content-Length must be digits, once (uWSGI's router joins
    repeated fields with ', '); it may not come with Transfer-Encoding; the
    only transfer coding the store decodes is chunked, once."""
    declared = env.get('CONTENT_LENGTH')
    if declared == '' and 'uwsgi.version' not in env:
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

    def wait_readable(self, fd):
        allowed = self.allowed()
        started = time.monotonic()
        ready = allowed > 0 and select.select([fd], [], [], allowed)[0]
        self.waited += time.monotonic() - started
        if not ready:
            raise RequestTimeout('the body did not arrive in time: at least one byte every %g s and %d bytes '
                                 'a second on average are needed' % (self.timeout, self.min_rate))


class _Uwsgi:
    """uWSGI's own C functions for the current request's raw body: the bytes
    its parser read past the request head first, then the connection's."""

    def __init__(self):
        library = sys.modules.get('pyuwsgi')
        lib = ctypes.CDLL(library.__file__ if library else None, use_errno=True)
        self.current = [lib.threaded_current_wsgi_req, lib.simple_current_wsgi_req]
        for function in self.current:
            function.restype, function.argtypes = ctypes.c_void_p, []
        self.read_body = lib.uwsgi_proto_base_read_body
        self.read_body.restype = ctypes.c_ssize_t
        self.read_body.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]

    def current_request(self):
        # With one thread a worker keeps its request in a global instead.
        return self.current[0]() or self.current[1]()

    def answer_as_http11(self, protocol):
        """Point the current request's protocol (which uWSGI writes at the
        head of the status line) at 'HTTP/1.1'.

        struct wsgi_request keeps it as `char *protocol; uint16_t protocol_len`
        at an offset that depends on how uWSGI was built, so the field is found
        by its value: the pointer whose bytes are the request's protocol.
        Candidate pointers are read through /proc/self/mem, where a bad address
        is an error rather than a crash."""
        wanted = protocol.encode('latin-1')
        request = self.current_request()
        if not request or not 0 < len(wanted) < 65536:
            return
        with open('/proc/self/mem', 'rb', buffering=0) as memory:
            head = os.pread(memory.fileno(), STRUCT_SCAN_BYTES, request)
            for offset in range(0, len(head) - _POINTER_AND_LENGTH.size, 8):
                pointer, length = _POINTER_AND_LENGTH.unpack_from(head, offset)
                if length != len(wanted) or pointer < 4096:
                    continue
                try:
                    if os.pread(memory.fileno(), length, pointer) != wanted:
                        continue
                except OSError:
                    continue
                _POINTER_AND_LENGTH.pack_into((ctypes.c_char * 10).from_address(request + offset), 0,
                                              ctypes.addressof(_HTTP11), len(_HTTP11.value))
                return


# Scanned for the protocol field: the head of struct wsgi_request.
STRUCT_SCAN_BYTES = 1024
_POINTER_AND_LENGTH = struct.Struct('@PH')
_HTTP11 = ctypes.create_string_buffer(b'HTTP/1.1')
_uwsgi = None


def _uwsgi_functions():
    global _uwsgi
    if _uwsgi is None:
        _uwsgi = _Uwsgi()
    return _uwsgi


class UwsgiConnection:
    """The raw bytes of the body on uWSGI's connection from the router."""

    def __init__(self, env, pace):
        self.request = _uwsgi_functions().current_request()
        self.fd = env['wsgi.input'].fileno()
        self.pace = pace
        self.buffer = ctypes.create_string_buffer(READ_BYTES)

    def read(self, size):
        """Up to size bytes as they arrive; b'' when the connection ends."""
        size = min(size, READ_BYTES)
        while True:
            n = _uwsgi.read_body(self.request, self.buffer, size)
            if n > 0:
                self.pace.received += n
                return ctypes.string_at(self.buffer, n)
            if n == 0:
                return b''
            if ctypes.get_errno() not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return b''   # the router dropped the connection
            self.pace.wait_readable(self.fd)


class WsgiInput:
    """Another WSGI server's wsgi.input (tests, the development server): it
    frames and decodes the body itself."""

    def __init__(self, env):
        self.input = env['wsgi.input']

    def read(self, size):
        return self.input.read(size)


class ChunkedDecoder:
    """RFC 9112 7.1 chunked coding, strictly: hex sizes, CRLF after each
    chunk's data, a last chunk and trailer section ended by an empty line.
    A chunk of any size streams through in pieces."""

    def __init__(self, connection):
        self.connection = connection
        self.buffer = b''
        self.left = 0        # data bytes of the current chunk not yet returned
        self.done = False

    def read(self, size):
        while not self.left:
            if self.done:
                return b''
            self.next_chunk()
        if not self.buffer:
            self.fill()
        data = self.buffer[:min(size, self.left)]
        self.buffer = self.buffer[len(data):]
        self.left -= len(data)
        if not self.left:
            self.expect(b'\r\n', 'a chunk\'s data must end with CRLF')
        return data

    def next_chunk(self):
        line = self.line()
        match = _CHUNK_SIZE.fullmatch(line)
        if not match:
            raise BadFraming('a chunk size is hexadecimal digits')
        self.left = int(match.group(1), 16)
        if not self.left:
            self.trailers()
            self.done = True

    def trailers(self):
        for _ in range(MAX_HEADER_FIELDS + 1):
            line = self.line()
            if not line:
                return
            if b':' not in line:
                raise BadFraming('a trailer field is name: value')
        raise BadFraming('a chunked body ends with at most %d trailer fields' % MAX_HEADER_FIELDS)

    def line(self):
        while b'\r\n' not in self.buffer[:MAX_LINE_BYTES]:
            if len(self.buffer) > MAX_LINE_BYTES or b'\n' in self.buffer:
                raise BadFraming('chunked framing lines end with CRLF and are at most %d bytes' % MAX_LINE_BYTES)
            self.fill()
        line, self.buffer = self.buffer.split(b'\r\n', 1)
        return line

    def expect(self, wanted, problem):
        while len(self.buffer) < len(wanted):
            self.fill()
        if self.buffer[:len(wanted)] != wanted:
            raise BadFraming(problem)
        self.buffer = self.buffer[len(wanted):]

    def fill(self):
        data = self.connection.read(READ_BYTES)
        if not data:
            raise IncompleteBody('the chunked body ended before its last chunk')
        self.buffer += data


class RequestBody:
    """The request body as a stream, framed by body_framing: never longer than
    `limit` (too_large() is raised once it would be), and a body that ends
    early is an error, never a shorter value."""

    def __init__(self, env, limit, too_large, timeout, min_rate):
        self.framing = body_framing(env)
        self.limit, self.too_large = limit, too_large
        if self.framing != 'chunked' and self.framing > limit:
            raise too_large()
        if 'uwsgi.version' in env:
            connection = UwsgiConnection(env, BodyPace(timeout, min_rate))
        else:
            connection = WsgiInput(env)
        self.source = ChunkedDecoder(connection) if self.framing == 'chunked' and 'uwsgi.version' in env \
            else connection
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


# -- the connection from uWSGI's router ----------------------------------------------

_LINGER_OFF = struct.pack('ii', 0, 0)
_RESET_ON_CLOSE = struct.pack('ii', 1, 0)


def reset_if_worker_dies(env):
    """While a request is handled, a worker killed mid-request resets its
    connection to the router, which then closes the client's at once; a
    plain close (FIN) would read, on a kept-alive connection, as a finished
    response, and the client would wait for one until --http-timeout.
    Returns what restores a graceful close once the response is written."""
    if 'uwsgi.version' not in env:
        return lambda: None
    fd = env['wsgi.input'].fileno()
    _set_linger(fd, _RESET_ON_CLOSE)
    return lambda: _set_linger(fd, _LINGER_OFF)


def _set_linger(fd, value):
    # setsockopt(2) itself: a socket object made for the call would first ask
    # the descriptor its family and type (a tenth of a GET's CPU, profiled).
    # A failure (the router already went away) is ignored.
    _libc_setsockopt(fd, socket.SOL_SOCKET, socket.SO_LINGER, value, len(value))


_libc_setsockopt = ctypes.CDLL(None, use_errno=True).setsockopt
_libc_setsockopt.restype = ctypes.c_int
_libc_setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
