"""A page of a key listing that ends before a key: the previous page.

Partitions scan keys forwards only, so the keys before a key are read from
the first one on, a page of MAX_LIST_LIMIT at a time: the cost grows with
how far into the listing the page is.
"""
import collections

from kvstore.coordinator.listing import MAX_LIST_LIMIT


def page_before(datastore, bucket, prefix, before, limit):
    """(the last `limit` live keys with prefix that sort below `before`, whether more keys precede them)."""
    window = collections.deque(maxlen=limit + 1)
    after = None
    while True:
        page = datastore.list_keys(bucket, prefix=prefix, limit=MAX_LIST_LIMIT, after=after)
        for key in page.keys:
            if key >= before:   # str order is the listing's UTF-8 byte order
                return list(window)[-limit:], len(window) > limit
            window.append(key)
        if page.next_after is None:
            return list(window)[-limit:], len(window) > limit
        after = page.next_after
