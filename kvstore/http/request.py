"""Reading a request: its query, its body (a document, a value, a form), the
quorums and causal context it asks for."""
import email.utils
import io
import json
import re
import urllib.parse

import web

from kvstore.coordinator.expiry import SECOND, Lifetime, bad_expiry
from kvstore.coordinator.versions import BadContext, decode_context, now_micros
from kvstore.errors import BadRequest, BodyTooLarge, TooLarge
from kvstore.http import framing, mediatypes
from kvstore.http.metadata import check_field_value

FORM_TYPES = ('application/x-www-form-urlencoded', 'multipart/form-data')
# A bound of database_definition.sql's columns, checked before a write (as metadata.py's).
MAX_CONTENT_TYPE_BYTES = 255         # content_type VARBINARY(255)
MAX_DOCUMENT_BYTES = 1024 * 1024   # a JSON request body (bucket properties), read whole


def query(name):
    """A query parameter (the last, if repeated), or None; parsed once a request."""
    params = web.ctx.get('query_params')
    if params is None:
        raw = web.ctx.env.get('QUERY_STRING')
        params = web.ctx.query_params = parse_query(raw) if raw else {}
    return params.get(name)


def query_flag(name):
    """A yes/no query parameter: true for true, 1 or yes."""
    return (query(name) or '').lower() in ('true', '1', 'yes')


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
        config = store().config
        return decode_context(header, store().engines, bucket, key, config.max_clock_skew,
                              secret=config.cluster_secret)
    except BadContext as e:
        raise BadRequest('bad_context', str(e))


def request_lifetime():
    """The lifetime a write asks for (expiry.Lifetime): ?ttl=SECONDS or
    ?ttl=none, or X-Expires-At, an HTTP-date; neither: the bucket's default."""
    ttl = query('ttl') or None
    header = web.ctx.env.get('HTTP_X_EXPIRES_AT')
    at = None
    if header is not None:
        try:
            parsed = email.utils.parsedate_tz(header)
            at = email.utils.mktime_tz(parsed) * SECOND if parsed and parsed[9] == 0 else None
        except (ValueError, OverflowError):
            pass
        if at is None:
            raise bad_expiry('X-Expires-At is an HTTP-date (RFC 9110 5.6.7), such as Sun, 06 Nov 1994 08:49:37 GMT')
    return Lifetime.asked(ttl, at, now_micros())


def request_body(limit, too_large):
    """The request body as a stream of at most limit bytes (framing.RequestBody)."""
    body = web.ctx.request_body = framing.RequestBody(web.ctx.env, limit, too_large)
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
    if mediatypes.single_type(content_type) is None:
        # A browser splits at commas and takes the last type that parses: a value
        # stored as `text/plain, text/html` would be HTML to it.
        raise BadRequest('bad_header', 'Content-Type must be exactly one media type (type/subtype and '
                         'parameters, and no comma), as browsers read it')
    check_field_value('Content-Type', content_type)
    if len(content_type.encode('utf-8')) > MAX_CONTENT_TYPE_BYTES:
        raise BadRequest('bad_header', 'Content-Type takes at most %d bytes' % MAX_CONTENT_TYPE_BYTES)
    return body, content_type


def is_form():
    """Is the request body a form, whose `value` field is stored rather than its bytes?"""
    return (web.ctx.env.get('CONTENT_TYPE') or '').split(';')[0].strip().lower() in FORM_TYPES


def body_may_be_large():
    """Is the body worth refusing before it is read?"""
    env = web.ctx.env
    declared = env.get('CONTENT_LENGTH')
    return (not declared or not declared.isdigit() or int(declared) > store().config.chunk_size
            or env.get('HTTP_EXPECT', '').lower() == '100-continue')


IDEMPOTENCY_KEY_LENGTH = 255
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_TOKEN = re.compile(r'[\x21\x23-\x5b\x5d-\x7e]+')


def request_idempotency_key():
    """The Idempotency-Key header (the IETF httpapi draft: a Structured Field
    string, "…"; a bare token is taken too), or None."""
    raw = web.ctx.env.get('HTTP_IDEMPOTENCY_KEY')
    if raw is None:
        return None
    raw = raw.strip(' \t')
    quoted, bare = _SF_STRING.fullmatch(raw), _TOKEN.fullmatch(raw)
    key = re.sub(r'\\(.)', r'\1', quoted.group(1)) if quoted else raw if bare else None
    if not key or len(key) > IDEMPOTENCY_KEY_LENGTH:
        raise BadRequest('bad_idempotency_key', 'Idempotency-Key is a quoted string of 1 to %d printable ASCII '
                         'characters' % IDEMPOTENCY_KEY_LENGTH)
    return key
