#!/usr/bin/env python3
"""The HTTP interface: web.py resources that translate HTTP to the datastore.

The URL table, one small class per resource with one method per verb, and
create_application.  How a request is read (kvstore/http/request.py,
metadata.py), how answers are negotiated and errors written (negotiation.py),
how values, ranges and siblings are sent (values.py), dates and caching
headers (caching.py) and the application around it all (application.py) are
kvstore/http modules; storage decisions belong to the datastore.

Serve it with `make run` (serve.py: Granian), or `python controller.py
[host:port]` for a development server (cheroot).
"""
import dataclasses
import hashlib
import json
import logging
import os
import sys
import uuid

import web

from datastore import MAX_LIST_LIMIT, Datastore, IdempotencyKey
from kvstore import configuration, metrics
from kvstore.coordinator import gossip, status
from kvstore.coordinator.expiry import MAX_TTL, check_ttl_property
from kvstore.coordinator.paging import page_before
from kvstore.coordinator.integrity import expected_digests
from kvstore.coordinator.versions import decode_token, encode_token
from kvstore.errors import AlreadyExists, BadRequest, Forbidden, NotAcceptable, NotFound, StoreError, Unavailable
from kvstore.http import access
from kvstore.http.application import Application, finish_response
from kvstore.http.batches import read_batch, result
from kvstore.http.caching import (bucket_etag, caching_headers, expiry_header, last_modified, not_modified,
                                  own_headers, record_etag, repr_digest)
from kvstore.http.feed import changes_response
from kvstore.http.links import bucket_path, key_path, listing_path
from kvstore.http.metadata import request_metadata
from kvstore.http.negotiation import accepts_stored_type, document_type, error_response, prefers, respond
from kvstore.http.preconditions import NOT_MODIFIED, Preconditions
from kvstore.http.request import (body_may_be_large, is_form, parse_json, query, query_flag, refuse_partial_body,
                                  request_context, request_idempotency_key, request_lifetime,
                                  request_document, request_quorums, request_value, store)
from kvstore.http.values import (context_header, issued_context, listed_key, receipt_document, siblings_response,
                                 value_document,
                                 value_response)

log = logging.getLogger('kvstore.controller')
web.config.debug = os.environ.get('WEBPY_ENV') == 'development'

# web.py tries these in order: the one nearly every request takes comes first.
urls = (
    '/buckets/([^/]+)/keys/([\\s\\S]+)', 'Key',
    '/buckets/([^/]+)/keys', 'Keys',
    '/buckets/([^/]+)/batch', 'Batch',
    '/buckets/([^/]+)/changes', 'Changes',
    '/buckets/([^/]+)', 'Bucket',
    '/buckets', 'Buckets',
    '/cluster', 'Cluster',
    '/cluster/locate', 'ClusterLocate',
    '/cluster/gossip', 'ClusterGossip',
    '/health', 'Health',
    '/metrics', 'Metrics',
    '/ready', 'Ready',
    '/', 'Index',
)
# Bucket properties a client may set, and what each accepts.
BUCKET_PROPERTIES = {
    'conflicts': ('siblings or lww', lambda v: v in ('siblings', 'lww')),
    **{name: ('the default %s of the bucket\'s keys, %d to N' % (name, least),
              lambda v, least=least: type(v) is int and least <= v <= store().n)
       for name, least in (('r', 1), ('w', 1), ('pr', 0), ('pw', 0))},
    'cache_control': ('a Cache-Control value for the values of the bucket',
                      lambda v: isinstance(v, str) and 0 < len(v) <= 256 and v.isascii() and v.isprintable()),
    'cors': access.CORS_PROPERTY,
    'ttl': ('seconds the bucket\'s values live unless a write says otherwise, 1 to %d, or null' % MAX_TTL,
            check_ttl_property),
}
LIMIT_DIGITS = len(str(MAX_LIST_LIMIT))
MAX_DELIMITER_CHARS = 64   # S3 takes any; "/" is the one in use


class Index:
    def GET(self):
        return respond('index', {
            'service': 'kvstore: an HTTP key-value and blob store over MySQL/MariaDB partitions',
            'documentation': 'docs/API.md',
            'endpoints': [
                {'method': m, 'path': p, 'does': d} for m, p, d in (
                    ('GET', '/cluster', 'partitions: health, keys, bytes, hints, pending; the ring, sync, rebalance'),
                    ('GET', '/cluster/locate?bucket={bucket}&key={key}', 'where a key lives and what each '
                     'partition holds of it'),
                    ('GET', '/health', 'this front end answers: 200'),
                    ('GET', '/metrics', 'counts and gauges for Prometheus (text format)'),
                    ('GET', '/ready', 'enough partitions answer for the default quorums: 200, else 503'),
                    ('GET', '/buckets', 'list buckets'),
                    ('PUT', '/buckets/{bucket}', 'create a bucket or set its properties'),
                    ('GET', '/buckets/{bucket}', 'a bucket\'s properties and key count'),
                    ('DELETE', '/buckets/{bucket}', 'delete an empty bucket (?force=true: with its keys)'),
                    ('GET', '/buckets/{bucket}/keys', 'list keys: ?prefix=&limit=&cursor= (or &before=)'),
                    ('POST', '/buckets/{bucket}/keys', 'store a value under a new server-chosen key'),
                    ('POST', '/buckets/{bucket}/batch', 'read, write and delete many keys, each answered '
                     'on its own (not atomic)'),
                    ('GET', '/buckets/{bucket}/changes', 'the bucket\'s changes after a cursor: ?since=&limit=&wait= '
                     '(or a stream: Accept: text/event-stream, application/x-ndjson)'),
                    ('GET', '/buckets/{bucket}/keys/{key}', 'read a value (?r=; ?as=record: its record)'),
                    ('PUT', '/buckets/{bucket}/keys/{key}', 'create or replace a value (?w=)'),
                    ('POST', '/buckets/{bucket}/keys/{key}', 'create a value only if the key is new'),
                    ('DELETE', '/buckets/{bucket}/keys/{key}', 'delete a value'),
                )],
            'replicas': store().n, 'r': store().config.r, 'w': store().config.w,
        })


class Cluster:
    def GET(self):
        return respond('cluster', store().cluster_status())


class ClusterLocate:
    """Where a key lives: it shows the key's versions, so it needs read access to the bucket."""

    def GET(self):
        bucket, key = query('bucket'), query('key')
        for name, value in (('bucket', bucket), ('key', key)):
            if not value:
                raise BadRequest('bad_parameter', '?bucket=B&key=K: %s is missing' % name, parameter=name)
        store().check_key(bucket, key)
        if not access.may_read(bucket):
            raise Forbidden('forbidden', 'the token does not give read on bucket %r' % bucket)
        return respond('locate', status.locate(store(), bucket, key))


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
        host, nonce = env.get('HTTP_HOST'), env.get('HTTP_X_GOSSIP_NONCE')
        peers.admit(host, env.get('HTTP_X_GOSSIP_TIMESTAMP'), nonce, env.get('HTTP_X_GOSSIP_SIGNATURE'), body)
        try:
            view = parse_json(body)['partitions']
            if not isinstance(view, dict):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise BadRequest('bad_body', 'gossip is a JSON object {"partitions": {name: observation}}')
        answer = respond('gossip', {'partitions': peers.receive(view)}, format_override='json')
        for name, value in gossip.signed_headers(peers.secret, gossip.ANSWER, host, answer, nonce).items():
            web.header(name, value)
        return answer


class Buckets:
    def GET(self):
        names = [b for b in store().bucket_names() if access.may_read(b)]
        if Preconditions.from_environ(web.ctx.env).evaluate_untagged() == NOT_MODIFIED:
            return not_modified()
        return respond('buckets', {'buckets': names})


class Bucket:
    def GET(self, bucket):
        props = store().bucket_properties(bucket)
        if props is None:
            raise NotFound('no bucket %r' % bucket)
        doc = {'bucket': bucket, 'properties': props, 'keys': listing_path(bucket)}
        if query_flag('count'):
            # The count changes with every write of a key: this answer has no validator.
            doc['key_count'] = store().count_keys(bucket)
            return respond('bucket', doc)
        etag = bucket_etag(props)
        web.header('ETag', etag)
        if Preconditions.from_environ(web.ctx.env).evaluate_validators([etag], None, safe=True) == NOT_MODIFIED:
            return not_modified()
        return respond('bucket', doc)

    def PUT(self, bucket):
        refuse_partial_body()
        props = self.requested_properties()
        self.check_preconditions(bucket)
        created = store().create_bucket(bucket, props)
        props = store().bucket_properties(bucket)
        headers = {'ETag': bucket_etag(props)}
        if created:
            headers['Location'] = bucket_path(bucket)
        return respond('bucket', {'bucket': bucket, 'created': created, 'properties': props},
                       '201 Created' if created else '200 OK', headers)

    def DELETE(self, bucket):
        force = query_flag('force')
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
        prefix, delimiter = query('prefix') or '', self.delimiter()
        limit = self.limit()
        after, before = self.cursor_key('cursor'), self.cursor_key('before')
        if after is not None and before is not None:
            raise BadRequest('bad_parameter', 'a page is after a cursor or before one, not both', parameter='before')
        if before is not None:   # the page before: found from the start, then listed as a page after
            after, earlier = page_before(store(), bucket, prefix, before, limit, delimiter)
        else:
            earlier = after is not None
        # A browser's page shows each key's size, type and date.
        details = query_flag('details') or prefers('text/html')
        page = store().list_keys(bucket, prefix=prefix, limit=limit, after=after, delimiter=delimiter,
                                 details=details)
        entries = sorted(page.keys + page.prefixes)
        if not entries and after is None and before is None and store().bucket_properties(bucket) is None:
            raise NotFound('no bucket %r' % bucket)
        if Preconditions.from_environ(web.ctx.env).evaluate_untagged() == NOT_MODIFIED:
            return not_modified()
        doc = {'bucket': bucket, 'prefix': prefix, 'limit': limit, 'keys': page.keys, 'next_cursor': None,
               'previous_cursor': None}
        if delimiter:
            doc.update(delimiter=delimiter, common_prefixes=page.prefixes)
        if details:
            doc['details'] = [listed_key(key, page.versions[key]) for key in page.keys]
        links = []
        if page.next_after is not None:
            doc['next_cursor'] = encode_token(page.next_after.encode('utf-8'))
            links.append('<%s>; rel="next"' % listing_path(bucket, prefix, limit, cursor=doc['next_cursor'],
                                                           delimiter=delimiter))
        if earlier and entries:
            doc['previous_cursor'] = encode_token(entries[0].encode('utf-8'))
            links.append('<%s>; rel="prev"' % listing_path(bucket, prefix, limit, before=doc['previous_cursor'],
                                                           delimiter=delimiter))
        return respond('keys', doc, headers={'Link': ', '.join(links)} if links else None)

    def POST(self, bucket):
        # A retry with the same Idempotency-Key names the same key, and finds its record there.
        idempotency_key = request_idempotency_key()
        key = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32] if idempotency_key else uuid.uuid4().hex
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
    def delimiter():
        raw = query('delimiter') or None
        if raw is not None and len(raw) > MAX_DELIMITER_CHARS:
            raise BadRequest('bad_parameter', 'a delimiter is at most %d characters' % MAX_DELIMITER_CHARS,
                             parameter='delimiter')
        return raw

    @staticmethod
    def cursor_key(name):
        raw = query(name)
        if not raw:
            return None
        try:
            return decode_token(raw).decode('utf-8')
        except ValueError:
            raise BadRequest('bad_parameter', '%s is not a cursor this store issued' % name, parameter=name)


class Batch:
    """Many keys of a bucket read, written and deleted in one request, each answered on its own."""

    def POST(self, bucket):
        if request_idempotency_key() is not None:
            raise BadRequest('bad_header', 'Idempotency-Key is not taken on a batch: its operations are '
                             'not one write (send each write that needs one alone)')
        store().check_bucket(bucket)
        operations = read_batch(bucket)
        if any(op.op != 'get' for op in operations):
            access.require(access.WRITE, bucket)
        outcomes = store().batch(bucket, operations, *request_quorums('r', 'pr', 'w', 'pw'))
        return respond('batch', {'bucket': bucket,
                                 'results': [result(bucket, op, outcome) for op, outcome in zip(operations, outcomes)]})


class Changes:
    """The bucket's change feed: pages, long polls and streams (kvstore/http/feed.py)."""

    def GET(self, bucket):
        return changes_response(bucket)


class Key:
    def GET(self, bucket, key):
        as_record = self.record_asked()
        read = store().get(bucket, key, *request_quorums('r', 'pr'))
        current = read.current
        if not current:
            raise NotFound('no key %r in bucket %r' % (key, bucket))
        if len(current) > 1:
            web.header('X-Context', issued_context(read.context, bucket, key))
            return siblings_response(bucket, key, read)
        version = current[0]
        raw = not as_record and accepts_stored_type(version.content_type)
        record = None if raw else document_type()
        if not raw and record is None:
            raise NotAcceptable('the value is %s, and no document type is acceptable either'
                                % version.content_type)
        if raw:   # each representation has its own ETag; the raw bytes also their digest
            etag_of = None
            own_headers(('X-Context', issued_context(read.context, bucket, key)), ('ETag', version.etag),
                        ('Repr-Digest', repr_digest(version)), ('Last-Modified', last_modified(version)))
        else:
            def etag_of(v):
                return record_etag(v, record)
            own_headers(('X-Context', issued_context(read.context, bucket, key)), ('ETag', etag_of(version)),
                        ('Last-Modified', last_modified(version)))
        own_headers(*expiry_header(version).items())
        caching_headers(bucket, current)
        if Preconditions.from_environ(web.ctx.env).evaluate(current, safe=True, etag_of=etag_of) == NOT_MODIFIED:
            return not_modified()
        if raw:
            own_headers(('Vary', 'Accept'))  # a document gets it from the negotiation
            return value_response(bucket, version)
        doc = dict(bucket=bucket, key=key, context=issued_context(read.context, bucket, key),
                   **value_document(version))
        return respond('record', doc)

    @staticmethod
    def record_asked():
        """?as=record: the record document, though Accept admits the value's own type (a page's link)."""
        asked = query('as')
        if asked not in (None, 'record'):
            raise BadRequest('bad_parameter', 'as is "record" or absent', parameter='as')
        return asked == 'record'

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
                                 w=w, pw=pw, conditional=preconditions.present, idempotency=request_idempotency())
        doc = receipt_document(bucket, key, receipt)
        doc['deleted'] = True
        return respond('receipt', doc, headers=context_header(bucket, key, receipt))


def request_idempotency(content_type='', metadata=None, lifetime=None):
    """The request's IdempotencyKey (None without the header): its key, and
    what the request asks for besides its body, which a retry repeats."""
    key = request_idempotency_key()
    if key is None:
        return None
    env = web.ctx.env
    asked = [web.ctx.method, content_type, metadata or {}] + [env.get('HTTP_' + name) for name in (
        'IF_MATCH', 'IF_NONE_MATCH', 'IF_UNMODIFIED_SINCE', 'X_CONTEXT')]
    if lifetime is not None and lifetime.given:   # left out otherwise, as in the records made before it
        asked.append(dataclasses.astuple(lifetime))
    return IdempotencyKey(key, json.dumps(asked, sort_keys=True))


def write_key(bucket, key, create_only, server_chosen=False):
    """PUT, POST and server-chosen-key POST: store a value, answer with a receipt."""
    refuse_partial_body()
    store().check_key(bucket, key)
    w, pw = request_quorums('w', 'pw')
    context = request_context(bucket, key)
    preconditions = Preconditions.from_environ(web.ctx.env)
    metadata = request_metadata()
    expected = expected_digests(web.ctx.env)
    lifetime = request_lifetime()

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
                          metadata=metadata, expected=expected, conditional=conditional,
                          idempotency=request_idempotency(content_type, metadata, lifetime), lifetime=lifetime)
    headers = dict(context_header(bucket, key, receipt), **expiry_header(receipt.version))
    if not is_form():   # RFC 9110 9.3.4: the stored bytes are the form's field, not the request's
        headers['ETag'] = receipt.version.etag
    if receipt.created:
        headers['Location'] = key_path(bucket, key)
    return respond('receipt', receipt_document(bucket, key, receipt),
                   '201 Created' if receipt.created else '200 OK', headers)


def create_application(datastore=None):
    """The WSGI application over a datastore (default: from configuration.cfg)."""
    datastore = datastore or Datastore.from_configuration()
    # Classes rather than their names: web.py then matches a path without re.sub.
    routes = tuple(globals()[item] if i % 2 else item for i, item in enumerate(urls))
    app = Application(routes, globals(), autoreload=False)
    policy = access.Policy(datastore, app.route)

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
    wsgi = metrics.instrumented(app.wsgifunc(), app.route)
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
