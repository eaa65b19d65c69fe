"""The errors the store reports, each with a stable code string.

The datastore raises these; the controller maps each code to an HTTP status
and renders it as a negotiated document.  Messages are for people and never
carry a traceback, a path or a credential.
"""


class StoreError(Exception):
    code = 'internal_error'
    headers = {}  # HTTP headers the error response carries

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(StoreError):
    def __init__(self, code, message, **details):
        super().__init__(message, **details)
        self.code = code


class NotFound(StoreError):
    code = 'not_found'


class NotAcceptable(StoreError):
    code = 'not_acceptable'


class AlreadyExists(StoreError):
    code = 'already_exists'


class BucketNotEmpty(StoreError):
    code = 'bucket_not_empty'


class TooManySiblings(StoreError):
    code = 'too_many_siblings'


class IdempotencyKeyReused(StoreError):
    """An Idempotency-Key sent again with a request that asks for something else."""
    code = 'idempotency_key_reused'


class Gone(StoreError):
    """What was asked for existed and was removed for good: a feed cursor older than the retention."""

    def __init__(self, code, message, **details):
        super().__init__(message, **details)
        self.code = code


class PreconditionFailed(StoreError):
    code = 'precondition_failed'


class TooLarge(StoreError):
    code = 'value_too_large'


class InsufficientStorage(StoreError):
    """A partition's disk or table is full; nothing of the write is visible."""
    code = 'insufficient_storage'


class Unavailable(StoreError):
    """Too few replicas answered.  A write may still have been applied on some."""
    code = 'unavailable'
    headers = {'Retry-After': '1'}


class RangeNotSatisfiable(StoreError):
    code = 'range_not_satisfiable'

    def __init__(self, size):
        super().__init__('the value has %d bytes: no requested range overlaps them' % size, size=size)
        self.headers = {'Content-Range': 'bytes */%d' % size}


class CorruptData(StoreError):
    """Stored bytes no longer match their digest: refused rather than served."""
    code = 'corrupt_data'


class Unauthenticated(StoreError):
    """No valid token came with the request (access.py)."""
    code = 'unauthenticated'

    def __init__(self, message, invalid=False):
        super().__init__(message)
        # RFC 6750 3: the scheme and realm, and error="invalid_token" for a token we do not know.
        self.headers = {'WWW-Authenticate': 'Bearer realm="kvstore"' + (', error="invalid_token"' if invalid else '')}


class Forbidden(StoreError):
    """Refused whatever the resource holds: a role missing, a cross-site request, unsigned gossip."""

    def __init__(self, code, message, **details):
        super().__init__(message, **details)
        self.code = code


class MisdirectedRequest(StoreError):
    """The Host is not one this server answers to (DNS rebinding)."""
    code = 'misdirected_request'

class EndsConnection:
    """Mixed into an error about the request's framing or pace: the store
    does not read the rest of the request, so the connection ends with the answer."""
    headers = {'Connection': 'close'}


class BadFraming(EndsConnection, BadRequest):
    """Framing the store cannot trust (RFC 9112 6)."""

    def __init__(self, message):
        super().__init__('bad_framing', message)


class IncompleteBody(EndsConnection, BadRequest):
    def __init__(self, message):
        super().__init__('incomplete_body', message)


class BodyTooLarge(EndsConnection, StoreError):
    """A request body the store would hold in memory (a document, a form) is too long."""
    code = 'body_too_large'


class UnsupportedTransferCoding(EndsConnection, StoreError):
    code = 'unsupported_transfer_coding'


class RequestTimeout(EndsConnection, StoreError):
    """The client sent its body too slowly."""
    code = 'request_timeout'


class UriTooLong(EndsConnection, StoreError):
    code = 'uri_too_long'


class HeaderFieldsTooLarge(EndsConnection, StoreError):
    code = 'header_fields_too_large'
