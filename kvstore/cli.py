"""kv: the store from the command line, over its HTTP API (docs/CLI.md).

    kv put BUCKET KEY [FILE]     kv get BUCKET KEY [-o FILE]     kv rm BUCKET KEY
    kv ls BUCKET [--prefix P]    kv buckets    kv locate BUCKET KEY    kv status

Values stream both ways, a chunk at a time, never whole in memory.  The exit
status says what happened (EXIT below, the table in docs/CLI.md); scripts
rely on it, so a code never changes meaning.
"""
import argparse
import json
import mimetypes
import os
import stat
import sys
import tempfile
import urllib.parse

import requests
import urllib3
from tqdm import tqdm

DEFAULT_URL = 'http://127.0.0.1:8080'
CHUNK = 64 * 1024
# Exit statuses: 0 done, then one per outcome a script may act on.
OK, NOT_FOUND, USAGE, CONFLICT, SIBLINGS, UNAVAILABLE, AUTH, REFUSED, LOCAL = range(9)


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

    def __init__(self, url, token, timeout):
        self.base = url.rstrip('/')
        self.timeout = timeout
        self.session = requests.Session()
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
        except requests.Timeout:
            raise Failure(UNAVAILABLE, '%s did not answer within %g s' % (self.base, self.timeout))
        except requests.ConnectionError as error:
            raise Failure(UNAVAILABLE, 'cannot reach %s (%s)' % (self.base, reason(error)))
        if response.status_code not in ok:
            raise refusal(response, what)
        return response

    def document(self, path, what, params=None):
        return self.request('GET', path, what, params=params, parts={'headers': {'Accept': 'application/json'}}).json()


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


def progress_bar(args, total):
    return tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not args.progress, leave=False)


# -- context files: what a get saw, for the write that follows it ------------------

def read_state(path, bucket, key):
    try:
        with open(path, encoding='utf-8') as f:
            state = json.load(f)
    except OSError as error:
        raise Failure(LOCAL, 'cannot read context file %s: %s' % (path, error.strerror))
    except ValueError:
        raise Failure(USAGE, '%s is not a context file (kv get --context-file writes one)' % path)
    if not isinstance(state, dict) or (state.get('bucket'), state.get('key')) != (bucket, key):
        raise Failure(USAGE, '%s is not the context of %s/%s' % (path, bucket, key))
    return state


def write_state(path, bucket, key, context, etag):
    replace_file(path, lambda f: f.write(json.dumps(
        {'bucket': bucket, 'key': key, 'context': context, 'etag': etag}).encode() + b'\n'))


def replace_file(path, write):
    """Writes path through a temporary file beside it: it appears whole or not at all."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        handle, temporary = tempfile.mkstemp(prefix='.kv-', dir=directory)
    except OSError as error:
        raise Failure(LOCAL, 'cannot write %s: %s' % (path, error.strerror))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)   # as open() would have made it, not mkstemp's 0600
        with os.fdopen(handle, 'wb') as f:
            write(f)
        os.replace(temporary, path)
    except OSError as error:
        raise Failure(LOCAL, 'cannot write %s: %s' % (path, error.strerror))
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def condition_headers(args):
    """X-Context and If-Match for a write, from --context-file, --if-match, --if-unchanged."""
    headers = {}
    state = read_state(args.context_file, args.bucket, args.key) if args.context_file else {}
    if state.get('context'):
        headers['X-Context'] = state['context']
    etag = args.if_match
    if args.if_unchanged:
        if not state.get('etag'):
            raise Failure(USAGE, '--if-unchanged needs a --context-file that kv get wrote for one live version')
        etag = state['etag']
    if etag:
        headers['If-Match'] = etag if etag == '*' or etag.startswith(('"', 'W/"')) else '"%s"' % etag
    return headers


# -- commands ----------------------------------------------------------------------------

def get(client, args):
    what = '%s/%s' % (args.bucket, args.key)
    if args.json and not args.output:
        raise Failure(USAGE, 'get --json describes the value on stdout: give -o FILE for the value itself')
    params = {'r': args.r} if args.r else None
    response = client.request('GET', key_path(args.bucket, args.key), what, ok=(200, 300), params=params,
                              stream=True, parts={'headers': {'Accept': '*/*'}})
    with response:
        context = response.headers.get('X-Context')
        if response.status_code == 300:
            return siblings(args, what, response.json(), context)
        etag = response.headers.get('ETag')
        if args.output:
            replace_file(args.output, lambda f: download(args, response, f, what))
        else:
            download(args, response, sys.stdout.buffer, what)
            sys.stdout.buffer.flush()
    if args.context_file:
        write_state(args.context_file, args.bucket, args.key, context, etag)
    if args.json:
        emit({'bucket': args.bucket, 'key': args.key, 'etag': etag, 'context': context,
              'content_type': response.headers.get('Content-Type'),
              'last_modified': response.headers.get('Last-Modified'),
              'size': int(response.headers['Content-Length']) if 'Content-Length' in response.headers else None})


def download(args, response, out, what):
    """Copies the body to out, a chunk at a time, as stored (no decoding)."""
    size = response.headers.get('Content-Length')
    received = 0
    with progress_bar(args, int(size) if size and size.isdigit() else None) as bar:
        try:
            for chunk in response.raw.stream(CHUNK, decode_content=False):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            raise Failure(UNAVAILABLE, '%s: the transfer broke off after %d bytes (%s)'
                          % (what, received, type(error).__name__))


def siblings(args, what, document, context):
    """A 300: the versions are listed (stderr, or the document on stdout with --json), no value is written."""
    if args.context_file:
        write_state(args.context_file, args.bucket, args.key, context, None)
    if args.json:
        emit(document)
    else:
        versions = document.get('siblings', [])
        print('kv: %s has %d siblings (concurrent writes); put one value with the context of this get '
              '(--context-file) to resolve them:' % (what, len(versions)), file=sys.stderr)
        for version in versions:
            print('  %s  %s bytes  %s  %s' % (version.get('etag'), version.get('size'), version.get('content_type'),
                                             version.get('last_modified')), file=sys.stderr)
    return SIBLINGS


class Upload:
    """A put's body, read a chunk at a time.  len is its size when it is known
    (a regular file), so requests sends Content-Length; None sends it chunked."""

    def __init__(self, args, source, size):
        self.args, self.source, self.len = args, source, size
        self.sent = 0

    def __iter__(self):
        with progress_bar(self.args, self.len) as bar:
            while True:
                chunk = self.source.read(CHUNK)
                if not chunk:
                    return
                bar.update(len(chunk))
                self.sent += len(chunk)
                yield chunk


def open_input(path):
    if path in (None, '-'):
        return sys.stdin.buffer
    try:
        return open(path, 'rb')
    except OSError as error:
        raise Failure(LOCAL, 'cannot read %s: %s' % (path, error.strerror))


def put(client, args):
    what = '%s/%s' % (args.bucket, args.key)
    headers = condition_headers(args)
    if args.create:
        headers['If-None-Match'] = '*'
    named = args.file not in (None, '-')
    headers['Content-Type'] = args.type or (named and mimetypes.guess_type(args.file)[0]) or 'application/octet-stream'
    source = open_input(args.file)
    try:
        info = os.fstat(source.fileno())
        size = info.st_size - source.tell() if stat.S_ISREG(info.st_mode) else None
        params = {'w': args.w} if args.w else None
        body = Upload(args, source, size)
        receipt = client.request('PUT', key_path(args.bucket, args.key), what, ok=(200, 201), params=params,
                                 parts={'headers': dict(headers, Accept='application/json'), 'data': body}).json()
    except Failure as failure:
        if failure.status == UNAVAILABLE and body.sent and size is None:
            # The store answers a body of unknown size that passes its limit with 413 and closes
            # the connection while kv still sends: the answer is lost with the connection.
            raise Failure(UNAVAILABLE, '%s: the connection broke after %d bytes of the value (%s); a value over '
                          "the store's max_value_bytes ends this way when sent from a pipe"
                          % (what, body.sent, failure.message))
        raise
    finally:
        if named:
            source.close()
    written(args, what, receipt)
    if not args.json:
        print(receipt.get('etag'))


def remove(client, args):
    what = '%s/%s' % (args.bucket, args.key)
    params = {'w': args.w} if args.w else None
    receipt = client.request('DELETE', key_path(args.bucket, args.key), what, params=params,
                             parts={'headers': dict(condition_headers(args), Accept='application/json')}).json()
    written(args, what, receipt)


def written(args, what, receipt):
    """After a write: the context file follows the new version; a write that left siblings says so."""
    if args.context_file:
        write_state(args.context_file, args.bucket, args.key, receipt.get('context'), receipt.get('etag'))
    if receipt.get('siblings', 1) > 1:
        print('kv: %s now has %d siblings: kv get lists them' % (what, receipt['siblings']), file=sys.stderr)
    if args.json:
        emit(receipt)


def list_keys(client, args):
    """Every key (or --limit of them), a page of --page-size at a time, printed as each page comes."""
    path = '/buckets/%s/keys' % urllib.parse.quote(args.bucket, safe='')
    cursor, left, listed = args.cursor, args.limit, []
    while True:
        params = {'prefix': args.prefix, 'limit': min(args.page_size, left) if left else args.page_size}
        if cursor:
            params['cursor'] = cursor
        page = client.document(path, 'bucket %s' % args.bucket, params)
        if args.json:
            listed.extend(page['keys'])
        else:
            for key in page['keys']:
                print(key)
        cursor = page.get('next_cursor')
        left = left - len(page['keys']) if left else None
        if not cursor or left == 0:
            break
    if args.json:
        emit({'bucket': args.bucket, 'prefix': args.prefix, 'keys': listed, 'next_cursor': cursor})
    elif cursor:
        print('kv: more keys follow: kv ls %s --cursor %s' % (args.bucket, cursor), file=sys.stderr)


def buckets(client, args):
    document = client.document('/buckets', 'buckets')
    if args.json:
        return emit(document)
    for name in document['buckets']:
        print(name)


def locate(client, args):
    what = 'locate %s/%s' % (args.bucket, args.key)
    try:
        document = client.document('/cluster/locate', what, {'bucket': args.bucket, 'key': args.key})
    except Failure as failure:
        if failure.status == NOT_FOUND:
            raise Failure(REFUSED, '%s: this server has no GET /cluster/locate (it is older than this kv)' % what)
        raise
    if args.json:
        return emit(document)
    print('%s/%s  point %s' % (document['bucket'], document['key'], document.get('point')))
    print('owners     %s' % ' '.join(document.get('owners', [])))
    print('fallbacks  %s' % ' '.join(document.get('fallbacks', [])))
    for name, replica in sorted(document.get('replicas', {}).items()):
        versions = replica.get('versions') or [{}]
        for version in versions:
            print('%-10s %-8s %s' % (name, replica.get('state'), '  '.join(str(version[field]) for field in (
                'etag', 'size', 'modified') if field in version) + ('  deleted' if version.get('deleted') else '')))


def status(client, args):
    health = client.document('/health', 'health')
    cluster = client.document('/cluster', 'cluster')
    if args.json:
        return emit({'url': client.base, 'health': health, 'cluster': cluster})
    print('%s  %s  N=%s R=%s W=%s' % (client.base, health.get('status'), cluster['replicas'], cluster['r'], cluster['w']))
    print('%-12s %-8s %-8s %-26s %6s  %s' % ('partition', 'engine', 'state', 'since', 'hints', 'last error'))
    for p in cluster['partitions']:
        print('%-12s %-8s %-8s %-26s %6s  %s' % (p['name'], p['engine'], p['state'], p['since'], p['hints_waiting'],
                                                p['last_error'] or ''))


def emit(document):
    print(json.dumps(document, indent=2, ensure_ascii=False))


# -- the command line ----------------------------------------------------------------------

def parser():
    # Common options go before or after the command: defaults are filled in by main.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument('--url', help='the store (default: $KV_URL, else %s)' % DEFAULT_URL)
    common.add_argument('--token', help='sent as Authorization: Bearer (default: $KV_TOKEN)')
    common.add_argument('--json', action='store_true', help='print JSON documents')
    common.add_argument('--progress', action=argparse.BooleanOptionalAction,
                        help='a progress bar on stderr for values (default: when stderr is a terminal)')
    common.add_argument('--timeout', type=float, help='seconds to wait for each answer or read (default 30)')
    main_parser = argparse.ArgumentParser(prog='kv', parents=[common], description=__doc__.split('\n\n')[0],
                                          epilog='exit status: 0 ok, 1 not found, 2 usage, 3 conflict, '
                                                 '4 siblings, 5 unavailable, 6 auth, 7 refused, 8 local file')
    commands = main_parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def command(name, run, summary, key=True):
        sub = commands.add_parser(name, parents=[common], help=summary, description=summary)
        sub.add_argument('bucket', metavar='BUCKET')
        if key:
            sub.add_argument('key', metavar='KEY')
        sub.set_defaults(run=run)
        return sub

    def conditions(sub):
        sub.add_argument('--context-file', metavar='F', help='send the X-Context kv get saved in F; F follows the write')
        sub.add_argument('--if-match', metavar='ETAG', help='only if the live version has this ETag')
        sub.add_argument('--if-unchanged', action='store_true', help="only if the value is still the one F's get saw")
        sub.add_argument('--w', metavar='W', help='copies to wait for (1..N, one, quorum, all)')

    sub = command('get', get, 'write a value to stdout (or -o FILE)')
    sub.add_argument('-o', '--output', metavar='FILE', help='write the value to FILE (whole or not at all)')
    sub.add_argument('--context-file', metavar='F', help='save the X-Context and ETag in F for a later put or rm')
    sub.add_argument('--r', metavar='R', help='answers to wait for (1..N, one, quorum, all)')
    sub = command('put', put, 'store FILE, or stdin, as a value')
    sub.add_argument('file', metavar='FILE', nargs='?', help='the value (default, or -: stdin)')
    sub.add_argument('--type', metavar='MEDIA_TYPE', help="the Content-Type (default: from FILE's name)")
    sub.add_argument('--create', action='store_true', help='only if the key has no live value')
    conditions(sub)
    conditions(command('rm', remove, 'delete a value'))
    sub = command('ls', list_keys, 'list keys, one a line', key=False)
    sub.add_argument('--prefix', default='', help='only keys that start with it')
    sub.add_argument('--limit', type=int, metavar='N', help='at most N keys (then the next cursor)')
    sub.add_argument('--cursor', help='start after this cursor (from a listing cut by --limit)')
    sub.add_argument('--page-size', type=int, default=1000, metavar='N', help='keys per request (1..10000)')
    commands.add_parser('buckets', parents=[common], help='list buckets').set_defaults(run=buckets)
    command('locate', locate, "the key's owners and each replica's versions (GET /cluster/locate)")
    commands.add_parser('status', parents=[common], help='health and partitions (GET /health, /cluster)'
                        ).set_defaults(run=status)
    return main_parser


def main(argv=None):
    args = parser().parse_args(argv)
    settings = vars(args)
    settings.setdefault('url', os.environ.get('KV_URL') or DEFAULT_URL)
    settings.setdefault('token', os.environ.get('KV_TOKEN'))
    settings.setdefault('json', False)
    settings.setdefault('timeout', 30.0)
    if settings.get('progress') is None:
        args.progress = sys.stderr.isatty()
    for name in ('limit', 'page_size'):
        if settings.get(name) is not None and settings[name] < 1:
            print('kv: --%s must be at least 1' % name.replace('_', '-'), file=sys.stderr)
            return USAGE
    try:
        return args.run(Client(args.url, args.token, args.timeout), args) or OK
    except Failure as failure:
        print('kv: %s' % failure.message, file=sys.stderr)
        return failure.status
    except BrokenPipeError:   # kv get … | head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
