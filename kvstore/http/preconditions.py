"""Conditional requests as RFC 9110 section 13.2.2 orders them.

The same evaluation serves reads (which may answer 304) and writes (which the
datastore evaluates inside the coordinator's locked transaction, so that
If-Match is a real compare-and-swap).
"""
import datetime

from kvstore.errors import BadRequest, PreconditionFailed

PASS, NOT_MODIFIED = 'pass', 'not modified'
UNTAGGED = ''   # the current ETag of a resource that has none: equal to no tag a client sends


def _etags(header):
    """('*', None) or (None, [opaque tags]) from an If-Match/If-None-Match value."""
    if header is None:
        return None
    header = header.strip()
    if header == '*':
        return '*'
    tags = []
    for part in header.split(','):
        part = part.strip()
        if not part:
            continue
        weak = part.startswith('W/')
        tag = part[2:] if weak else part
        if len(tag) < 2 or tag[0] != '"' or tag[-1] != '"':
            raise BadRequest('bad_header', 'entity tags are quoted strings, as in "abc" or W/"abc"')
        tags.append((weak, tag))
    return tags


# RFC 9110 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms a
# recipient must also accept; all three are GMT.
_DATE_FORMATS = ('%a, %d %b %Y %H:%M:%S GMT', '%A, %d-%b-%y %H:%M:%S GMT', '%a %b %d %H:%M:%S %Y')


def _date(header):
    """A timestamp in seconds, or None for an absent or invalid date (ignored, per RFC)."""
    if not header:
        return None
    text = ' '.join(header.split())  # asctime pads the day with a space: "Nov  6"
    for form in _DATE_FORMATS:
        try:
            parsed = datetime.datetime.strptime(text, form).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            continue
        if '%y' in form:
            # A two-digit year more than 50 years ahead is in the past century.
            now = datetime.datetime.now(datetime.timezone.utc)
            if parsed.year > now.year + 50:
                parsed = parsed.replace(year=parsed.year - 100)
        return parsed.timestamp()
    return None


class Preconditions:
    def __init__(self, if_match=None, if_none_match=None, if_modified_since=None,
                 if_unmodified_since=None):
        self.if_match = _etags(if_match)
        self.if_none_match = _etags(if_none_match)
        self.if_modified_since = _date(if_modified_since)
        self.if_unmodified_since = _date(if_unmodified_since)

    @classmethod
    def from_environ(cls, env):
        return cls(env.get('HTTP_IF_MATCH'), env.get('HTTP_IF_NONE_MATCH'),
                   env.get('HTTP_IF_MODIFIED_SINCE'), env.get('HTTP_IF_UNMODIFIED_SINCE'))

    @property
    def present(self):
        return not (self.if_match is None and self.if_none_match is None and self.if_modified_since is None
                    and self.if_unmodified_since is None)

    def evaluate(self, current, safe, etag_of=None):
        """PASS, NOT_MODIFIED (safe requests only), or raise PreconditionFailed.

        current: the live versions of the resource (empty when it does not exist).
        safe: the request is a GET or HEAD.
        etag_of: a version's ETag in the selected representation (default: the raw value's).
        """
        if not self.present:
            return PASS   # nearly every request: no validator to compute
        modified = max((v.date for v in current), default=None)   # HTTP dates have seconds
        etags = [etag_of(v) if etag_of else v.etag for v in current]
        return self.evaluate_validators(etags, modified, safe)

    def evaluate_validators(self, etags, modified, safe):
        """evaluate() for a resource's current ETags (none when it does not
        exist) and last change in seconds (None when unknown: the date
        conditions are then ignored)."""
        if self.if_match is not None:
            if not self._matches(self.if_match, etags, strong=True):
                raise PreconditionFailed('If-Match: the current version does not match')
        elif self.if_unmodified_since is not None and modified is not None:
            if modified > self.if_unmodified_since:
                raise PreconditionFailed('If-Unmodified-Since: it was modified since')
        if self.if_none_match is not None:
            if self._matches(self.if_none_match, etags, strong=False):
                if safe:
                    return NOT_MODIFIED
                raise PreconditionFailed('If-None-Match: a matching version exists')
        elif safe and self.if_modified_since is not None and modified is not None:
            if modified <= self.if_modified_since:
                return NOT_MODIFIED
        return PASS

    def evaluate_untagged(self):
        """evaluate() for a GET of a resource that exists without an ETag (a
        listing): "*" matches it, no entity-tag does (RFC 9110 13.1.1, 13.1.2)."""
        return self.evaluate_validators([UNTAGGED], None, safe=True)

    def check_write(self, current):
        """For the datastore: refuse the write unless the preconditions hold."""
        self.evaluate(current, safe=False)

    @staticmethod
    def _matches(condition, etags, strong):
        """RFC 9110 8.8.3.2: strong comparison needs both tags strong; weak
        comparison looks at the opaque tags alone."""
        if condition == '*':
            return bool(etags)
        current = {}
        for etag in etags:
            weak = etag.startswith('W/')
            current[etag[2:] if weak else etag] = weak
        return any(tag in current and not (strong and (weak or current[tag])) for weak, tag in condition)
