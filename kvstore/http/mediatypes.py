"""A Content-Type read the way a browser reads it: the WHATWG Fetch standard's
"extract a MIME type" (https://fetch.spec.whatwg.org/#concept-header-extract-mime-type)
over MIME Sniffing's "parse a MIME type" (https://mimesniff.spec.whatwg.org/#parse-a-mime-type).

A browser splits a Content-Type at commas outside quoted strings and takes the
last value that parses, so `text/plain; a=b, text/html` is HTML to it.  The
store keeps only a Content-Type that is one value that parses, with no comma at
all (single_type), and decides the sandbox on that type (essence)."""
import re

HTTP_WHITESPACE = '\t\n\r '
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
QUOTED_STRING_TOKEN = re.compile('[\t\x20-\x7e\x80-\xff]*\\Z')


class MediaType:
    """A parsed media type: type/subtype (lowercase) and parameters."""

    def __init__(self, type, subtype, parameters):
        self.type, self.subtype, self.parameters = type, subtype, parameters

    @property
    def essence(self):
        return '%s/%s' % (self.type, self.subtype)


def collect(text, position, stop):
    """The run of text from position up to the first character in stop, and where it ends."""
    end = position
    while end < len(text) and text[end] not in stop:
        end += 1
    return text[position:end], end


def quoted_string(text, position, extract):
    """An HTTP quoted string starting at the '"' at position: its value (unescaped)
    when extract, else its characters as written; and where it ends."""
    start, value = position, ''
    position += 1
    while True:
        run, position = collect(text, position, '"\\')
        value += run
        if position >= len(text):
            break
        mark = text[position]
        position += 1
        if mark == '\\':
            if position >= len(text):
                value += '\\'
                break
            value += text[position]
            position += 1
        else:
            break
    return (value if extract else text[start:position]), position


def split_values(header):
    """A header's values: split at commas outside quoted strings, trimmed."""
    values, value, position = [], '', 0
    while True:
        run, position = collect(header, position, '",')
        value += run
        if position < len(header) and header[position] == '"':
            run, position = quoted_string(header, position, extract=False)
            value += run
            if position < len(header):
                continue
        values.append(value.strip(HTTP_WHITESPACE))
        value = ''
        if position >= len(header):
            return values
        position += 1  # past the comma


def parse(text):
    """A MediaType, or None where a browser's parse fails."""
    text = text.strip(HTTP_WHITESPACE)
    type, position = collect(text, 0, '/')
    if not TOKEN.match(type) or position >= len(text):
        return None
    subtype, position = collect(text, position + 1, ';')
    subtype = subtype.rstrip(HTTP_WHITESPACE)
    if not TOKEN.match(subtype):
        return None
    parameters = {}
    while position < len(text):
        position += 1  # past the ';'
        while position < len(text) and text[position] in HTTP_WHITESPACE:
            position += 1
        name, position = collect(text, position, ';=')
        name = name.lower()
        if position < len(text):
            if text[position] == ';':
                continue
            position += 1  # past the '='
        if position >= len(text):
            break
        if text[position] == '"':
            value, position = quoted_string(text, position, extract=True)
            _, position = collect(text, position, ';')
        else:
            value, position = collect(text, position, ';')
            value = value.rstrip(HTTP_WHITESPACE)
            if not value:
                continue
        if TOKEN.match(name) and QUOTED_STRING_TOKEN.match(value) and name not in parameters:
            parameters[name] = value
    return MediaType(type.lower(), subtype.lower(), parameters)


def extract(header):
    """The media type a browser takes from a Content-Type header, or None (Fetch's
    "extract a MIME type": the last value that parses and is not */*)."""
    found = None
    for value in split_values(header):
        media_type = parse(value)
        if media_type is not None and media_type.essence != '*/*':
            found = media_type
    return found


def single_type(header):
    """The one media type of a Content-Type every reader agrees on, or None: the
    header has no comma at all (not even inside a quoted string, which a reader
    less exact than the standard would split at), a browser parses it, and it
    names a type (not */*)."""
    return None if ',' in header else extract(header)
