"""The store's WSGI application served over ASGI (serve.py runs it under
Granian): the request body is read on the worker's event loop, and the WSGI
application runs in a thread of a pool only once the body is there, or its
first PREFETCH_BYTES are.

Granian's own WSGI interface reads the body in the application's thread, with
no limit on how long a read may wait (a client trickling a byte a second holds
a thread for as long as it likes), and reads a body that ends in an error as
one that ended.  Here a slow body waits on the event loop at no thread's cost,
within the BodyPace that the store's configuration sets (kvstore/http/framing.py),
and a body that breaks off is an error the application sees.

A request with `Expect: 100-continue` is the exception: its client waits for
the application's word before it sends the body (HTTP sends 100 Continue once
the application starts reading), so the application is called at once.

A request that waits (the change feed's long poll and streams) does not wait
in a thread either: the application asks, through the environ's
`kvstore.poll` (a Poll), to be run again after a delay, and the wait is a
sleep on the event loop.  A long poll's answer is the one of the run that
asks for no more; a stream's runs each add to one body, sent as they end.
"""
import asyncio
import queue
import sys
import threading
import urllib.parse

PREFETCH_BYTES = 64 * 1024
STREAM_AFTER_BYTES = 64 * 1024


class BodyTimeout(Exception):
    """The client did not keep its body coming at the pace it must."""


class BodyBroken(Exception):
    """The body ended before its framing said it would, or its framing was malformed."""


class Body:
    """A request body as it arrives, read on the event loop and handed to the
    application's thread."""

    def __init__(self, receive, loop, pace):
        self.receive, self.loop, self.pace = receive, loop, pace
        self.buffer = bytearray()
        self.ended = False          # the last of the body has arrived
        self.failure = None         # BodyTimeout or BodyBroken, once one happened

    async def fill(self, wanted):
        """Receive until `wanted` bytes are buffered, the body ends or fails."""
        while len(self.buffer) < wanted and not self.ended and self.failure is None:
            allowed = self.pace.allowed()
            started = self.loop.time()
            try:
                if allowed <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(self.receive(), allowed)
            except asyncio.TimeoutError:
                self.failure = BodyTimeout()
                return
            finally:
                self.pace.waited += self.loop.time() - started
            if message['type'] != 'http.request':   # http.disconnect: hyper saw the body break off
                self.failure = BodyBroken()
                return
            data = message.get('body', b'')
            self.pace.received += len(data)
            self.buffer += data
            self.ended = not message.get('more_body', False)

    def read(self, size=-1):
        """(In the application's thread) up to size bytes, b'' at the end."""
        if size is None or size < 0:
            size = sys.maxsize
        if not self.buffer and not self.ended and self.failure is None:
            asyncio.run_coroutine_threadsafe(self.fill(1), self.loop).result()
        if self.buffer:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
            return data
        if self.failure is not None:
            raise self.failure
        return b''


class Threads:
    """The threads the WSGI application runs in.  A call is handed over
    through a queue and its end reported to the event loop by one
    call_soon_threadsafe: loop.run_in_executor's pair of chained futures cost
    more than the hand-off itself."""

    def __init__(self, count):
        self.calls = queue.SimpleQueue()
        for number in range(count):
            threading.Thread(target=self.work, name='wsgi_%d' % number, daemon=True).start()

    def run(self, loop, function, *args):
        """An asyncio future of function(*args), called in one of the threads."""
        future = loop.create_future()
        self.calls.put((loop, future, function, args))
        return future

    def work(self):
        while True:
            loop, future, function, args = self.calls.get()
            if future.cancelled():   # dropped before it started (as run_in_executor's would be)
                continue
            try:
                outcome = (function(*args), None)
            except BaseException as e:   # (an exit, too, is the request's to report)
                outcome = (None, e)
            try:
                loop.call_soon_threadsafe(settle, future, *outcome)
            except RuntimeError:   # the loop closed meanwhile (the worker is exiting): no one waits
                pass
            del future, function, args, outcome   # nothing of a request outlives it while waiting


def settle(future, result, error):
    if future.cancelled():   # the exchange was dropped while the application ran
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class Poll:
    """What an application run asks of the gateway: run me again after
    `delay` seconds (again()), keeping `state` for that run; with stream,
    what this run answered is sent now and the next runs add to its body."""

    def __init__(self):
        self.delay = None
        self.stream = False
        self.state = None    # the application's, from one run to the next
        self.runs = 0        # runs before this one

    def again(self, delay, state=None, stream=False):
        self.delay, self.state, self.stream = delay, state, stream


class Gateway:
    """An ASGI application (Granian's `asginl` interface) that serves a WSGI one
    with `threads` threads."""

    def __init__(self, application, threads, pace):
        self.application = application
        self.pace = pace      # a new framing.BodyPace for each request
        self.threads = Threads(threads)

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return
        loop = asyncio.get_running_loop()
        body = Body(receive, loop, self.pace())
        env = environ(scope, body)
        if 'CONTENT_LENGTH' not in env and 'HTTP_TRANSFER_ENCODING' not in env:
            body.ended = True   # (RFC 9112 6.3: a request without either has no body)
        elif env.get('HTTP_EXPECT', '').lower() != '100-continue':
            await body.fill(PREFETCH_BYTES)
        env['kvstore.poll'] = poll = Poll()
        response = Response(send, loop, poll)
        await self.threads.run(loop, response.run, self.application, env)
        if poll.delay is not None:
            response = await self.run_again(loop, receive, env, poll, response)
            if response is None:
                return   # the client left
        await response.finish()

    async def run_again(self, loop, receive, env, poll, response):
        """Run the application again as long as it asks to (Poll), waiting on
        the event loop between runs; the response to finish, or None when the
        client went away meanwhile."""
        left = asyncio.ensure_future(disconnected(receive))
        try:
            while poll.delay is not None:
                delay, poll.delay = poll.delay, None
                if poll.stream:
                    await response.flush()
                else:   # a long poll: its answer is the next run's
                    response = Response(response.send, loop, poll)
                await asyncio.wait([left], timeout=delay)
                if left.done():
                    return None
                poll.runs += 1
                await self.threads.run(loop, response.run, self.application, env)
            return response
        except (OSError, RuntimeError):   # the connection broke while a part went out
            return None
        finally:
            left.cancel()


async def disconnected(receive):
    """Returns once the client has gone (the request's body, if any, was read before)."""
    while (await receive())['type'] != 'http.disconnect':
        pass


class Response:
    """The WSGI side of one exchange: the application runs in a pool thread,
    and a body that is a list goes out from the event loop in one message.
    A stream (Poll.stream) runs the application again and again; each run's
    status and headers after the first are not sent, its body parts are."""

    def __init__(self, send, loop, poll=None):
        self.send, self.loop, self.poll = send, loop, poll
        self.start = None
        self.chunks = None       # a list body, sent by finish() or flush()
        self.started = False
        self.ended = False

    def start_response(self, status, headers, exc_info=None):
        if exc_info and self.started:
            raise exc_info[1].with_traceback(exc_info[2])
        if self.started:
            return   # a stream's next run: its head went out with the first
        self.start = {'type': 'http.response.start', 'status': int(status[:3]),
                      'headers': [(name.lower().encode('latin-1'), value.encode('latin-1'))
                                  for name, value in headers]}

    def run(self, application, env):
        result = application(env, self.start_response)
        try:
            # A small body goes out from the event loop in one message once
            # the application is done; a large one piece by piece as it is made.
            chunks, size = [], 0
            for chunk in result:
                if size <= STREAM_AFTER_BYTES:
                    chunks.append(chunk)
                    size += len(chunk)
                    continue
                if chunks:
                    self.call(self.send_part(b''.join(chunks), True))
                    chunks = None
                if chunk:
                    self.call(self.send_part(chunk, True))
            if chunks is None:
                if not self.continues():
                    self.call(self.send_part(b'', False))
            else:
                self.chunks = chunks
        finally:
            if hasattr(result, 'close'):
                result.close()

    def continues(self):
        """The application asked to add to this body (a stream)."""
        return self.poll is not None and self.poll.delay is not None and self.poll.stream

    def call(self, coroutine):
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def send_part(self, data, more):
        if not self.started:
            self.started = True
            await self.send(self.start)
        self.ended = not more
        await self.send({'type': 'http.response.body', 'body': data, 'more_body': more})

    async def flush(self):
        """Send what the last run answered, more to follow (a stream)."""
        chunks, self.chunks = self.chunks or [], None
        if chunks or not self.started:
            await self.send_part(b''.join(chunks), True)

    async def finish(self):
        if self.chunks is not None or not self.ended:
            await self.send_part(b''.join(self.chunks or []), False)


def environ(scope, body):
    """The WSGI environment of an ASGI request (PEP 3333)."""
    raw_path = scope.get('raw_path') or scope['path'].encode('utf-8')
    query = scope.get('query_string', b'')
    server = scope.get('server') or ('localhost', 80)
    env = {
        'REQUEST_METHOD': scope['method'],
        'SCRIPT_NAME': '',
        'PATH_INFO': urllib.parse.unquote_to_bytes(raw_path).decode('latin-1'),
        'QUERY_STRING': query.decode('latin-1'),
        'REQUEST_URI': (raw_path + (b'?' + query if query else b'')).decode('latin-1'),
        'SERVER_NAME': str(server[0]),
        'SERVER_PORT': str(server[1]),
        'SERVER_PROTOCOL': 'HTTP/%s' % scope.get('http_version', '1.1'),
        'REMOTE_ADDR': scope['client'][0] if scope.get('client') else '',
        'wsgi.version': (1, 0),
        'wsgi.url_scheme': scope.get('scheme', 'http'),
        'wsgi.input': body,
        'wsgi.errors': sys.stderr,
        'wsgi.multithread': True,
        'wsgi.multiprocess': True,
        'wsgi.run_once': False,
        'kvstore.gateway': True,
    }
    for name, value in scope['headers']:
        name = name.decode('latin-1').upper().replace('-', '_')
        if name == 'CONTENT_LENGTH' or name == 'CONTENT_TYPE':
            key = name
        else:
            key = 'HTTP_' + name
        value = value.decode('latin-1')
        env[key] = env[key] + ', ' + value if key in env else value
    return env
