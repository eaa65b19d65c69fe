"""Dates and caching: HTTP dates, Last-Modified, Cache-Control and Expires,
validators (a record's ETag, a bucket's ETag, a value's Repr-Digest)."""
import base64
import email.utils
import functools
import hashlib
import json
import time

import web

from kvstore.http.request import store

_DAYS = ('Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun')
_MONTHS = ('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec')


def own_headers(*fields):
    """Add response header fields (name, value) whose values the store makes
    itself (dates, numbers, entity tags, contexts, digests: no CR or LF can be
    in them), without web.header's checks, which values read from a request
    or stored with a value still take (a GET's headers were a tenth of its
    web layer's time)."""
    web.ctx.headers.extend(fields)


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


def expires_at(version):
    """When a value is gone, as an HTTP-date: the first whole second at or
    after its expiry (the store sets whole seconds)."""
    return http_date(-(-version.expires // 1000000) * 1000000)


def expiry_header(version):
    """{X-Expires-At: date} for a value that expires, else {}.  Not Expires,
    which says how long a cache may reuse an answer (RFC 9111 5.3), and which
    a value keeps as a stored header of its own (metadata.py)."""
    return {'X-Expires-At': expires_at(version)} if version.expires and not version.deleted else {}


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


def not_modified():
    """A 304: no body; the validators and caching headers are already set."""
    web.header('Vary', 'Accept')
    web.ctx.status = '304 Not Modified'
    return b''


def record_etag(version, media_type):
    """A version's ETag as a record of media_type (a JSON, XML, HTML or text
    document about it): its own, apart from the raw value's and the other
    types' (RFC 9110 8.8.3).  Weak: the record's context may list other clocks
    from one read to the next."""
    return 'W/"%s:%s"' % (version.version_id, media_type)


def repr_digest(version):
    """RFC 9530 Repr-Digest of the raw value: the SHA-256 of its bytes."""
    return 'sha-256=:%s:' % base64.b64encode(bytes.fromhex(version.digest)).decode('ascii')


def bucket_etag(properties):
    """A bucket's entity tag: a digest of its properties, the state a PUT or DELETE may be conditioned on."""
    canonical = json.dumps(properties, sort_keys=True, separators=(',', ':')).encode('utf-8')
    return '"%s"' % hashlib.sha256(canonical).hexdigest()[:32]
