"""Range requests (RFC 9110 section 14): which bytes of a value to send."""

# More ranges than this in one request are ignored (the whole value is sent):
# RFC 9110 14.2 lets a server ignore a request for many ranges, which costs a
# part header each and can be a denial of service.
MAX_RANGES = 32


class Unsatisfiable(Exception):
    """No range of the request overlaps the value: 416."""


def parse_ranges(header, size):
    """The byte ranges to send, as sorted (first, last) positions, inclusive,
    that neither overlap nor touch; or None to send the whole value.

    A header this store does not understand (another unit, bad syntax, more
    than MAX_RANGES ranges) is ignored, as the RFC allows, and the whole value
    is sent.  Ranges that start past the end are dropped; when none is left,
    Unsatisfiable.  Overlapping and adjacent ranges are coalesced (RFC 9110
    14.2 allows it), so a client that asks for them gets each byte once.
    """
    if not header:
        return None
    unit, _, spec = header.partition('=')
    specs = spec.split(',')
    if unit.strip().lower() != 'bytes' or len(specs) > MAX_RANGES:
        return None
    wanted = []
    for one in specs:
        one = one.strip()
        if not one:
            continue    # RFC 9110 5.6.1: empty list elements are ignored
        parsed = _parse_one(one, size)
        if parsed is False:
            return None
        if parsed is not None:
            wanted.append(parsed)
    if not wanted:
        raise Unsatisfiable()
    coalesced = []
    for first, last in sorted(wanted):
        if coalesced and first <= coalesced[-1][1] + 1:
            coalesced[-1] = (coalesced[-1][0], max(last, coalesced[-1][1]))
        else:
            coalesced.append((first, last))
    return coalesced


def _parse_one(spec, size):
    """(first, last) of one range-spec; None when it is unsatisfiable; False when invalid."""
    first, dash, last = spec.partition('-')
    if not dash or not all(p == '' or (p.isascii() and p.isdigit()) for p in (first, last)):
        return False    # positions are ASCII digits only (int() would take '+1', ' 1', '1_0')
    try:
        if first == '':                      # suffix: the last N bytes
            length = int(last)
            if length == 0 or size == 0:
                return None
            return max(0, size - length), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return False
    if last and end < start:
        return False
    if start >= size:
        return None
    return start, min(end, size - 1)
