"""The store's URLs, built in one place: for Location, Link headers and the HTML pages."""
import urllib.parse


def bucket_path(bucket):
    return '/buckets/%s' % bucket   # bucket names need no escaping (a-z, 0-9, ".", "_", "-")


def key_path(bucket, key):
    return '/buckets/%s/keys/%s' % (bucket, urllib.parse.quote(key, safe='/'))


def record_path(bucket, key):
    """A key's record document, even for a client whose Accept admits the value's type."""
    return key_path(bucket, key) + '?as=record'


def listing_path(bucket, prefix='', limit=None, cursor=None, before=None, delimiter=None):
    """A page of a bucket's keys: after cursor, or before `before` (tokens), with prefix, delimiter and limit kept."""
    params = [(name, value) for name, value in (('prefix', prefix), ('delimiter', delimiter), ('limit', limit),
                                                ('cursor', cursor), ('before', before)) if value]
    return '/buckets/%s/keys' % bucket + ('?' + urllib.parse.urlencode(params) if params else '')


def locate_path(bucket, key):
    return '/cluster/locate?' + urllib.parse.urlencode({'bucket': bucket, 'key': key})


def changes_path(bucket, since=None, limit=None):
    """A bucket's change feed, after the cursor since."""
    params = [(name, value) for name, value in (('since', since), ('limit', limit)) if value]
    return '/buckets/%s/changes' % bucket + ('?' + urllib.parse.urlencode(params) if params else '')
