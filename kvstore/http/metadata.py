"""What a value keeps besides its bytes: X-Meta-* headers and the stored
representation and caching headers, read from a write and sent back with a read."""
import json
import re

import web

from kvstore.errors import BadRequest

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


def representation_headers(version):
    """[(header, value)]: the Content-Encoding, -Disposition and -Language stored with a value."""
    return [(STORED_HEADERS[name], version.metadata[name]) for name in REPRESENTATION_HEADERS
            if name in version.metadata]
