"""The web.py application around the resources: every failure becomes a
negotiated error document, and every answer is finished the same way (Date,
the security headers, an unread body drained, HEAD without a body)."""
import logging
import re
import urllib.parse

import web

from kvstore.errors import BodyTooLarge, StoreError
from kvstore.http import access, framing
from kvstore.http.caching import current_http_date, own_headers
from kvstore.http.negotiation import error_response, respond_error
from kvstore.http.request import request_body

log = logging.getLogger('kvstore.controller')

DRAIN_LIMIT = 1024 * 1024   # body bytes read off and dropped after an early answer
ROUTE = 'kvstore.route'     # the environ's key of a request's route, matched once (Application.route)


def drain_request_body():
    """Read off what is left of a body the request did not need (an early
    error, a body over its limit), up to DRAIN_LIMIT.  A connection closed
    with the client's bytes unread is reset (RFC 9112 9.6), and the reset can
    destroy the answer before the client reads it.  Beyond the limit, or when
    the body cannot be read, the connection is closed instead."""
    env = web.ctx.env
    if web.ctx.get('body_framing') == 0 and web.ctx.get('request_body') is None:
        return   # the request has no body (check_request_head found none)
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


def finish_response(body):
    drain_request_body()
    # RFC 9110 6.6.1: an origin server with a clock sends Date.  Set last: an
    # error document starts its headers afresh.
    own_headers(('Date', current_http_date()))
    access.secure_response()
    # web.py answers HEAD with GET: same headers, no body.
    return b'' if web.ctx.method == 'HEAD' else body


class Application(web.application):
    """web.py's application, where every failure becomes a negotiated error document."""

    def __init__(self, mapping, fvars, **settings):
        super().__init__(mapping, fvars, **settings)
        # RFC 9110 15.5.6, 15.6.2: a method some resource takes (or a CORS
        # preflight's OPTIONS) is 405 where it is not taken; any other, 501.
        self.implemented = {name for resource in mapping[1::2] for name in vars(resource) if name.isupper()}
        self.implemented |= {'HEAD', 'OPTIONS'}
        self.routes = [(re.compile('^%s\\Z' % pattern), resource)
                       for pattern, resource in zip(mapping[::2], mapping[1::2])]

    def route(self, env):
        """(the resource class or None, the groups of its pattern) of a
        request, as the URL table routes its path: matched once, and kept in
        its environ for the access policy, web.py and the metrics to read."""
        found = env.get(ROUTE)
        if found is None:
            path = request_path(env)
            found = next(((resource, match.groups()) for pattern, resource in self.routes
                          for match in (pattern.match(path),) if match), (None, ()))
            env[ROUTE] = found
        return found

    def _match(self, mapping, value):
        """web.py's routing, from the route matched once (route)."""
        resource, groups = self.route(web.ctx.env)
        return resource, list(groups)

    def load(self, env):
        """web.ctx for a request: web.py's own, less what this store never
        reads (REAL_SCRIPT_NAME, lighttpd's and nginx's REQUEST_URI, a pass
        over every field for bytes), and the path decoded once (request_path)."""
        ctx = web.ctx
        ctx.clear()
        ctx.status, ctx.headers, ctx.output, ctx.app_stack = '200 OK', [], '', []
        ctx.environ = ctx.env = env
        ctx.host = env.get('HTTP_HOST')
        ctx.protocol = 'https' if env.get('wsgi.url_scheme') == 'https' else 'http'
        ctx.homedomain = ctx.protocol + '://' + env.get('HTTP_HOST', '[unknown]')
        ctx.homepath = env.get('SCRIPT_NAME', '')
        ctx.home = ctx.realhome = ctx.homedomain + ctx.homepath
        ctx.ip = env.get('REMOTE_ADDR')
        ctx.method = env.get('REQUEST_METHOD')
        ctx.path = request_path(env)
        query = env.get('QUERY_STRING')
        ctx.query = '?' + query if query else ''
        ctx.fullpath = ctx.path + ctx.query

    def handle(self):
        return finish_response(self.handle_errors())

    def handle_errors(self):
        try:
            web.ctx.body_framing = framing.check_request_head(web.ctx.env)
            return super().handle()
        except StoreError as e:
            return error_response(e)
        except web.HTTPError:
            if web.ctx.status.startswith('404'):
                return respond_error('not_found', 'no resource at %s' % urllib.parse.quote(
                    web.ctx.path, safe='/', errors='surrogateescape'))
            if web.ctx.status.startswith('405') and web.ctx.method not in self.implemented:
                web.ctx.headers = []   # web.py's Allow: no method of this store is meant
                return respond_error('method_not_implemented', 'the store takes no %s request' % web.ctx.method)
            if web.ctx.status.startswith('405'):
                return respond_error('method_not_allowed', '%s is not allowed here' % web.ctx.method)
            raise
        except Exception:
            log.exception('request failed: %s %s', web.ctx.method, web.ctx.path)
            return respond_error('internal_error', 'the store failed to handle the request')


def request_path(env):
    """The percent-decoded path of a request (its environ) as text.  Bytes
    that are not UTF-8 stay as lone surrogates (web.py would read them as
    Latin-1: %FF the same as %C3%BF), which no bucket name or key accepts:
    400 bad_bucket or bad_key."""
    path = env.get('PATH_INFO', '')
    return path if path.isascii() else path.encode('latin-1').decode('utf-8', 'surrogateescape')
