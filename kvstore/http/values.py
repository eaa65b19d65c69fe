"""Writing answers about values: the raw bytes (whole, a range, several ranges
as multipart/byteranges), siblings (300), a value inside a record, a write's receipt."""
import base64
import uuid

import web

from kvstore import metrics
from kvstore.coordinator.versions import encode_context
from kvstore.errors import RangeNotSatisfiable
from kvstore.http import ranges
from kvstore.http.caching import caching_headers, expires_at, expiry_header, last_modified, own_headers
from kvstore.http.metadata import STORED_HEADERS, representation_headers
from kvstore.http.negotiation import prefers, respond
from kvstore.http.request import store

MULTIPART = 'multipart/mixed'
TEXTUAL = ('text/', 'application/json', 'application/xml', 'application/javascript')


def issued_context(clock, bucket, key):
    """The X-Context of a clock for this key, signed with [cluster] secret if set."""
    return encode_context(clock, bucket, key, store().config.cluster_secret)


def value_document(version):
    """A version's value inside a document: text when it is text, else base64;
    a value too large for one chunk is left out (GET it raw, with ranges)."""
    doc = {'content_type': version.content_type, 'etag': version.etag, 'sha256': version.digest,
           'last_modified': last_modified(version), 'size': version.size}
    if version.expires:
        doc['expires_at'] = expires_at(version)
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


def listed_key(key, versions):
    """A key of a listing with details: its live version's size, type, date
    and ETag; for siblings, how many there are."""
    if len(versions) > 1:
        return {'key': key, 'siblings': len(versions)}
    version = versions[0]
    listed = {'key': key, 'size': version.size, 'content_type': version.content_type,
              'last_modified': last_modified(version), 'etag': version.etag}
    if version.expires:
        listed['expires_at'] = expires_at(version)
    return listed


def context_header(bucket, key, receipt):
    return {'X-Context': issued_context(receipt.context, bucket, key)} if receipt.context is not None else {}


def receipt_document(bucket, key, receipt):
    doc = {'bucket': bucket, 'key': key}
    if not receipt.version.deleted:
        doc['etag'] = receipt.version.etag
        doc['sha256'] = receipt.version.digest
        if receipt.version.expires:
            doc['expires_at'] = expires_at(receipt.version)
    doc.update(context=issued_context(receipt.context, bucket, key) if receipt.context is not None else None,
               clock=receipt.context, siblings=receipt.siblings,
               preference_list=receipt.preference_list, acknowledged=receipt.acknowledged,
               coordinator=receipt.coordinator, hints=receipt.hints, down=receipt.down,
               owners_acknowledged=len(receipt.acknowledged), fallbacks_acknowledged=len(receipt.hints))
    if receipt.replayed:   # the outcome of an earlier attempt with the same Idempotency-Key
        doc['replayed'] = True
    return doc


def value_response(bucket, version):
    """The stored bytes, whole or the one range asked for, streamed chunk by chunk."""
    env = web.ctx.env
    for name, value in version.metadata.get('meta', {}).items():
        web.header('X-Meta-' + name.title(), value)
    own_headers(('Accept-Ranges', 'bytes'))
    wanted = None
    if env.get('HTTP_IF_RANGE', version.etag) == version.etag:  # a stale If-Range gets it all
        try:
            wanted = ranges.parse_ranges(env.get('HTTP_RANGE'), version.size)
        except ranges.Unsatisfiable:
            raise RangeNotSatisfiable(version.size)
    if wanted and len(wanted) > 1:
        return byteranges_response(version, wanted)
    for name, value in representation_headers(version):
        web.header(name, value)
    web.header('Content-Type', version.content_type)
    first, last = wanted[0] if wanted else (0, version.size - 1)
    if wanted:
        web.ctx.status = '206 Partial Content'
        own_headers(('Content-Range', 'bytes %d-%d/%d' % (first, last, version.size)))
    own_headers(('Content-Length', str(last - first + 1)))
    if version.size == 0:
        return b''
    body = store().open_value(version, first, last)
    return body if version.chunk_size else b''.join(body)


def byteranges_response(version, wanted):
    """206 with several ranges of a value: multipart/byteranges (RFC 9110 14.6),
    a part per range with its own Content-Type and Content-Range.  The ranges
    are of the stored representation, encoding included (RFC 9110 14.1.2):
    its Content-Encoding and the rest describe each part, not the multipart
    (which no client is to decode), so they go in each part's header."""
    boundary = uuid.uuid4().hex.encode()
    described = ''.join('%s: %s\r\n' % header for header in representation_headers(version)).encode('latin-1')
    heads = [b'--%s\r\nContent-Type: %s\r\n%sContent-Range: bytes %d-%d/%d\r\n\r\n' % (
        boundary, version.content_type.encode(), described, first, last, version.size) for first, last in wanted]
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
            + representation_headers(v) + list(expiry_header(v).items()))).encode('latin-1')) for v in read.current]
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
        'bucket': bucket, 'key': key, 'context': issued_context(read.context, bucket, key),
        'message': 'concurrent writes left %d siblings; PUT one value with this context to resolve them'
                   % len(siblings),
        'siblings': siblings}, '300 Multiple Choices')
