"""The errors the store reports, each with a stable code string.

The datastore raises these; the controller maps each code to an HTTP status
and renders it as a negotiated document.  Messages are for people and never
carry a traceback, a path or a credential.
"""


class StoreError(Exception):
    code = 'internal_error'

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


class PreconditionFailed(StoreError):
    code = 'precondition_failed'


class TooLarge(StoreError):
    code = 'value_too_large'


class Unavailable(StoreError):
    """Too few replicas answered.  A write may still have been applied on some."""
    code = 'unavailable'
