"""A batch request (POST /buckets/{bucket}/batch): its JSON body read into
operations, and each operation's outcome written as an item of the answer.

Every operation is checked before any runs: a body that is not a batch, an
operation that is not one, a key named twice, too many operations or too
many bytes refuse the whole batch (400 or 413), and nothing is done.  Once
it runs, each operation has an outcome of its own (docs/API.md, Batches).
"""
import base64
import binascii

from kvstore.coordinator.batches import DELETE, GET, PUT, Operation
from kvstore.coordinator.expiry import NEVER, Lifetime
from kvstore.coordinator.versions import now_micros
from kvstore.errors import BadRequest, BatchTooLarge, StoreError, TooLarge, TooManyOperations
from kvstore.http.negotiation import error_document
from kvstore.http.preconditions import Preconditions
from kvstore.http.request import check_content_type, client_context, parse_json, request_body, store
from kvstore.http.values import issued_context, receipt_document, value_document

MAX_OPERATIONS = 1000                # operations in one batch
MAX_BATCH_BYTES = 4 * 1024 * 1024    # the body of one batch
# The fields each operation may have; `op` and `key` it must.
FIELDS = {GET: {'op', 'key'},
          PUT: {'op', 'key', 'value', 'value_base64', 'content_type', 'context', 'if_match', 'if_none_match', 'ttl'},
          DELETE: {'op', 'key', 'context', 'if_match', 'if_none_match'}}
TEXT_TYPE = 'text/plain; charset=utf-8'        # a value sent as `value` (text)
BINARY_TYPE = 'application/octet-stream'       # a value sent as `value_base64`


def read_batch(bucket):
    """The request's operations, every one checked: [Operation]."""
    body = request_body(MAX_BATCH_BYTES, lambda: BatchTooLarge(
        'a batch\'s body takes at most %d bytes' % MAX_BATCH_BYTES, limit=MAX_BATCH_BYTES)).read_all()
    try:
        document = parse_json(body)
    except ValueError:
        raise BadRequest('bad_body', 'a batch is a JSON object {"operations": [...]}')
    if not isinstance(document, dict) or set(document) != {'operations'} \
            or not isinstance(document['operations'], list):
        raise BadRequest('bad_body', 'a batch is a JSON object {"operations": [...]} and nothing else')
    items = document['operations']
    if len(items) > MAX_OPERATIONS:
        raise TooManyOperations('a batch holds at most %d operations; this one has %d'
                                % (MAX_OPERATIONS, len(items)), limit=MAX_OPERATIONS)
    operations, seen = [], {}
    for index, item in enumerate(items):
        try:
            op = operation(bucket, item)
        except StoreError as e:
            e.message = 'operation %d: %s' % (index, e.message)
            e.details = dict(e.details, index=index)
            raise
        if op.key in seen:
            raise BadRequest('duplicate_key', 'operations %d and %d both name key %r: a batch names each key '
                             'once' % (seen[op.key], index, op.key), index=index, key=op.key)
        seen[op.key] = index
        operations.append(op)
    return operations


def operation(bucket, item):
    """One item of `operations` as an Operation (BadRequest, TooLarge)."""
    if not isinstance(item, dict) or item.get('op') not in FIELDS:
        raise BadRequest('bad_operation', 'an operation is an object whose op is get, put or delete')
    kind = item['op']
    unknown = set(item) - FIELDS[kind]
    if unknown:
        raise BadRequest('bad_operation', 'a %s takes the fields %s, not %s'
                         % (kind, ', '.join(sorted(FIELDS[kind])), ', '.join(sorted(unknown))))
    key = text_field(item, 'key')
    if key is None:
        raise BadRequest('bad_operation', 'an operation names its key')
    store().check_key(bucket, key)
    if kind == GET:
        return Operation(GET, key)
    context = text_field(item, 'context')
    conditions = Preconditions(text_field(item, 'if_match'), text_field(item, 'if_none_match'))
    op = Operation(kind, key, context=client_context(context, bucket, key) if context else None,
                   check=conditions.check_write if conditions.present else None)
    if kind == PUT:
        op.value, op.content_type = value_of(item)
        ttl = item.get('ttl')
        if ttl is not None:
            if type(ttl) is not int and ttl != NEVER:
                raise BadRequest('bad_expiry', 'ttl is a number of seconds, or "none"')
            op.lifetime = Lifetime.asked(str(ttl), None, now_micros())
    return op


def text_field(item, name):
    """A field's string, None when absent (400 when it is not a string)."""
    value = item.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest('bad_operation', '%s is a string' % name)
    return value


def value_of(item):
    """(bytes, media type) of a put: `value` (text) or `value_base64`, one chunk at most."""
    text, encoded = text_field(item, 'value'), text_field(item, 'value_base64')
    if (text is None) == (encoded is None):
        raise BadRequest('bad_operation', 'a put carries its value as value (text) or value_base64, one of them')
    if text is not None:
        try:
            value, content_type = text.encode('utf-8'), TEXT_TYPE
        except UnicodeEncodeError:   # a lone surrogate, which JSON can escape
            raise BadRequest('bad_operation', 'value is not Unicode text: send it as value_base64')
    else:
        try:
            value, content_type = base64.b64decode(encoded, validate=True), BINARY_TYPE
        except (binascii.Error, ValueError):
            raise BadRequest('bad_operation', 'value_base64 is not base64')
    content_type = text_field(item, 'content_type') or content_type
    check_content_type(content_type)
    config = store().config
    limit = min(config.chunk_size, config.max_value_bytes)
    if len(value) > limit:
        raise TooLarge('a value in a batch is at most %d bytes (one chunk): PUT a larger one alone' % limit,
                       limit=limit)
    return value, content_type


def result(bucket, op, outcome):
    """The answer's item for an operation's outcome (a Read, a Receipt or a StoreError)."""
    item = {'op': op.op, 'key': op.key}
    if isinstance(outcome, StoreError):
        document = error_document(outcome.code, outcome.message, **outcome.details)
        item.update(status=document.pop('status'), **document)
    elif op.op == GET:
        item.update(read_result(bucket, op.key, outcome))
    else:
        item['status'] = 201 if outcome.created and op.op == PUT else 200
        item.update(receipt_document(bucket, op.key, outcome))
        del item['bucket']
        if op.op == DELETE:
            item['deleted'] = True
    return item


def read_result(bucket, key, read):
    current = read.current
    if not current:
        return {'status': 404, 'code': 'not_found', 'message': 'no key %r in bucket %r' % (key, bucket)}
    context = issued_context(read.context, bucket, key)
    if len(current) > 1:
        return {'status': 300, 'context': context, 'siblings': [value_document(v) for v in current]}
    return dict(status=200, context=context, **value_document(current[0]))
