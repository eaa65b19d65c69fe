#!/usr/bin/env python3
"""Who may do what, and what a browser may do.

Every request passes Policy.admit before its resource sees it (a web.py
processor, controller.create_application), in this order:

1. Host: a request for a Host this server does not answer to is 421
   (a page whose name was rebound to the server's address).
2. A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method)
   is answered from the bucket's `cors` rules: 204, or 403.
3. Credentials, when [token-NAME] sections are configured: a request
   without a valid `Authorization: Bearer` token is 401, one whose token
   lacks the role the route needs (ROUTE_ROLES) is 403.  Decided from the
   route alone, before the datastore is asked anything, so neither says
   whether a bucket or key exists.
4. Cross-site: a request that changes something and comes, as the browser
   says (Origin, Sec-Fetch-Site, Referer), from another site is 403 unless
   the bucket's `cors` rules allow that origin and method.

Gossip (POST /cluster/gossip) is none of this: peers sign it (gossip.py).
secure_response adds the headers that keep stored values from acting on the
store's origin.  Tokens are kept as their SHA-256 only; make one with

    python3 -m kvstore.http.access token NAME ROLE:PATTERN [ROLE:PATTERN ...]

(ROLE is read, write or admin, each implying the ones before it; PATTERN a
bucket name or an fnmatch pattern), and a cluster secret with

    python3 -m kvstore.http.access secret
"""
import fnmatch
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import urllib.parse

import web

from kvstore.configuration import ROLES
from kvstore.errors import BadRequest, Forbidden, MisdirectedRequest, Unauthenticated
from kvstore.http import framing, mediatypes

READ, WRITE, ADMIN = ROLES
ANY = 'any'          # any valid token
SIGNED = 'signed'    # no token: gossip is signed by the cluster secret
PUBLIC = 'public'    # no token: health checks of supervisors and load balancers
# The role each route and method needs (controller.urls' resources).  Roles
# on a route without a bucket (/cluster) need a grant on every bucket: '*'.
ROUTE_ROLES = {
    'Index': {'GET': ANY},
    'Health': {'GET': PUBLIC},
    'Ready': {'GET': PUBLIC},
    'Cluster': {'GET': ADMIN},
    'ClusterLocate': {'GET': ANY},   # the resource checks read on its ?bucket= (may_read)
    'Metrics': {'GET': ADMIN},
    'ClusterGossip': {'POST': SIGNED},
    'Buckets': {'GET': ANY},
    'Bucket': {'GET': READ, 'PUT': ADMIN, 'DELETE': ADMIN},
    'Keys': {'GET': READ, 'POST': WRITE},
    'Batch': {'POST': READ},   # and write, checked by the resource, for a batch that writes (require)
    'Changes': {'GET': READ},
    'Key': {'GET': READ, 'PUT': WRITE, 'POST': WRITE, 'DELETE': WRITE},
}
SAFE_METHODS = ('GET', 'HEAD', 'OPTIONS')
LOOPBACK_NAMES = ('localhost', '127.0.0.1', '[::1]')
# Types a browser shows without running anything in them; every other
# response is sandboxed (Content-Security-Policy: sandbox): no script, no
# form, and an origin of its own rather than the store's.
SAFE_TYPES = ('text/plain', 'text/csv', 'application/json', 'application/octet-stream',
              'image/png', 'image/jpeg', 'image/gif', 'image/webp', 'image/avif')
SAFE_TYPE_FAMILIES = ('audio/', 'video/')
# Response headers a page allowed by CORS may read.
EXPOSED_HEADERS = ('ETag, X-Context, X-Expires-At, Location, Last-Modified, Content-Range, Accept-Ranges, Link,'
                   ' Feed-Incomplete')
CORS_METHODS = ('GET', 'HEAD', 'PUT', 'POST', 'DELETE')
# Request headers the store acts on: a request from another origin may carry
# them only where its bucket's cors rule allows them, as a preflight asks, but
# for the values a page may send without a preflight (CORS-safelisted, Fetch).
STORE_REQUEST_HEADERS = ('authorization', 'content-type', 'x-context', 'cache-control', 'expires',
                         'content-encoding', 'content-disposition', 'content-language', 'content-range', 'range',
                         'if-match', 'if-none-match', 'if-modified-since', 'if-unmodified-since', 'if-range',
                         'idempotency-key', 'last-event-id', 'x-expires-at')
SAFELISTED_CONTENT_TYPES = ('application/x-www-form-urlencoded', 'multipart/form-data', 'text/plain')
SAFELISTED_RANGE = re.compile(r'bytes=[0-9]+-[0-9]*\Z')
CORS_ORIGIN = re.compile(r'https?://[a-z0-9.*-]+(:[0-9]{1,5})?\Z|\*\Z')
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")
MAX_CORS_RULES, MAX_CORS_BYTES, MAX_CORS_AGE = 16, 2048, 86400
TOKEN_PREFIX = 'kvs_'


class Policy:
    def __init__(self, datastore, route):
        """route(environ): (resource class or None, groups) of a request (Application.route)."""
        config = datastore.config
        self.datastore = datastore
        self.tokens = config.tokens
        self.allowed_hosts = set(config.allowed_hosts)
        bound = os.environ.get('BIND', '').rpartition(':')[0].lower()
        self.local_names = set(LOOPBACK_NAMES) | ({bound} if bound not in ('', '0.0.0.0', '[::]') else set())
        self.route = route

    def admit(self):
        """None to go on to the resource, an answer (a preflight's), or raise a StoreError."""
        env, method = web.ctx.env, web.ctx.method
        resource, groups = self.route(env)
        name, bucket = resource and resource.__name__, groups[0] if groups else None
        role = ROUTE_ROLES.get(name, {}).get('GET' if method == 'HEAD' else method, ANY)
        if role == SIGNED:
            return None
        self.check_host(env)
        if role == PUBLIC:
            return None
        if method == 'OPTIONS' and 'HTTP_ORIGIN' in env and 'HTTP_ACCESS_CONTROL_REQUEST_METHOD' in env:
            return self.preflight(env, bucket)
        web.ctx.grants = self.grants(env, role, bucket) if self.tokens else None
        foreign = foreign_origin(env)
        if foreign is not None:
            origin = env.get('HTTP_ORIGIN')
            if origin is not None and self.cors_rule(bucket, origin, method, requested_headers(env)):
                web.ctx.cors_origin = origin
            elif method not in SAFE_METHODS:
                raise Forbidden('cross_site_refused', 'a request from another site (%s) may not change the '
                                'store unless the bucket\'s cors property allows that origin and method'
                                % foreign[:200])
        return None

    def check_host(self, env):
        host = env.get('HTTP_HOST', '').strip().lower()
        if not host and env.get('SERVER_PROTOCOL') not in framing.HTTP_VERSIONS:
            return   # not a request line at all: framing.py refuses it (bad_framing)
        if not host:   # RFC 9112 3.2 (HTTP/1.1); HTTP/1.0 too, so that no request goes unchecked
            raise BadRequest('bad_header', 'a request must name the Host it is for')
        if '*' in self.allowed_hosts or host in self.allowed_hosts:
            return
        name, port = split_host(host)
        server_port = env.get('SERVER_PORT')
        if name in self.allowed_hosts:
            return
        if name in self.local_names and (port == server_port or port is None and server_port in ('80', '443')):
            return
        raise MisdirectedRequest('this server does not answer to Host %r: add it to [access] allowed_hosts'
                                 % host[:200])

    def grants(self, env, role, bucket):
        """The grants of the request's token, which must give role on bucket."""
        scheme, _, token = env.get('HTTP_AUTHORIZATION', '').strip().partition(' ')
        if not scheme:
            raise Unauthenticated('this store needs a token: Authorization: Bearer TOKEN')
        digest = hashlib.sha256(token.strip().encode('latin-1', 'replace')).hexdigest()
        found = None
        for candidate in self.tokens:   # every one compared: the time says nothing of which matched
            if hmac.compare_digest(candidate.sha256, digest):
                found = candidate
        if scheme.lower() != 'bearer' or found is None:
            raise Unauthenticated('the token is not one this store knows', invalid=True)
        if role != ANY and not grants_role(found.grants, role, bucket):
            raise Forbidden('forbidden', 'the token %r does not give %s on %s' % (
                found.name, role, 'bucket %r' % bucket if bucket is not None else 'every bucket'))
        return found.grants

    def preflight(self, env, bucket):
        origin = env['HTTP_ORIGIN']
        method = env['HTTP_ACCESS_CONTROL_REQUEST_METHOD'].strip()
        headers = [h.strip().lower() for h in env.get('HTTP_ACCESS_CONTROL_REQUEST_HEADERS', '').split(',')
                   if h.strip()]
        if self.tokens and bucket is not None and origin != 'null' and method in CORS_METHODS:
            # A preflight carries no token: its answer must not tell what a
            # bucket's rules are, or that it exists.  Each is let through; the
            # request itself (its token, then its bucket's rules) decides.
            rule = {'methods': [method]}
        else:
            rule = self.cors_rule(bucket, origin, method, headers)
        if not rule:
            raise Forbidden('cross_site_refused', 'no cors rule of this bucket allows %s from %s with %s'
                            % (method[:16], origin[:200], ', '.join(headers)[:200] or 'no headers'))
        web.ctx.status = '204 No Content'
        web.header('Access-Control-Allow-Origin', origin)
        web.header('Access-Control-Allow-Methods', ', '.join(rule['methods']))
        if headers:
            web.header('Access-Control-Allow-Headers', ', '.join(headers))
        if 'max_age' in rule:
            web.header('Access-Control-Max-Age', str(rule['max_age']))
        web.header('Vary', 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers')
        return b''

    def cors_rule(self, bucket, origin, method, headers=()):
        """The bucket's first cors rule that allows origin, method and headers, or None.
        A sandboxed page (a stored value among them) has the origin "null": never allowed."""
        if bucket is None or origin == 'null':
            return None
        try:
            self.datastore.check_bucket(bucket)
        except BadRequest:
            return None
        origin = origin.lower()
        for rule in self.datastore.bucket_properties_cached(bucket).get('cors', ()):
            if (method in rule['methods'] and any(fnmatch.fnmatchcase(origin, o) for o in rule['origins'])
                    and all(any(fnmatch.fnmatchcase(h, a.lower()) for a in rule.get('headers', ()))
                            for h in headers)):
                return rule
        return None


def requested_headers(env):
    """The names of the headers of a request that its bucket's cors rule must
    allow (STORE_REQUEST_HEADERS)."""
    names = []
    for variable, value in env.items():
        name = (variable[5:] if variable.startswith('HTTP_') else variable).replace('_', '-').lower()
        if not (name in STORE_REQUEST_HEADERS or name.startswith('x-meta-')) or (
                name == 'content-type' and getattr(mediatypes.single_type(value), 'essence', None)
                in SAFELISTED_CONTENT_TYPES) or (name == 'range' and SAFELISTED_RANGE.match(value)):
            continue
        names.append(name)
    return names


def grants_role(grants, role, bucket):
    """Do the grants give role (or one above it) on bucket (None: on every bucket)?"""
    least = ROLES.index(role)
    return any(ROLES.index(granted) >= least
               and (pattern == '*' if bucket is None else fnmatch.fnmatchcase(bucket, pattern))
               for granted, pattern in grants)


def require(role, bucket):
    """403 unless this request's token gives role on bucket (a resource that
    knows what it needs only once it has read the body: a batch that writes)."""
    grants = web.ctx.get('grants')
    if grants is not None and not grants_role(grants, role, bucket):
        raise Forbidden('forbidden', 'the token does not give %s on bucket %r' % (role, bucket))


def may_read(bucket):
    """May this request's token read the bucket?  (Listing buckets shows only those.)"""
    grants = web.ctx.get('grants')
    return grants is None or grants_role(grants, READ, bucket)


def split_host(host):
    """('name', 'port' or None) of a Host value; IPv6 literals keep their brackets."""
    if host.startswith('['):
        name, _, rest = host.partition(']')
        return name + ']', rest[1:] if rest.startswith(':') else None
    name, _, port = host.partition(':')
    return name, port or None


def foreign_origin(env):
    """The origin of a request a browser says comes from another site, else None."""
    host = env.get('HTTP_HOST', '').strip().lower()
    origin = env.get('HTTP_ORIGIN')
    if origin is not None and (origin == 'null' or urllib.parse.urlsplit(origin.lower()).netloc != host):
        return origin
    site = env.get('HTTP_SEC_FETCH_SITE', '').lower()
    if site and site not in ('same-origin', 'none'):
        return origin or 'a %s page' % site[:20]
    referer = env.get('HTTP_REFERER')
    if origin is None and not site and referer and urllib.parse.urlsplit(referer.lower()).netloc != host:
        return 'the page at %s' % urllib.parse.urlsplit(referer).netloc[:200]
    return None


@functools.lru_cache(maxsize=256)   # every response asks, of a few types: parsed once each
def is_safe_type(content_type):
    """Would a browser show a response of this Content-Type without running
    anything?  Decided on the one type it reads (mediatypes.py); a header it
    could read as several types (stored before they were refused) is not safe."""
    media_type = mediatypes.single_type(content_type)
    return media_type is not None and (media_type.essence in SAFE_TYPES
                                       or media_type.essence.startswith(SAFE_TYPE_FAMILIES))


def secure_response():
    """Headers every response gets: no sniffing, a sandbox for anything a
    browser could run, and CORS for an origin the bucket allows."""
    web.header('X-Content-Type-Options', 'nosniff')
    content_type = next((v for k, v in web.ctx.headers if k.lower() == 'content-type'), None)
    if content_type is not None and not is_safe_type(content_type):
        # The store's own pages (negotiation.render_page) may submit their GET form.
        web.header('Content-Security-Policy', 'sandbox allow-forms' if web.ctx.get('own_page') else 'sandbox')
    origin = web.ctx.get('cors_origin')
    if origin:
        web.header('Access-Control-Allow-Origin', origin)
        meta = [k for k, _ in web.ctx.headers if k.lower().startswith('x-meta-')]
        web.header('Access-Control-Expose-Headers', ', '.join([EXPOSED_HEADERS] + meta))
        web.header('Vary', 'Origin')


def valid_cors(rules):
    """Is this a bucket's `cors` property: a list of {origins, methods, headers, max_age}?"""
    def rule_ok(rule):
        return (isinstance(rule, dict) and set(rule) <= {'origins', 'methods', 'headers', 'max_age'}
                and strings(rule.get('origins')) and rule['origins']
                and all(CORS_ORIGIN.match(o) and o.count('*') <= 1 for o in rule['origins'])
                and strings(rule.get('methods')) and rule['methods']
                and set(rule['methods']) <= set(CORS_METHODS)
                and strings(rule.get('headers', [])) and all(HEADER_NAME.match(h) for h in rule.get('headers', []))
                and type(rule.get('max_age', 0)) is int and 0 <= rule.get('max_age', 0) <= MAX_CORS_AGE)
    return (isinstance(rules, list) and len(rules) <= MAX_CORS_RULES and all(rule_ok(r) for r in rules)
            and len(json.dumps(rules)) <= MAX_CORS_BYTES)


def strings(value):
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


CORS_PROPERTY = ('a list of at most %d CORS rules {"origins": [...], "methods": [...], "headers": [...], '
                 '"max_age": seconds}, %d bytes of JSON at most' % (MAX_CORS_RULES, MAX_CORS_BYTES), valid_cors)


# -- the command --------------------------------------------------------------------

def new_token(name, roles):
    """(the token, the configuration section that admits it)."""
    if not re.match(r'[A-Za-z0-9_-]+\Z', name):
        raise ValueError('a token name uses letters, digits, - and _')
    for item in roles:
        role, _, pattern = item.partition(':')
        if role not in ROLES or not pattern:
            raise ValueError('%r is not ROLE:BUCKET-PATTERN with a role of %s' % (item, ', '.join(ROLES)))
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    section = '[token-%s]\nsha256 = %s\nroles = %s\n' % (
        name, hashlib.sha256(token.encode()).hexdigest(), ', '.join(roles))
    return token, section


USAGE = """usage: python3 -m kvstore.http.access token NAME ROLE:PATTERN [ROLE:PATTERN ...]
       python3 -m kvstore.http.access secret
ROLE is read, write or admin (admin implies write, write implies read);
PATTERN a bucket name or a pattern such as logs-* (* for every bucket)."""


def main(argv):
    if len(argv) >= 4 and argv[1] == 'token':
        try:
            token, section = new_token(argv[2], argv[3:])
        except ValueError as e:
            print('%s\n%s' % (e, USAGE), file=sys.stderr)
            return 2
        print('token (shown only now; the store keeps its SHA-256): %s\n\n'
              'Add to the configuration of every front end:\n\n%s' % (token, section))
        return 0
    if len(argv) == 2 and argv[1] == 'secret':
        print('Add to the configuration of every front end:\n\n[cluster]\nsecret = %s\n' % secrets.token_urlsafe(32))
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv))
