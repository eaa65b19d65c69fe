"""kv's HTTP side: one session with the store, and the exit status each outcome maps to."""
import json
import os
import urllib.parse

import requests

DEFAULT_URL = 'http://127.0.0.1:8080'
# Exit statuses (docs/CLI.md): 0 done, then one per outcome a script may act on.
OK, NOT_FOUND, USAGE, CONFLICT, SIBLINGS, UNAVAILABLE, AUTH, REFUSED, LOCAL = range(9)
# Where a CA bundle may be named, after --cacert (curl's name): requests' and
# curl's variables, then OpenSSL's (a Session.send ignores them all by itself).
CA_VARIABLES = ('REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'SSL_CERT_FILE')


class Failure(Exception):
    """Ends the command: message for stderr, exit status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def exit_status(http_status):
    if http_status == 404:
        return NOT_FOUND
    if http_status in (409, 412):
        return CONFLICT
    if http_status in (401, 403):
        return AUTH
    if http_status >= 500:
        return UNAVAILABLE
    return REFUSED


def quote_key(key):
    """A key as its URL path: each segment percent-encoded, '/' kept; '.' and
    '..' segments spelled %2E so that no URL normalisation removes them."""
    return '/'.join(segment.replace('.', '%2E') if segment in ('.', '..') else urllib.parse.quote(segment, safe='')
                    for segment in key.split('/'))


def key_path(bucket, key):
    return '/buckets/%s/keys/%s' % (urllib.parse.quote(bucket, safe=''), quote_key(key))


class Client:
    """One session with the store: its URL, token and timeout."""

    def __init__(self, url, token, timeout, cacert=None):
        self.base = url.rstrip('/')
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = trusted_cas(cacert)
        self.session.headers['User-Agent'] = 'kv'
        if token:
            self.session.headers['Authorization'] = 'Bearer ' + token

    def request(self, method, path, what, ok=(200,), params=None, **settings):
        """The response to method on path (with params, in order), or Failure
        naming what was asked for when the status is not one of ok."""
        url = self.base + path + ('?' + urllib.parse.urlencode(params) if params else '')
        request = self.session.prepare_request(requests.Request(method, url, **settings.pop('parts', {})))
        request.url = url   # as built: requests would turn %2E back into '.', then drop the segment
        try:
            response = self.session.send(request, timeout=self.timeout, **settings)
        except requests.exceptions.SSLError as error:
            raise Failure(UNAVAILABLE, 'cannot reach %s over TLS (%s): give the CA that signed its certificate '
                          'with --cacert FILE or REQUESTS_CA_BUNDLE' % (self.base, tls_reason(error)))
        except requests.Timeout:
            raise Failure(UNAVAILABLE, '%s did not answer within %g s' % (self.base, self.timeout))
        except requests.ConnectionError as error:
            raise Failure(UNAVAILABLE, 'cannot reach %s (%s)' % (self.base, reason(error)))
        if response.status_code not in ok:
            raise refusal(response, what)
        return response

    def document(self, path, what, params=None):
        return self.request('GET', path, what, params=params, parts={'headers': {'Accept': 'application/json'}}).json()


def trusted_cas(cacert):
    """requests' verify: the CA bundle named by --cacert or the environment,
    else True (certifi's).  Failure (exit 8) when the file named is missing."""
    named = [(cacert, '--cacert')] + [(os.environ.get(name), '$' + name) for name in CA_VARIABLES]
    path, source = next(((path, source) for path, source in named if path), (None, None))
    if path is None:
        return True
    if not os.path.exists(path):
        raise Failure(LOCAL, 'the CA bundle %s (%s) does not exist' % (path, source))
    return path


def tls_reason(error):
    """What TLS said: the certificate verify failure, without requests' wrapping."""
    while error.__context__ is not None:
        error = error.__context__
    return getattr(error, 'verify_message', None) or getattr(error, 'reason', None) or type(error).__name__


def reason(error):
    """The innermost cause of a requests error, without its URL and object reprs."""
    while error.__context__ is not None and not isinstance(error, ConnectionRefusedError):
        error = error.__context__
    return error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__


def refusal(response, what):
    """The store's error document as a Failure with the exit status its HTTP status maps to."""
    try:
        document = json.loads(response.content[:65536])
        detail = '%s (%d %s)' % (document['message'], response.status_code, document['code'])
    except (ValueError, KeyError, TypeError):
        detail = '%d %s' % (response.status_code, response.reason)
    return Failure(exit_status(response.status_code), '%s: %s' % (what, detail))
