"""Range requests (RFC 9110 section 14): which bytes of a value to send."""


class Unsatisfiable(Exception):
    """No range of the request overlaps the value: 416."""


def parse_range(header, size):
    """(first, last) byte positions, inclusive, or None to send the whole value.

    Only single byte ranges are served; a header this store does not
    understand (another unit, several ranges, bad syntax) is ignored, as the
    RFC allows, and the whole value is sent.
    """
    if not header:
        return None
    unit, _, spec = header.partition('=')
    if unit.strip().lower() != 'bytes' or ',' in spec:
        return None
    first, dash, last = spec.strip().partition('-')
    if not dash:
        return None
    try:
        if first == '':                      # suffix: the last N bytes
            length = int(last)
            if length < 0:
                return None
            if length == 0 or size == 0:
                raise Unsatisfiable()
            return max(0, size - length), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):
        return None
    if start >= size:
        raise Unsatisfiable()
    return start, min(end, size - 1)
