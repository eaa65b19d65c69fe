"""A page of a key listing that ends before a key: the previous page.

Partitions scan keys forwards only, so the keys before a key are read from
the first one on, a page of MAX_LIST_LIMIT at a time: the cost grows with
how far into the listing the page is.
"""
import collections

from kvstore.coordinator.listing import MAX_LIST_LIMIT


def page_before(datastore, bucket, prefix, before, limit, delimiter=None):
    """(the entry after which the page of the last `limit` entries with prefix
    that sort below `before` starts, None for the first; whether entries
    precede that page).  Entries: live keys, with a delimiter common prefixes too."""
    window = collections.deque(maxlen=limit + 1)
    after = None
    while True:
        page = datastore.list_keys(bucket, prefix=prefix, limit=MAX_LIST_LIMIT, after=after, delimiter=delimiter)
        for entry in sorted(page.keys + page.prefixes):
            if entry >= before:   # str order is the listing's UTF-8 byte order
                return start(window, limit)
            window.append(entry)
        if page.next_after is None:
            return start(window, limit)
        after = page.next_after


def start(window, limit):
    """(the entry before the last `limit` of window, whether there is one)."""
    earlier = len(window) > limit
    return window[0] if earlier else None, earlier
