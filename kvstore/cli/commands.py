"""kv's commands: each takes a Client and the parsed arguments, and returns
an exit status (None for OK) or raises Failure."""
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

from kvstore.cli.client import LOCAL, NOT_FOUND, REFUSED, SIBLINGS, UNAVAILABLE, USAGE, Failure, key_path, refusal

CHUNK = 64 * 1024   # what a value moves by, both ways


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


def write_state(path, bucket, key, context, etag, absent=False):
    """absent: the get found no live value (a put --if-unchanged then creates only)."""
    state = {'bucket': bucket, 'key': key, 'context': context, 'etag': etag}
    if absent:
        state['absent'] = True
    replace_file(path, lambda f: f.write(json.dumps(state).encode() + b'\n'))


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
        if state.get('absent'):
            headers['If-None-Match'] = '*'   # the get found no live value: only if there is still none
        elif not state.get('etag'):
            raise Failure(USAGE, '--if-unchanged needs a --context-file that kv get wrote for one live version')
        etag = state.get('etag')
    if etag:
        headers['If-Match'] = etag if etag == '*' or etag.startswith(('"', 'W/"')) else '"%s"' % etag
    return headers


# -- commands ----------------------------------------------------------------------------

def get(client, args):
    what = '%s/%s' % (args.bucket, args.key)
    if args.json and not args.output:
        raise Failure(USAGE, 'get --json describes the value on stdout: give -o FILE for the value itself')
    params = {'r': args.r} if args.r else None
    response = client.request('GET', key_path(args.bucket, args.key), what,
                              ok=(200, 300, 404) if args.context_file else (200, 300), params=params,
                              stream=True, parts={'headers': {'Accept': '*/*'}})
    with response:
        context = response.headers.get('X-Context')
        if response.status_code == 404:
            # The loop's first write: F says the key had no live value (and
            # the context of its tombstone, if any), then exit 1 as ever.
            write_state(args.context_file, args.bucket, args.key, context, None, absent=True)
            raise refusal(response, what)
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
        params = {name: value for name, value in (('w', args.w), ('ttl', args.ttl)) if value} or None
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


def watch(client, args):
    """The bucket's changes as they come, one line each (KEY, ETAG, put or delete;
    --json: each change's document on a line), a long poll at a time; the
    cursor to resume from is kept in --cursor-file after each page, and
    printed on stderr at the end."""
    path = '/buckets/%s/changes' % urllib.parse.quote(args.bucket, safe='')
    cursor = args.since
    if cursor is None and args.cursor_file and os.path.exists(args.cursor_file):
        with open(args.cursor_file, encoding='utf-8') as f:
            cursor = f.read().strip() or None
    client.timeout += args.wait
    try:
        while True:
            params = {'since': cursor} if cursor else {}
            if not args.once and cursor:
                params['wait'] = '%g' % args.wait
            page = client.document(path, 'changes of %s' % args.bucket, params)
            for change in page['changes']:
                if args.json:
                    print(json.dumps(change, ensure_ascii=False), flush=True)
                else:
                    print('%s\t%s\t%s' % (change['key'], change['etag'], 'delete' if change['deleted'] else 'put'),
                          flush=True)
            if page['incomplete']:
                print('kv: partitions not read (their changes come later): %s' % ', '.join(page['incomplete']),
                      file=sys.stderr)
            cursor = page['cursor']
            if args.cursor_file:
                replace_file(args.cursor_file, lambda f: f.write(cursor.encode() + b'\n'))
            if args.once and not page['more']:
                break
    finally:
        if cursor:
            print('kv: resume with: kv watch %s --since %s' % (args.bucket, cursor), file=sys.stderr)


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
    replicas = document.get('replicas', {})
    for name in document.get('owners', []) + document.get('fallbacks', []):
        replica = replicas.get(name, {})
        for version in replica.get('versions') or [{}]:
            fields = [str(version[field]) for field in ('etag', 'size', 'modified') if field in version]
            print('%-10s %-8s %s' % (name, replica.get('state'),
                                     '  '.join(fields + (['deleted'] if version.get('deleted') else []))))


def status(client, args):
    health = client.document('/health', 'health')
    cluster = client.document('/cluster', 'cluster')
    if args.json:
        return emit({'url': client.base, 'health': health, 'cluster': cluster})
    print('%s  %s  N=%s R=%s W=%s' % (client.base, health.get('status'), cluster['replicas'], cluster['r'], cluster['w']))
    print('%-12s %-8s %-8s %-26s %6s  %s' % ('partition', 'engine', 'state', 'since', 'hints', 'last error'))
    for p in cluster['partitions']:
        print('%-12s %-8s %-8s %-26s %6s  %s' % (p['name'], p.get('engine'), p.get('state'), p.get('since'),
                                                p.get('hints_waiting'), p.get('last_error') or ''))


def emit(document):
    print(json.dumps(document, indent=2, ensure_ascii=False))
