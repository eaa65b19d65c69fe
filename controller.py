#!/usr/bin/env python3
"""The HTTP interface: web.py resources that translate HTTP to the datastore.

Each resource is a small class with one method per verb.  HTTP decisions
(is the request valid? does the key exist? do the preconditions hold? which
representation is acceptable?) are named helpers; storage decisions belong to
the datastore.

Serve it with `make run` (gunicorn, see gunicorn.conf.py), or
`python controller.py [host:port]` for web.py's own development server.
"""
import base64
import email.utils
import functools
import hashlib
import io
import json
import logging
import os
import re
import sys
import time
import urllib.parse
import uuid

import mimeparse
import mimerender
import web

from kvstore.http import access
from kvstore import configuration
from kvstore.http import documents
from kvstore.http import framing
from kvstore.coordinator import gossip
from kvstore import metrics
from kvstore.http import ranges
from datastore import MAX_LIST_LIMIT, Datastore
from kvstore.errors import (AlreadyExists, BadRequest, BodyTooLarge, NotAcceptable, NotFound, RangeNotSatisfiable,
                    StoreError, TooLarge, Unavailable)
from kvstore.coordinator.integrity import expected_digests
from kvstore.http.preconditions import NOT_MODIFIED, Preconditions
from kvstore.coordinator.versions import BadContext, decode_context, decode_token, encode_context, encode_token

log = logging.getLogger('kvstore.controller')
web.config.debug = os.environ.get('WEBPY_ENV') == 'development'

# web.py tries these in order: the one nearly every request takes comes first.
urls = (
    '/buckets/([^/]+)/keys/([\\s\\S]+)', 'Key',
    '/buckets/([^/]+)/keys', 'Keys',
    '/buckets/([^/]+)', 'Bucket',
    '/buckets', 'Buckets',
    '/cluster', 'Cluster',
    '/cluster/gossip', 'ClusterGossip',
    '/health', 'Health',
    '/metrics', 'Metrics',
    '/ready', 'Ready',
    '/', 'Index',
)

STATUS = {
    'unauthenticated': '401 Unauthorized',
    'forbidden': '403 Forbidden',
    'cross_site_refused': '403 Forbidden',
    'gossip_refused': '403 Forbidden',
    'not_found': '404 Not Found',
    'method_not_allowed': '405 Method Not Allowed',
    'not_acceptable': '406 Not Acceptable',
    'request_timeout': '408 Request Timeout',
    'already_exists': '409 Conflict',
    'bucket_not_empty': '409 Conflict',
    'too_many_siblings': '409 Conflict',
    'precondition_failed': '412 Precondition Failed',
    'value_too_large': '413 Content Too Large',
    'body_too_large': '413 Content Too Large',
    'uri_too_long': '414 URI Too Long',
    'range_not_satisfiable': '416 Range Not Satisfiable',
    'misdirected_request': '421 Misdirected Request',
    'header_fields_too_large': '431 Request Header Fields Too Large',
    'insufficient_storage': '507 Insufficient Storage',
    'corrupt_data': '500 Internal Server Error',
    'unavailable': '503 Service Unavailable',
    'internal_error': '500 Internal Server Error',
    'unsupported_transfer_coding': '501 Not Implemented',
}
DOCUMENT_TYPES = [m for short in documents.RENDERERS for m in mimerender._get_mime_types(short)]
MULTIPART = 'multipart/mixed'
FORM_TYPES = ('application/x-www-form-urlencoded', 'multipart/form-data')
TEXTUAL = ('text/', 'application/json', 'application/xml', 'application/javascript')
# Bucket properties a client may set, and what each accepts.
BUCKET_PROPERTIES = {
    'conflicts': ('siblings or lww', lambda v: v in ('siblings', 'lww')),
    **{name: ('the default %s of the bucket\'s keys, %d to N' % (name, least),
              lambda v, least=least: type(v) is int and least <= v <= store().n)
       for name, least in (('r', 1), ('w', 1), ('pr', 0), ('pw', 0))},
    'cache_control': ('a Cache-Control value for the values of the bucket',
                      lambda v: isinstance(v, str) and 0 < len(v) <= 256 and v.isascii() and v.isprintable()),
    'cors': access.CORS_PROPERTY,
}
META_PREFIX = 'HTTP_X_META_'
META_NAME = re.compile(r'[a-z0-9-]+\Z')
# Headers a value keeps as part of the object, as S3 does (metadata name: header).
STORED_HEADERS = {'cache_control': 'Cache-Control', 'expires': 'Expires', 'content_encoding': 'Content-Encoding',
                  'content_disposition': 'Content-Disposition', 'content_language': 'Content-Language'}
# Those that describe the representation rather than how long it may be cached.
REPRESENTATION_HEADERS = ('content_encoding', 'content_disposition', 'content_language')
# Bounds of database_definition.sql's columns, checked before a write: a
# value the database refuses would otherwise cost a round trip to each owner.
MAX_METADATA_BYTES = 4096            # metadata VARBINARY(8192)
MAX_CONTENT_TYPE_BYTES = 255         # content_type VARBINARY(255)
LIMIT_DIGITS = len(str(MAX_LIST_LIMIT))
MAX_DOCUMENT_BYTES = 1024 * 1024   # a JSON request body (bucket properties), read whole


# -- documents ----------------------------------------------------------------

def _not_acceptable(accept, supported):
    body = documents.render_json(error_document(
        'not_acceptable', 'none of the offered types is acceptable: %s' % ', '.join(DOCUMENT_TYPES)), 'error')
    return 'application/json; charset=utf-8', body


negotiate = mimerender.WebPyMimeRender()


@negotiate(default='json', charset='utf-8', override_arg_idx=-1,
           not_acceptable_callback=_not_acceptable, **documents.RENDERERS)
def _negotiated(root, document, status, headers, format_override):
    return {'document': document, 'root': root}, status, headers


def respond(root, document, status='200 OK', headers=None, format_override=None):
    """A document in the representation the client's Accept header prefers."""
    if format_override is None:
        document_format()  # an Accept header that cannot be parsed is a 400
    body = _negotiated(root, document, status, headers or {}, format_override).encode('utf-8')
    web.header('Content-Length', str(len(body)))
    return body


def document_format():
    """The short name of the document type the client accepts best, or None."""
    accept = web.ctx.env.get('HTTP_ACCEPT')
    if not accept:
        return 'json'
    try:
        best = mimeparse.best_match(DOCUMENT_TYPES[::-1], accept)
    except mimeparse.MimeTypeParseException:
        raise BadRequest('bad_header', 'Accept is not a list of media ranges')
    return mimerender._get_short_mime(best) if best else None


def error_document(code, message, **details):
    return dict(code=code, status=int(STATUS.get(code, '400')[:3]), message=message, **details)


def respond_error(code, message, headers=None, **details):
    # An error is always sent; JSON when the client accepts no document type.
    allow = [v for k, v in web.ctx.headers if k.lower() == 'allow']
    web.ctx.headers = []
    if allow:
        methods = allow[0].split(', ')
        if 'GET' in methods and 'HEAD' not in methods:  # web.py answers HEAD with GET
            methods.insert(methods.index('GET') + 1, 'HEAD')
        web.header('Allow', ', '.join(methods))
    try:
        acceptable = document_format()
    except BadRequest:
        acceptable = None
    return respond('error', error_document(code, message, **details), STATUS.get(code, '400 Bad Request'),
                   headers, None if acceptable else 'json')


DRAIN_LIMIT = 1024 * 1024   # body bytes read off and dropped after an early answer


def drain_request_body():
    """Read off what is left of a body the request did not need (an early
    error, a body over its limit), up to DRAIN_LIMIT.  A connection closed
    with the client's bytes unread is reset (RFC 9112 9.6), and the reset can
    destroy the answer before the client reads it.  Beyond the limit, or when
    the body cannot be read, the connection is closed instead."""
    env = web.ctx.env
    closing = any(k.lower() == 'connection' for k, _ in web.ctx.headers)
    if closing and not web.ctx.status.startswith('413'):
        return   # a framing or pace error: the body cannot be trusted or waited for
    try:
        body = web.ctx.get('request_body')
        if body is None:
            if not framing.body_framing(env):
                return
            if env.get('HTTP_EXPECT', '').lower() == '100-continue':
                raise BodyTooLarge('not waited for')   # the client may be waiting to send it
            body = request_body(DRAIN_LIMIT, lambda: BodyTooLarge('not drained'))
        if body.discard(DRAIN_LIMIT):
            return
    except (StoreError, OSError, ValueError):
        pass
    if not closing:
        web.header('Connection', 'close')


def error_response(e):
    return respond_error(e.code, e.message, dict(e.headers), **e.details)


def finish_response(body):
    drain_request_body()
    # RFC 9110 6.6.1: an origin server with a clock sends Date (uWSGI does
    # not).  Set last: an error document starts its headers afresh.
    web.header('Date', current_http_date())
    if ('HTTP_TRANSFER_ENCODING' in web.ctx.env and 'uwsgi.version' in web.ctx.env
            and not any(k.lower() == 'connection' for k, _ in web.ctx.headers)):
        # uWSGI's router closes the connection after a chunked request: say so.
        web.header('Connection', 'close')
    access.secure_response()
    # web.py answers HEAD with GET: same headers, no body.
    return b'' if web.ctx.method == 'HEAD' else body


class Application(web.application):
    """web.py's application, where every failure becomes a negotiated error document."""

    def handle(self):
        return finish_response(self.handle_errors())

    def handle_errors(self):
        try:
            framing.check_request_head(web.ctx.env)
            web.ctx.path = request_path()
            return super().handle()
        except StoreError as e:
            return error_response(e)
        except web.HTTPError:
            if web.ctx.status.startswith('404'):
                return respond_error('not_found', 'no resource at %s' % urllib.parse.quote(
                    web.ctx.path, safe='/', errors='surrogateescape'))
            if web.ctx.status.startswith('405'):
                return respond_error('method_not_allowed', '%s is not allowed here' % web.ctx.method)
            raise
        except Exception:
            log.exception('request failed: %s %s', web.ctx.method, web.ctx.path)
            return respond_error('internal_error', 'the store failed to handle the request')


# -- request pieces -------------------------------------------------------------

def request_path():
    """The percent-decoded path as text.  Bytes that are not UTF-8 stay as
    lone surrogates (web.py would read them as Latin-1: %FF the same as
    %C3%BF), which no bucket name or key accepts: 400 bad_bucket or bad_key."""
    path = web.ctx.env.get('PATH_INFO', '')
    return path if path.isascii() else path.encode('latin-1').decode('utf-8', 'surrogateescape')


def query(name):
    """A query parameter (the last, if repeated), or None; parsed once a request."""
    params = web.ctx.get('query_params')
    if params is None:
        raw = web.ctx.env.get('QUERY_STRING')
        params = web.ctx.query_params = parse_query(raw) if raw else {}
    return params.get(name)


def parse_query(raw):
    """The parameters of a query string (WSGI's Latin-1 text of its bytes), read
    as parse_qsl reads UTF-8, keeping blank values; bytes that are not UTF-8,
    escaped or not, are 400 bad_parameter.  Split by hand when there is
    nothing to unquote (?r=one)."""
    if raw.isascii() and '%' not in raw and '+' not in raw:
        return dict(pair.partition('=')[::2] for pair in raw.split('&') if pair)
    params = {}
    for pair in raw.split('&'):
        if pair:
            name, _, value = (urllib.parse.unquote_to_bytes(part.replace('+', ' ').encode('latin-1'))
                              for part in pair.partition('='))
            try:
                params[name.decode('utf-8')] = value.decode('utf-8')
            except UnicodeDecodeError:
                raise BadRequest('bad_parameter', 'query parameters are percent-encoded UTF-8',
                                 parameter=name.decode('utf-8', 'replace'))
    return params


def parse_json(text):
    """json.loads, where JSON nested too deeply to parse is a ValueError like any bad JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError('JSON nested too deeply')


def store():
    return web.ctx.store


def request_quorums(*names):
    """The quorums asked for with ?r=, ?w=, ?pr=, ?pw= (None: the bucket's or the default)."""
    return [store().quorum(query(name), None, name) for name in names]


def request_context(bucket, key):
    """The causal context the client sent back (X-Context) with a write of this key, or None."""
    header = web.ctx.env.get('HTTP_X_CONTEXT')
    if not header:
        return None
    try:
        return decode_context(header, store().engines, bucket, key)
    except BadContext as e:
        raise BadRequest('bad_context', str(e))


def request_body(limit, too_large):
    """The request body as a stream of at most limit bytes (framing.RequestBody)."""
    config = store().config
    body = web.ctx.request_body = framing.RequestBody(web.ctx.env, limit, too_large, config.body_timeout,
                                                      config.min_body_rate)
    return body


def refuse_partial_body():
    """RFC 9110 14.5: a body with Content-Range is part of a representation,
    which a write would otherwise store as the whole of it."""
    if 'HTTP_CONTENT_RANGE' in web.ctx.env:
        raise BadRequest('bad_header', 'Content-Range: partial writes are not supported; send the whole value')


def request_document(limit=MAX_DOCUMENT_BYTES):
    """A JSON request body's bytes, read whole: at most limit."""
    return request_body(limit, lambda: BodyTooLarge(
        'a document body takes at most %d bytes' % limit, limit=limit)).read_all()


def request_value():
    """(bytes or a stream, content type): a raw body, or a form's `value` field."""
    limit = store().config.max_value_bytes
    body = request_body(limit, lambda: TooLarge('values are at most %d bytes' % limit, limit=limit))
    content_type = web.ctx.env.get('CONTENT_TYPE') or 'application/octet-stream'
    if is_form():
        # A form is parsed in memory: it takes at most one chunk.
        form_limit = min(limit, store().config.chunk_size)
        data = request_body(form_limit, lambda: TooLarge(
            'a form takes at most %d bytes: send a larger value as the raw body' % form_limit,
            limit=form_limit)).read_all()
        env = web.ctx.env
        env['wsgi.input'], env['CONTENT_LENGTH'] = io.BytesIO(data), str(len(data))
        env.pop('HTTP_TRANSFER_ENCODING', None)
        value = web.input(_method='post').get('value')
        if value is None:
            raise BadRequest('bad_body', 'a form must carry the value in a field named "value"')
        return (value if isinstance(value, bytes) else value.encode('utf-8')), 'text/plain; charset=utf-8'
    try:
        mimeparse.parse_mime_type(content_type)
    except mimeparse.MimeTypeParseException:
        raise BadRequest('bad_header', 'Content-Type is not a media type')
    check_field_value('Content-Type', content_type)
    if len(content_type.encode('utf-8')) > MAX_CONTENT_TYPE_BYTES:
        raise BadRequest('bad_header', 'Content-Type takes at most %d bytes' % MAX_CONTENT_TYPE_BYTES)
    return body, content_type


def is_form():
    """Is the request body a form, whose `value` field is stored rather than its bytes?"""
    return (web.ctx.env.get('CONTENT_TYPE') or '').split(';')[0].strip().lower() in FORM_TYPES


def check_field_value(name, value):
    """RFC 9110 5.5: no control characters (tab included here) in a field value
    the store keeps: it is sent back as one."""
    if any(c < ' ' or c == '\x7f' for c in value):
        raise BadRequest('bad_header', '%s holds a control character' % name)


def request_metadata():
    """What a value keeps besides its bytes: X-Meta-* headers and STORED_HEADERS."""
    env = web.ctx.env
    meta = {}
    for variable, value in env.items():
        if variable.startswith(META_PREFIX):
            name = variable[len(META_PREFIX):].lower().replace('_', '-')
            if not META_NAME.match(name):
                raise BadRequest('bad_header', 'X-Meta-* names are letters, digits and "-" after X-Meta-')
            check_field_value('X-Meta-' + name, value)
            meta[name] = value
    metadata = {}
    if meta:
        metadata['meta'] = meta
    for name, header in STORED_HEADERS.items():
        value = env.get('HTTP_' + name.upper())
        if value:
            check_field_value(header, value)
            metadata[name] = value
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise BadRequest('bad_header', 'X-Meta-* and the stored headers (%s) take at most %d bytes together'
                         % (', '.join(STORED_HEADERS.values()), MAX_METADATA_BYTES))
    return metadata


def body_may_be_large():
    """Is the body worth refusing before it is read?"""
    env = web.ctx.env
    declared = env.get('CONTENT_LENGTH')
    return (not declared or not declared.isdigit() or int(declared) > store().config.chunk_size
            or env.get('HTTP_EXPECT', '').lower() == '100-continue')


def key_path(bucket, key):
    return '/buckets/%s/keys/%s' % (bucket, urllib.parse.quote(key, safe='/'))


_DAYS = ('Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun')
_MONTHS = ('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec')


def http_date(microseconds):
    """RFC 9110's IMF-fixdate (email.utils.formatdate's output, at a fifth of its cost)."""
    return _imf_fixdate(microseconds // 1000000)


@functools.lru_cache(maxsize=4096)   # the Last-Modified of hot keys
def _imf_fixdate(seconds):
    t = time.gmtime(seconds)
    return '%s, %02d %s %04d %02d:%02d:%02d GMT' % (_DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1],
                                                    t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def current_http_date():
    """The Date header's value (formatted once a second: _imf_fixdate's cache)."""
    return _imf_fixdate(int(time.time()))


def last_modified(version):
    """A version's Last-Modified: never later than the response's Date (RFC 9110
    8.8.2.1), though the front end that wrote it had a clock running ahead."""
    return http_date(min(version.modified, time.time_ns() // 1000))


def expiry(expires):
    """An Expires value as seconds since the epoch; one that is not a date has
    already passed (RFC 9111 5.3)."""
    parsed = email.utils.parsedate_tz(expires)
    return email.utils.mktime_tz(parsed) if parsed else float('-inf')


def caching_headers(bucket, versions):
    """Cache-Control and Expires for an answer about these versions: a 200, a
    record, siblings, and a 304 (RFC 9110 15.4.5).  Each version's own
    Cache-Control, else the bucket's; siblings that differ send every
    directive (one's no-store holds) and the earliest Expires."""
    default = store().bucket_properties_cached(bucket).get('cache_control')
    controls = list(dict.fromkeys(filter(None, (v.metadata.get('cache_control') or default for v in versions))))
    if controls:
        web.header('Cache-Control', ', '.join(controls))
    expires = [v.metadata['expires'] for v in versions if 'expires' in v.metadata]
    if expires:
        web.header('Expires', min(expires, key=expiry))


def value_document(version):
    """A version's value inside a document: text when it is text, else base64;
    a value too large for one chunk is left out (GET it raw, with ranges)."""
    doc = {'content_type': version.content_type, 'etag': version.etag,
           'last_modified': last_modified(version), 'size': version.size}
    if version.metadata.get('meta'):
        doc['meta'] = version.metadata['meta']
    doc.update((name, version.metadata[name]) for name in STORED_HEADERS if name in version.metadata)
    if version.chunk_size:
        doc['value_omitted'] = 'larger than one chunk: GET the key for its bytes'
        return doc
    if version.content_type.startswith(TEXTUAL):
        try:
            doc['value'] = version.value.decode('utf-8')
            return doc
        except UnicodeDecodeError:
            pass
    doc['value_base64'] = base64.b64encode(version.value).decode('ascii')
    return doc


def bucket_etag(properties):
    """A bucket's entity tag: a digest of its properties, the state a PUT or DELETE may be conditioned on."""
    canonical = json.dumps(properties, sort_keys=True, separators=(',', ':')).encode('utf-8')
    return '"%s"' % hashlib.sha256(canonical).hexdigest()[:32]


def context_header(bucket, key, receipt):
    return {'X-Context': encode_context(receipt.context, bucket, key)} if receipt.context is not None else {}


def receipt_document(bucket, key, receipt):
    doc = {'bucket': bucket, 'key': key}
    if not receipt.version.deleted:
        doc['etag'] = receipt.version.etag
    doc.update(context=encode_context(receipt.context, bucket, key) if receipt.context is not None else None,
               clock=receipt.context, siblings=receipt.siblings,
               preference_list=receipt.preference_list, acknowledged=receipt.acknowledged,
               coordinator=receipt.coordinator, hints=receipt.hints, down=receipt.down,
               owners_acknowledged=len(receipt.acknowledged), fallbacks_acknowledged=len(receipt.hints))
    return doc


# -- resources ------------------------------------------------------------------

class Index:
    def GET(self):
        return respond('index', {
            'service': 'kvstore: an HTTP key-value and blob store over MySQL/MariaDB partitions',
            'documentation': 'docs/API.md',
            'endpoints': [
                {'method': m, 'path': p, 'does': d} for m, p, d in (
                    ('GET', '/cluster', 'partition health, hints waiting, gossip'),
                    ('GET', '/health', 'this front end answers: 200'),
                    ('GET', '/metrics', 'counts and gauges for Prometheus (text format)'),
                    ('GET', '/ready', 'enough partitions answer for the default quorums: 200, else 503'),
                    ('GET', '/buckets', 'list buckets'),
                    ('PUT', '/buckets/{bucket}', 'create a bucket or set its properties'),
                    ('GET', '/buckets/{bucket}', 'a bucket\'s properties and key count'),
                    ('DELETE', '/buckets/{bucket}', 'delete an empty bucket (?force=true: with its keys)'),
                    ('GET', '/buckets/{bucket}/keys', 'list keys: ?prefix=&limit=&cursor='),
                    ('POST', '/buckets/{bucket}/keys', 'store a value under a new server-chosen key'),
                    ('GET', '/buckets/{bucket}/keys/{key}', 'read a value (?r=)'),
                    ('PUT', '/buckets/{bucket}/keys/{key}', 'create or replace a value (?w=)'),
                    ('POST', '/buckets/{bucket}/keys/{key}', 'create a value only if the key is new'),
                    ('DELETE', '/buckets/{bucket}/keys/{key}', 'delete a value'),
                )],
            'replicas': store().n, 'r': store().config.r, 'w': store().config.w,
        })


class Cluster:
    def GET(self):
        return respond('cluster', store().cluster_status())


class Health:
    """For supervisors and load balancers: this process answers requests."""

    def GET(self):
        return respond('health', {'status': 'ok'})


class Ready:
    """For load balancers: enough partitions answer for the default quorums."""

    def GET(self):
        ready, partitions = store().readiness()
        return respond('ready', {'ready': ready, 'partitions': partitions},
                       '200 OK' if ready else '503 Service Unavailable', {'Retry-After': '1'} if not ready else None)


class Metrics:
    """For Prometheus: counts and gauges in its text format (kvstore/metrics.py)."""

    def GET(self):
        if not accepts_stored_type(metrics.CONTENT_TYPE):
            raise NotAcceptable('metrics are %s only' % metrics.CONTENT_TYPE)
        body, content_type = metrics.exposition(store())
        web.header('Content-Type', content_type)
        web.header('Content-Length', str(len(body)))
        return body


class ClusterGossip:
    """Front ends exchange partition health here (gossip.py), signed both ways."""

    def POST(self):
        peers = store().gossip
        body = request_document(peers.max_bytes)
        env = web.ctx.env
        gossip.verify(peers.secret, gossip.REQUEST, env.get('HTTP_X_GOSSIP_TIMESTAMP'),
                      env.get('HTTP_X_GOSSIP_SIGNATURE'), body)
        try:
            view = parse_json(body)['partitions']
            if not isinstance(view, dict):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise BadRequest('bad_body', 'gossip is a JSON object {"partitions": {name: observation}}')
        answer = respond('gossip', {'partitions': peers.receive(view)}, format_override='json')
        for name, value in gossip.signed_headers(peers.secret, gossip.ANSWER, answer).items():
            web.header(name, value)
        return answer


class Buckets:
    def GET(self):
        return respond('buckets', {'buckets': [b for b in store().bucket_names() if access.may_read(b)]})


class Bucket:
    def GET(self, bucket):
        props = store().bucket_properties(bucket)
        if props is None:
            raise NotFound('no bucket %r' % bucket)
        web.header('ETag', bucket_etag(props))
        return respond('bucket', {'bucket': bucket, 'properties': props,
                                  'key_count': store().count_keys(bucket),
                                  'keys': '/buckets/%s/keys' % bucket})

    def PUT(self, bucket):
        refuse_partial_body()
        props = self.requested_properties()
        self.check_preconditions(bucket)
        created = store().create_bucket(bucket, props)
        props = store().bucket_properties(bucket)
        headers = {'ETag': bucket_etag(props)}
        if created:
            headers['Location'] = '/buckets/%s' % bucket
        return respond('bucket', {'bucket': bucket, 'created': created, 'properties': props},
                       '201 Created' if created else '200 OK', headers)

    def DELETE(self, bucket):
        force = (query('force') or '').lower() in ('true', '1', 'yes')
        self.check_preconditions(bucket)
        store().delete_bucket(bucket, force=force)
        return respond('bucket', {'bucket': bucket, 'deleted': True})

    @staticmethod
    def check_preconditions(bucket):
        """If-Match / If-None-Match against the bucket's ETag, read just before
        the write: best-effort, as the bucket's record has no compare-and-swap."""
        preconditions = Preconditions.from_environ(web.ctx.env)
        if preconditions.present:
            props = store().bucket_properties(bucket)
            preconditions.evaluate_validators([] if props is None else [bucket_etag(props)], None, safe=False)

    @staticmethod
    def requested_properties():
        body = request_document()
        if not body.strip():
            return {}
        try:
            props = parse_json(body)
        except ValueError:
            raise BadRequest('bad_body', 'bucket properties are a JSON object')
        if not isinstance(props, dict):
            raise BadRequest('bad_body', 'bucket properties are a JSON object')
        for name, value in props.items():
            if name not in BUCKET_PROPERTIES or not BUCKET_PROPERTIES[name][1](value):
                raise BadRequest('bad_property', 'known properties: %s' % ', '.join(
                    '%s (%s)' % (n, what) for n, (what, _) in BUCKET_PROPERTIES.items()))
        return props


class Keys:
    def GET(self, bucket):
        prefix = query('prefix') or ''
        limit = self.limit()
        after = self.cursor_key()
        page = store().list_keys(bucket, prefix=prefix, limit=limit, after=after)
        if not page.keys and after is None and store().bucket_properties(bucket) is None:
            raise NotFound('no bucket %r' % bucket)
        doc = {'bucket': bucket, 'prefix': prefix, 'keys': page.keys, 'next_cursor': None}
        headers = {}
        if page.next_after is not None:
            cursor = encode_token(page.next_after.encode('utf-8'))
            doc['next_cursor'] = cursor
            headers['Link'] = '</buckets/%s/keys?%s>; rel="next"' % (bucket, urllib.parse.urlencode(
                dict(prefix=prefix, limit=limit, cursor=cursor) if prefix else dict(limit=limit, cursor=cursor)))
        return respond('keys', doc, headers=headers)

    def POST(self, bucket):
        key = uuid.uuid4().hex
        return write_key(bucket, key, create_only=True, server_chosen=True)

    @staticmethod
    def limit():
        raw = query('limit')
        if raw in (None, ''):
            return 1000
        if not (raw.isascii() and raw.isdigit() and len(raw) <= LIMIT_DIGITS) or not 1 <= int(raw) <= MAX_LIST_LIMIT:
            raise BadRequest('bad_parameter', 'limit must be 1 to %d' % MAX_LIST_LIMIT, parameter='limit')
        return int(raw)

    @staticmethod
    def cursor_key():
        raw = query('cursor')
        if not raw:
            return None
        try:
            return decode_token(raw).decode('utf-8')
        except ValueError:
            raise BadRequest('bad_parameter', 'cursor is not one this store issued', parameter='cursor')


class Key:
    def GET(self, bucket, key):
        read = store().get(bucket, key, *request_quorums('r', 'pr'))
        current = read.current
        if not current:
            raise NotFound('no key %r in bucket %r' % (key, bucket))
        if len(current) > 1:
            web.header('X-Context', encode_context(read.context, bucket, key))
            return siblings_response(bucket, key, read)
        version = current[0]
        raw = accepts_stored_type(version.content_type)
        if not raw and document_format() is None:
            raise NotAcceptable('the value is %s, and no document type is acceptable either'
                                % version.content_type)
        web.header('X-Context', encode_context(read.context, bucket, key))
        web.header('ETag', version.etag)
        web.header('Last-Modified', last_modified(version))
        caching_headers(bucket, current)
        if Preconditions.from_environ(web.ctx.env).evaluate(current, safe=True) == NOT_MODIFIED:
            web.header('Vary', 'Accept')
            if raw:
                # RFC 9110 8.6: the length a 200 would have had.  Without a length
                # uWSGI's router cannot keep the connection alive.
                web.header('Content-Length', str(version.size))
            web.ctx.status = '304 Not Modified'
            return b''
        if raw:
            web.header('Vary', 'Accept')  # a document gets it from the negotiation
            return value_response(bucket, version)
        doc = dict(bucket=bucket, key=key, context=encode_context(read.context, bucket, key),
                   **value_document(version))
        return respond('record', doc)

    def HEAD(self, bucket, key):
        # RFC 9110 14.2: Range applies to GET alone; HEAD answers as a GET without it would.
        web.ctx.env.pop('HTTP_RANGE', None)
        return self.GET(bucket, key)

    def PUT(self, bucket, key):
        return write_key(bucket, key, create_only=False)

    def POST(self, bucket, key):
        return write_key(bucket, key, create_only=True)

    def DELETE(self, bucket, key):
        preconditions = Preconditions.from_environ(web.ctx.env)
        w, pw = request_quorums('w', 'pw')
        receipt = store().delete(bucket, key, context=request_context(bucket, key), check=preconditions.check_write,
                                 w=w, pw=pw, conditional=preconditions.present)
        doc = receipt_document(bucket, key, receipt)
        doc['deleted'] = True
        return respond('receipt', doc, headers=context_header(bucket, key, receipt))


def prefers(media_type):
    """Is media_type the client's first choice over every document type?"""
    accept = web.ctx.env.get('HTTP_ACCEPT')
    if not accept:
        return False
    try:
        return mimeparse.best_match([media_type] + DOCUMENT_TYPES[::-1], accept) == media_type
    except mimeparse.MimeTypeParseException:
        return False


def value_response(bucket, version):
    """The stored bytes, whole or the one range asked for, streamed chunk by chunk."""
    env = web.ctx.env
    for name, value in version.metadata.get('meta', {}).items():
        web.header('X-Meta-' + name.title(), value)
    for name, value in representation_headers(version):
        web.header(name, value)
    web.header('Accept-Ranges', 'bytes')
    wanted = None
    if env.get('HTTP_IF_RANGE', version.etag) == version.etag:  # a stale If-Range gets it all
        try:
            wanted = ranges.parse_ranges(env.get('HTTP_RANGE'), version.size)
        except ranges.Unsatisfiable:
            raise RangeNotSatisfiable(version.size)
    if wanted and len(wanted) > 1:
        return byteranges_response(version, wanted)
    web.header('Content-Type', version.content_type)
    first, last = wanted[0] if wanted else (0, version.size - 1)
    if wanted:
        web.ctx.status = '206 Partial Content'
        web.header('Content-Range', 'bytes %d-%d/%d' % (first, last, version.size))
    web.header('Content-Length', str(last - first + 1))
    if version.size == 0:
        return b''
    body = store().open_value(version, first, last)
    return body if version.chunk_size else b''.join(body)


def byteranges_response(version, wanted):
    """206 with several ranges of a value: multipart/byteranges (RFC 9110 14.6),
    a part per range with its own Content-Type and Content-Range."""
    boundary = uuid.uuid4().hex.encode()
    heads = [b'--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n' % (
        boundary, version.content_type.encode(), first, last, version.size) for first, last in wanted]
    end = b'--%s--\r\n' % boundary
    web.ctx.status = '206 Partial Content'
    web.header('Content-Type', 'multipart/byteranges; boundary=%s' % boundary.decode())
    web.header('Content-Length', str(sum(len(head) + last - first + 1 + 2
                                         for head, (first, last) in zip(heads, wanted)) + len(end)))
    # An inline value is checked and read once; a chunked one streams each range.
    whole = None if version.chunk_size else b''.join(store().open_value(version))

    def parts():
        for head, (first, last) in zip(heads, wanted):
            yield head
            if whole is None:
                yield from store().open_value(version, first, last)
            else:
                yield whole[first:last + 1]
            yield b'\r\n'
        yield end
    return parts() if version.chunk_size else b''.join(parts())


def representation_headers(version):
    """[(header, value)]: the Content-Encoding, -Disposition and -Language stored with a value."""
    return [(STORED_HEADERS[name], version.metadata[name]) for name in REPRESENTATION_HEADERS
            if name in version.metadata]


def accepts_stored_type(content_type):
    """Does the client's Accept admit the type the value was stored with?"""
    accept = web.ctx.env.get('HTTP_ACCEPT')
    if not accept:
        return True
    try:
        return mimeparse.quality(content_type, accept) > 0
    except mimeparse.MimeTypeParseException:
        raise BadRequest('bad_header', 'Accept is not a list of media ranges')


def siblings_response(bucket, key, read):
    """300 Multiple Choices: concurrent versions the client must resolve, as a
    document, or as multipart/mixed with each sibling's raw value when asked."""
    metrics.siblings_served()
    caching_headers(bucket, read.current)
    if prefers(MULTIPART):
        web.header('Vary', 'Accept')
        boundary = uuid.uuid4().hex.encode()
        heads = [b'--%s\r\n%s\r\n' % (boundary, ''.join('%s: %s\r\n' % field for field in (
            [('Content-Type', v.content_type), ('ETag', v.etag), ('Last-Modified', last_modified(v))]
            + representation_headers(v))).encode('latin-1')) for v in read.current]
        end = b'--%s--\r\n' % boundary
        length = sum(len(h) + v.size + 2 for h, v in zip(heads, read.current)) + len(end)

        def parts():
            for head, version in zip(heads, read.current):
                yield head
                if version.size:
                    yield from store().open_value(version)
                yield b'\r\n'
            yield end
        web.ctx.status = '300 Multiple Choices'
        web.header('Content-Type', '%s; boundary=%s' % (MULTIPART, boundary.decode()))
        web.header('Content-Length', str(length))
        return parts()
    siblings = [value_document(v) for v in read.current]
    return respond('siblings', {
        'bucket': bucket, 'key': key, 'context': encode_context(read.context, bucket, key),
        'message': 'concurrent writes left %d siblings; PUT one value with this context to resolve them'
                   % len(siblings),
        'siblings': siblings}, '300 Multiple Choices')


def write_key(bucket, key, create_only, server_chosen=False):
    """PUT, POST and server-chosen-key POST: store a value, answer with a receipt."""
    refuse_partial_body()
    store().check_key(bucket, key)
    w, pw = request_quorums('w', 'pw')
    context = request_context(bucket, key)
    preconditions = Preconditions.from_environ(web.ctx.env)
    metadata = request_metadata()
    expected = expected_digests(web.ctx.env)

    def check(current):
        if create_only and current:
            raise AlreadyExists('key %r already exists in bucket %r' % (key, bucket))
        preconditions.check_write(current)

    if (create_only or preconditions.present) and body_may_be_large():
        # Refuse before reading a body that would be thrown away; the write
        # checks again, atomically, on its coordinator.
        try:
            check(store().get(bucket, key).current)
        except Unavailable:
            pass
    value, content_type = request_value()
    # A server-chosen key is new by construction: only a client's condition
    # needs the key's first owner to decide it.
    conditional = preconditions.present or (create_only and not server_chosen)
    receipt = store().put(bucket, key, value, content_type, context=context, check=check, w=w, pw=pw,
                          metadata=metadata, expected=expected, conditional=conditional)
    headers = context_header(bucket, key, receipt)
    if not is_form():   # RFC 9110 9.3.4: the stored bytes are the form's field, not the request's
        headers['ETag'] = receipt.version.etag
    if receipt.created:
        headers['Location'] = key_path(bucket, key)
    return respond('receipt', receipt_document(bucket, key, receipt),
                   '201 Created' if receipt.created else '200 OK', headers)


# -- the application ---------------------------------------------------------------

class ClosingResponse:
    """A WSGI response that calls on_close once the server is done with it."""

    def __init__(self, response, on_close):
        self.response, self.on_close = response, on_close

    def __iter__(self):
        return iter(self.response)

    def close(self):
        try:
            if hasattr(self.response, 'close'):
                self.response.close()
        finally:
            self.on_close()


def create_application(datastore=None):
    """The WSGI application over a datastore (default: from configuration.cfg)."""
    datastore = datastore or Datastore.from_configuration()
    # Classes rather than their names: web.py then matches a path without re.sub.
    routes = tuple(globals()[item] if i % 2 else item for i, item in enumerate(urls))
    app = Application(routes, globals(), autoreload=False)
    policy = access.Policy(datastore, urls)

    def attach_store(handler):
        web.ctx.store = datastore
        return handler()

    def admit(handler):
        """access.py decides before the resource sees the request."""
        try:
            answer = policy.admit()
        except StoreError as e:
            answer = error_response(e)
        return handler() if answer is None else finish_response(answer)

    app.add_processor(attach_store)
    app.add_processor(admit)
    datastore.gossip.start()
    handler = metrics.instrumented(app.wsgifunc(), policy.route)

    def wsgi(environ, start_response):
        restore = framing.reset_if_worker_dies(environ)
        try:
            response = handler(environ, start_response)
        except BaseException:
            restore()
            raise
        return ClosingResponse(response, restore)

    wsgi.datastore = datastore
    wsgi.webapp = app
    return wsgi


def main(argv):
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    try:
        application = create_application()
    except configuration.ConfigError as e:
        print('configuration error: %s' % e, file=sys.stderr)
        return 2
    host, _, port = (argv[1] if len(argv) > 1 else '127.0.0.1:8080').rpartition(':')
    from cheroot import wsgi
    server = wsgi.Server((host or '127.0.0.1', int(port)), application)
    try:
        server.start()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
