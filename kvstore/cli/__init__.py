"""kv: the store from the command line, over its HTTP API (docs/CLI.md).

    kv put BUCKET KEY [FILE]     kv get BUCKET KEY [-o FILE]     kv rm BUCKET KEY
    kv ls BUCKET [--prefix P]    kv buckets    kv locate BUCKET KEY    kv status

Values stream both ways, a chunk at a time, never whole in memory.  The exit
status says what happened (client.py's statuses, the table in docs/CLI.md); scripts
rely on it, so a code never changes meaning.
"""
import argparse
import os
import sys

from kvstore.cli import commands
from kvstore.cli.client import DEFAULT_URL, LOCAL, OK, USAGE, Client, Failure


def parser():
    # Common options go before or after the command: defaults are filled in by main.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument('--url', help='the store (default: $KV_URL, else %s)' % DEFAULT_URL)
    common.add_argument('--token', help='sent as Authorization: Bearer; @FILE reads it from FILE, out of the '
                                        'process list (default: --token-file, else $KV_TOKEN)')
    common.add_argument('--token-file', metavar='FILE', help='read the token from FILE')
    common.add_argument('--json', action='store_true', help='print JSON documents')
    common.add_argument('--progress', action=argparse.BooleanOptionalAction,
                        help='a progress bar on stderr for values (default: when stderr is a terminal)')
    common.add_argument('--timeout', type=float, help='seconds to wait for each answer or read (default 30)')
    common.add_argument('--cacert', metavar='FILE', help='trust the CAs in FILE (PEM) for an https URL (default: '
                        '$REQUESTS_CA_BUNDLE, $CURL_CA_BUNDLE, $SSL_CERT_FILE, else certifi\'s)')
    main_parser = argparse.ArgumentParser(prog='kv', parents=[common], description=__doc__.split('\n\n')[0],
                                          epilog='exit status: 0 ok, 1 not found, 2 usage, 3 conflict, '
                                                 '4 siblings, 5 unavailable, 6 auth, 7 refused, 8 local file')
    subparsers = main_parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def command(name, run, summary, key=True):
        sub = subparsers.add_parser(name, parents=[common], help=summary, description=summary)
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

    sub = command('get', commands.get, 'write a value to stdout (or -o FILE)')
    sub.add_argument('-o', '--output', metavar='FILE', help='write the value to FILE (whole or not at all)')
    sub.add_argument('--context-file', metavar='F', help='save the X-Context and ETag in F for a later put or rm')
    sub.add_argument('--r', metavar='R', help='answers to wait for (1..N, one, quorum, all)')
    sub = command('put', commands.put, 'store FILE, or stdin, as a value')
    sub.add_argument('file', metavar='FILE', nargs='?', help='the value (default, or -: stdin)')
    sub.add_argument('--type', metavar='MEDIA_TYPE', help="the Content-Type (default: from FILE's name)")
    sub.add_argument('--create', action='store_true', help='only if the key has no live value')
    sub.add_argument('--ttl', metavar='SECONDS', help='the value is gone after SECONDS (none: never, whatever the '
                     "bucket's ttl)")
    conditions(sub)
    conditions(command('rm', commands.remove, 'delete a value'))
    sub = command('ls', commands.list_keys, 'list keys, one a line', key=False)
    sub.add_argument('--prefix', default='', help='only keys that start with it')
    sub.add_argument('--limit', type=int, metavar='N', help='at most N keys (then the next cursor)')
    sub.add_argument('--cursor', help='start after this cursor (from a listing cut by --limit)')
    sub.add_argument('--page-size', type=int, default=1000, metavar='N', help='keys per request (1..10000)')
    sub = command('watch', commands.watch, "follow the bucket's changes, one line each (GET /buckets/B/changes)",
                  key=False)
    sub.add_argument('--since', metavar='CURSOR', help='start after this cursor (default: --cursor-file\'s, else '
                     'from now; 0: from the oldest change kept)')
    sub.add_argument('--cursor-file', metavar='F', help='read the cursor to start from in F, and keep the cursor '
                     'to resume from there after each page')
    sub.add_argument('--once', action='store_true', help='print the changes there are now, then stop')
    sub.add_argument('--wait', type=float, default=30.0, metavar='SECONDS',
                     help='how long each request waits for a change (default 30)')
    subparsers.add_parser('buckets', parents=[common], help='list buckets').set_defaults(run=commands.buckets)
    command('locate', commands.locate, "the key's owners and each replica's versions (GET /cluster/locate)")
    status = subparsers.add_parser('status', parents=[common], help='health and partitions (GET /health, /cluster)')
    status.set_defaults(run=commands.status)
    return main_parser


def read_token(token):
    """The token itself: @FILE is FILE's first line (as curl's --oauth2-bearer @file),
    so that it does not show in the process list as an argument would."""
    if token and token.startswith('@'):
        with open(token[1:], encoding='utf-8') as f:
            return f.readline().strip()
    return token


def main(argv=None):
    args = parser().parse_args(argv)
    settings = vars(args)
    settings.setdefault('url', os.environ.get('KV_URL') or DEFAULT_URL)
    if 'token' not in settings and settings.get('token_file'):
        settings['token'] = '@' + settings['token_file']
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
        token = read_token(args.token)
    except OSError as e:
        print('kv: the token file cannot be read: %s' % e, file=sys.stderr)
        return LOCAL
    try:
        return args.run(Client(args.url, token, args.timeout, settings.get('cacert')), args) or OK
    except Failure as failure:
        print('kv: %s' % failure.message, file=sys.stderr)
        return failure.status
    except BrokenPipeError:   # kv get … | head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except KeyboardInterrupt:
        return 130
