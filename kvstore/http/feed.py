"""The change feed over HTTP (GET /buckets/B/changes): a page of changes as a
document, held until a change comes (a long poll, ?wait=), or a stream of
Server-Sent Events (Accept: text/event-stream; `id:` is the cursor, so an
EventSource resumes with Last-Event-ID) or of JSON lines
(Accept: application/x-ndjson).

Waiting holds no thread: under the gateway (kvstore/http/gateway.py) a run
that found nothing asks, through its Poll, to be run again after
[feed] poll_interval, and the gateway sleeps on its event loop meanwhile.
Each look at the logs is a run in a pool thread, as short as a listing's
page.  Without the gateway (a WSGI server of its own) the thread waits.
"""
import base64
import json
import logging
import time

import web

from kvstore.coordinator.versions import context_of
from kvstore.errors import BadRequest, StoreError
from kvstore.http.caching import last_modified
from kvstore.http.links import changes_path
from kvstore.http.negotiation import error_document, prefers, respond
from kvstore.http.request import query, query_flag, store
from kvstore.http.values import TEXTUAL, issued_context

log = logging.getLogger('kvstore.feed')
SSE = 'text/event-stream'
NDJSON = 'application/x-ndjson'
DEFAULT_LIMIT, MAX_FEED_LIMIT = 100, 1000   # changes a page asks for
SSE_RETRY_MS = 1000   # how soon an EventSource reconnects when a stream ends


def changes_response(bucket):
    """The answer to GET /buckets/B/changes, in the form Accept asks for."""
    store().check_bucket(bucket)
    poll = web.ctx.env.get('kvstore.poll') if web.ctx.method == 'GET' else None   # HEAD: no wait
    if poll is not None and poll.runs:
        state = poll.state
    else:
        state = {'since': requested_cursor(), 'limit': requested_limit(), 'values': query_flag('values'),
                 'wait': requested_wait(), 'stream': SSE if prefers(SSE) else NDJSON if prefers(NDJSON) else None}
        state['until'] = time.monotonic() + (store().config.feed_stream_seconds if state['stream'] else state['wait'])
    if state['stream']:
        return stream(bucket, state, poll)
    return long_poll(bucket, state, poll)


def requested_cursor():
    """Last-Event-ID (an EventSource resuming) or ?since=; None when neither."""
    since = web.ctx.env.get('HTTP_LAST_EVENT_ID') or query('since')
    return since or None


def requested_limit():
    raw = query('limit')
    if raw in (None, ''):
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5) or not 1 <= int(raw) <= MAX_FEED_LIMIT:
        raise BadRequest('bad_parameter', 'limit must be 1 to %d' % MAX_FEED_LIMIT, parameter='limit')
    return int(raw)


def requested_wait():
    """?wait=SECONDS (a long poll), at most [feed] max_wait."""
    raw, most = query('wait'), store().config.feed_max_wait
    if raw in (None, ''):
        return 0.0
    try:
        wait = float(raw) if raw.isascii() and len(raw) <= 10 and raw.replace('.', '', 1).isdigit() else -1
    except ValueError:
        wait = -1
    if not 0 <= wait <= most:
        raise BadRequest('bad_parameter', 'wait is 0 to %g seconds' % most, parameter='wait')
    return wait


def long_poll(bucket, state, poll):
    """A page; an empty one is held until a change comes or the wait is over."""
    interval = store().config.feed_poll_interval
    while True:
        page = store().changes(bucket, state['since'], state['limit'], state['values'])
        left = state['until'] - time.monotonic()
        if page.changes or left <= 0 or web.ctx.method == 'HEAD':
            return page_response(bucket, page, state)
        state = dict(state, since=page.cursor)
        if poll is not None:
            poll.again(min(interval, left), state)
            return b''
        time.sleep(min(interval, left))


def page_response(bucket, page, state):
    doc = {'bucket': bucket, 'changes': [change_document(bucket, c, state['values']) for c in page.changes],
           'cursor': page.cursor, 'more': page.more, 'incomplete': page.incomplete}
    next_page = changes_path(bucket, page.cursor, state['limit'] if state['limit'] != DEFAULT_LIMIT else None)
    headers = {'Link': '<%s>; rel="next"' % next_page, 'Cache-Control': 'no-store'}
    if page.incomplete:
        headers['Feed-Incomplete'] = ', '.join(page.incomplete)
    return respond('changes', doc, headers=headers)


def change_document(bucket, change, values):
    """A change as a document: the key, the version's ETag, whether it is a
    delete, its size, type and date, the context to write after it, and with
    values its value when it is small, inline and still held."""
    version = change.version
    doc = {'key': change.key, 'etag': version.etag, 'deleted': version.deleted, 'size': version.size,
           'content_type': version.content_type, 'last_modified': last_modified(version),
           'context': issued_context(context_of([version]), bucket, change.key)}
    if values and not version.deleted:
        if change.value is None:
            doc['value_omitted'] = 'larger than 64 KiB, in chunks, or replaced since: GET the key'
        elif version.content_type.startswith(TEXTUAL) and is_utf8(change.value):
            doc['value'] = change.value.decode('utf-8')
        else:
            doc['value_base64'] = base64.b64encode(change.value).decode('ascii')
    return doc


def is_utf8(data):
    try:
        data.decode('utf-8')
        return True
    except UnicodeDecodeError:
        return False


def stream(bucket, state, poll):
    """One stretch of a stream: the changes after the cursor, then (under the
    gateway) a run again; the stream ends after [feed] stream_seconds, or
    with an error event (a trimmed cursor: 410's document)."""
    first = poll is None or not poll.runs
    if first:
        web.header('Content-Type', state['stream'] + ('; charset=utf-8' if state['stream'] == SSE else ''))
        web.header('Cache-Control', 'no-store')
        web.header('X-Accel-Buffering', 'no')   # nginx: pass each event on at once
    try:
        page = store().changes(bucket, state['since'], state['limit'], state['values'])
    except StoreError as e:
        if first:
            raise   # an answer of its own: 400 for a bad cursor, 410 for a trimmed one
        return event(state['stream'], 'error', error_document(e.code, e.message, **e.details))
    body = (b'retry: %d\n\n' % SSE_RETRY_MS) if first and state['stream'] == SSE else b''
    body += page_events(bucket, page, state, changed=first or page.cursor != state['since'])
    if poll is not None and time.monotonic() < state['until']:
        poll.again(0 if page.more else store().config.feed_poll_interval, dict(state, since=page.cursor),
                   stream=True)
    return body


def page_events(bucket, page, state, changed):
    """A page as events: each change, then the cursor to resume from (SSE: as
    the last event's id, which an EventSource sends back as Last-Event-ID; a
    stream cut before it resumes at the cursor before: duplicates, no loss)."""
    kind = state['stream']
    parts = [event(kind, 'change', change_document(bucket, c, state['values'])) for c in page.changes]
    if page.incomplete:
        parts.append(event(kind, 'incomplete', {'partitions': page.incomplete}))
    if changed or page.changes:
        parts.append(b'id: %s\n\n' % page.cursor.encode() if kind == SSE
                     else json_line({'cursor': page.cursor, 'incomplete': page.incomplete}))
    return b''.join(parts)


def event(kind, name, document):
    if kind == SSE:
        return b'event: %s\ndata: %s\n\n' % (name.encode(), json.dumps(document, separators=(',', ':')).encode())
    return json_line({name: document})


def json_line(document):
    return json.dumps(document, separators=(',', ':')).encode() + b'\n'
