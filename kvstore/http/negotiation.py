"""Negotiation: which document type a client gets, and the error documents.

Every answer that is not a raw value is a document (documents.py) in the
type the request's Accept header prefers; every error is one too, with a
stable `code` whose HTTP status is STATUS[code].
"""
import functools

import mimeparse
import mimerender
import web

from kvstore.errors import BadRequest
from kvstore.http import documents, pages

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
    'cursor_expired': '410 Gone',
    'bucket_not_empty': '409 Conflict',
    'too_many_siblings': '409 Conflict',
    'precondition_failed': '412 Precondition Failed',
    'idempotency_key_reused': '422 Unprocessable Content',
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
    'method_not_implemented': '501 Not Implemented',
}
def render_page(document, root):
    """pages.render_page, marked as the store's own page: access.py lets its
    one form (the key list's search) submit, as it lets no stored value."""
    web.ctx.own_page = True
    return pages.render_page(document, root)


RENDERERS = dict(json=documents.render_json, xml=documents.render_xml, html=render_page,
                 txt=documents.render_text)
DOCUMENT_TYPES = [m for short in RENDERERS for m in mimerender._get_mime_types(short)]
# The order mimerender offers them to mimeparse (the default's last: it wins
# ties), so that document_type() names the type the body is rendered in.
OFFERED_TYPES = ([m for m in DOCUMENT_TYPES if m not in mimerender._get_mime_types('json')]
                 + list(mimerender._get_mime_types('json')))


def _not_acceptable(accept, supported):
    body = documents.render_json(error_document(
        'not_acceptable', 'none of the offered types is acceptable: %s' % ', '.join(DOCUMENT_TYPES)), 'error')
    return 'application/json; charset=utf-8', body


negotiate = mimerender.WebPyMimeRender()


@negotiate(default='json', charset='utf-8', override_arg_idx=-1,
           not_acceptable_callback=_not_acceptable, **RENDERERS)
def _negotiated(root, document, status, headers, format_override):
    return {'document': document, 'root': root}, status, headers


def respond(root, document, status='200 OK', headers=None, format_override=None):
    """A document in the representation the client's Accept header prefers."""
    if format_override is None and document_type() == 'application/json':   # (a bad Accept: 400)
        # JSON, nearly every client's choice, is not negotiated again by
        # mimerender: it would choose it too (JSON wins ties in both orders).
        format_override = 'json'
    body = _negotiated(root, document, status, headers or {}, format_override).encode('utf-8')
    web.header('Content-Length', str(len(body)))
    return body


def document_type():
    """The document media type the client accepts best (as mimerender picks
    it), or None."""
    return best_document(web.ctx.env.get('HTTP_ACCEPT'))[0]


def document_format():
    """The short name of the document type the client accepts best, or None."""
    return best_document(web.ctx.env.get('HTTP_ACCEPT'))[1]


@functools.lru_cache(maxsize=256)   # clients send a few Accept values, each parsed once
def best_document(accept):
    """(media type, short name) of the document type Accept prefers, or (None, None)."""
    if not accept:
        return 'application/json', 'json'
    try:
        best = mimeparse.best_match(OFFERED_TYPES, accept) or None
    except mimeparse.MimeTypeParseException:
        raise BadRequest('bad_header', 'Accept is not a list of media ranges')
    return best, mimerender._get_short_mime(best) if best else None


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


def error_response(e):
    return respond_error(e.code, e.message, dict(e.headers), **e.details)


def prefers(media_type):
    """Is media_type the client's first choice over every document type?"""
    accept = web.ctx.env.get('HTTP_ACCEPT')
    if not accept:
        return False
    try:
        return mimeparse.best_match([media_type] + DOCUMENT_TYPES[::-1], accept) == media_type
    except mimeparse.MimeTypeParseException:
        return False


def accepts_stored_type(content_type):
    """Does the client's Accept admit the type the value was stored with?"""
    accept = web.ctx.env.get('HTTP_ACCEPT')
    if not accept:
        return True
    try:
        return accepts(content_type, accept)
    except mimeparse.MimeTypeParseException:
        raise BadRequest('bad_header', 'Accept is not a list of media ranges')


@functools.lru_cache(maxsize=256)   # a client sends the same Accept, for values of a few types
def accepts(content_type, accept):
    return mimeparse.quality(content_type, accept) > 0
