"""What a request names and asks for: bucket names, keys and quorum sizes."""
import re

from kvstore.errors import BadRequest

BUCKET_NAME = re.compile(r'[a-z0-9][a-z0-9._-]{0,62}\Z')
PRIMARY_QUORUMS = ('pr', 'pw')


def quorum(raw, default, name, n):
    """A quorum size from a request parameter: 1..n (0..n for the primary
    quorums pr and pw), one, quorum or all."""
    if raw is None or raw == '':
        return default
    words = {'one': 1, 'quorum': n // 2 + 1, 'all': n}
    least = 0 if name in PRIMARY_QUORUMS else 1
    if raw in words:
        return words[raw]
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 4 else -1
    if not least <= value <= n:
        raise BadRequest('bad_parameter', '%s must be %d to %d, one, quorum or all' % (name, least, n),
                         parameter=name)
    return value


def quorums(config, props, **requested):
    """The quorums of a request: each one asked for (r=, w=, pr=, pw=), else
    the bucket's property (props), else the configured default."""
    return [requested[name] if requested[name] is not None else props.get(name, getattr(config, name))
            for name in requested]


def write_quorums(config, props, w, pw):
    """(w, pw) of a write (quorums), w raised to pw as Riak raises it: the
    write waits for as many copies as it needs on owners, so a pw above w
    never fails a write that every owner took."""
    w, pw = quorums(config, props, w=w, pw=pw)
    return max(w, pw), pw


def check_bucket(bucket):
    if not BUCKET_NAME.match(bucket):
        raise BadRequest('bad_bucket', 'bucket names are 1 to 63 characters of a-z, 0-9, '
                         '".", "_" and "-", starting with a letter or digit')


def check_key(bucket, key, key_length):
    """key_length: the most bytes of UTF-8 a key may take."""
    check_bucket(bucket)
    size = len(key.encode('utf-8', 'surrogatepass'))
    if not 0 < size <= key_length:
        raise BadRequest('bad_key', 'keys are 1 to %d bytes of UTF-8' % key_length)
    try:
        key.encode('utf-8')
    except UnicodeEncodeError:
        raise BadRequest('bad_key', 'keys are 1 to %d bytes of UTF-8' % key_length)
