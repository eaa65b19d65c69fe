"""Expiry: when a value is gone.  A write asks for a lifetime (?ttl=, or an
absolute time: the HTTP layer reads X-Expires-At); its bucket's `ttl`
property is the default.  The expiry is stored with the version
(Version.expires, microseconds, 0: never) and read against each front end's
clock (versions.live)."""
import dataclasses

from kvstore.errors import BadRequest

MAX_TTL = 10 * 365 * 86400   # seconds: ten years; longer is a mistake, and ttl=none says "never"
SECOND = 10 ** 6             # microseconds
NEVER = 'none'               # ?ttl=none: no expiry, whatever the bucket's default


def bad_expiry(message, **details):
    return BadRequest('bad_expiry', message, **details)


def check_ttl_property(value):
    """A bucket's ttl property: seconds, 1 to MAX_TTL, or null (none)."""
    return value is None or (type(value) is int and 1 <= value <= MAX_TTL)


@dataclasses.dataclass(frozen=True)
class Lifetime:
    """What a write asks of its value's expiry: seconds from now (ttl), an
    absolute time (at, microseconds), never, or nothing (the bucket's default)."""
    ttl: int = None
    at: int = None
    never: bool = False

    @classmethod
    def asked(cls, ttl, at, now):
        """A write's lifetime from its ?ttl= (text or None) and its absolute
        time (microseconds or None), checked at `now` (microseconds): 400
        bad_expiry unless ttl is 1 to MAX_TTL seconds or "none", the time is in
        the future and no further than MAX_TTL, and not both are given."""
        if ttl is not None and at is not None:
            raise bad_expiry('a write gives ?ttl= or X-Expires-At, not both', parameter='ttl')
        if ttl == NEVER:
            return cls(never=True)
        if ttl is not None:
            seconds = int(ttl) if ttl.isascii() and ttl.isdigit() and len(ttl) <= len(str(MAX_TTL)) else 0
            if not 1 <= seconds <= MAX_TTL:
                raise bad_expiry('ttl is 1 to %d seconds, or "none"' % MAX_TTL, parameter='ttl')
            return cls(ttl=seconds)
        if at is not None:
            if at <= now:
                raise bad_expiry('X-Expires-At is not in the future (by this front end\'s clock)')
            if at > now + MAX_TTL * SECOND:
                raise bad_expiry('X-Expires-At is more than %d seconds ahead' % MAX_TTL)
            return cls(at=at)
        return cls()

    @property
    def given(self):
        """The write asked for something (else its bucket's default holds)."""
        return self.ttl is not None or self.at is not None or self.never

    def expires(self, default_ttl, now):
        """The version's expiry (microseconds, 0: never) for a write at `now`
        in a bucket whose ttl property is default_ttl (None: none).  A ttl
        counts whole seconds: the value is gone at the first whole second at
        least ttl after the write, the date X-Expires-At then shows."""
        if self.never:
            return 0
        if self.at is not None:
            return self.at
        ttl = self.ttl if self.ttl is not None else default_ttl
        return -(-(now + ttl * SECOND) // SECOND) * SECOND if ttl else 0
