"""Documents: how every response that is not a raw value is written out.

A document is a tree of dicts, lists and scalars with a root name ('error',
'receipt', 'keys', ...).  It renders to JSON, XML or plain text here, and to
HTML as a page (pages.py, which renders its parts with render_fragment);
negotiation.py lets mimerender pick one from the request's Accept header.
"""
import html
import json
import re
from xml.sax.saxutils import escape, quoteattr

XML_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9._-]*\Z')


# json's C encoder only writes compact JSON; with indent=2 json.dumps runs in
# Python, a generator per level.  render_json writes the same text directly,
# in half the time (a write receipt: 22 -> 10 us; 1000 listed keys with their
# etags: 6.2 -> 3.1 ms).
_string = json.encoder.encode_basestring
_SCALARS = {None: 'null', True: 'true', False: 'false'}


# The list of a document whose items are written one a line, each by json's
# C encoder: a batch's answer holds thousands of fields, which the indented
# rendering would write at several times the cost.
ONE_LINE_ITEMS = {'batch': 'results'}
_one_line = json.JSONEncoder(ensure_ascii=False).encode


def render_json(document, root):
    """json.dumps(document, indent=2, ensure_ascii=False) and a newline (the
    items of the ONE_LINE_ITEMS list of its root one a line)."""
    parts = []
    listed = ONE_LINE_ITEMS.get(root)
    if listed is not None and isinstance(document.get(listed), list) and document[listed]:
        items = document[listed]
        document = dict(document, **{listed: _ONE_LINE})
        _json(document, parts, '\n')
        text = ''.join(parts)
        lines = ',\n    '.join(_one_line(item) for item in items)
        return text.replace(_string(_ONE_LINE), '[\n    %s\n  ]' % lines, 1) + '\n'
    _json(document, parts, '\n')
    parts.append('\n')
    return ''.join(parts)


_ONE_LINE = '\0one line items\0'   # a placeholder no document holds (a NUL is escaped in JSON)


def _key_text(key):
    """The text json makes of a key that is not a string (1, 1.5, True, None)."""
    return json.loads(json.dumps({key: 0})).popitem()[0]


def _json(value, parts, newline):
    kind = type(value)
    if kind is str:
        parts.append(_string(value))
    elif kind is dict:
        if not value:
            parts.append('{}')
            return
        inner = newline + '  '
        separator = '{' + inner
        for key, item in value.items():
            parts.append(separator)
            parts.append(_string(key if type(key) is str else _key_text(key)))
            parts.append(': ')
            _json(item, parts, inner)
            separator = ',' + inner
        parts.append(newline + '}')
    elif kind is list or kind is tuple:
        if not value:
            parts.append('[]')
            return
        inner = newline + '  '
        separator = '[' + inner
        for item in value:
            parts.append(separator)
            _json(item, parts, inner)
            separator = ',' + inner
        parts.append(newline + ']')
    elif kind is bool or value is None:
        parts.append(_SCALARS[value])
    elif kind is int:
        parts.append(int.__repr__(value))
    else:
        # Floats (NaN, Infinity), subclasses, and what json refuses: json's own rules.
        parts.append(json.dumps(value, indent=2, ensure_ascii=False).replace('\n', newline))


def render_xml(document, root):
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _xml(root, document, parts, '')
    return ''.join(parts)


def _xml(name, value, parts, indent):
    # Names that are not valid XML names (partition "1a", a key) become attributes.
    if XML_NAME.match(name) and not name.lower().startswith('xml'):
        open_tag, close_tag = '<%s' % name, '</%s>' % name
    else:
        open_tag, close_tag = '<entry name=%s' % quoteattr(name), '</entry>'
    if value is None:
        parts.append('%s%s nil="true"/>\n' % (indent, open_tag))
    elif isinstance(value, dict):
        parts.append('%s%s>\n' % (indent, open_tag))
        for key, item in value.items():
            _xml(str(key), item, parts, indent + '  ')
        parts.append('%s%s\n' % (indent, close_tag))
    elif isinstance(value, list):
        parts.append('%s%s>\n' % (indent, open_tag))
        for item in value:
            _xml('item', item, parts, indent + '  ')
        parts.append('%s%s\n' % (indent, close_tag))
    else:
        parts.append('%s%s>%s%s\n' % (indent, open_tag, escape(_scalar(value)), close_tag))


def _scalar(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return str(value)


def render_fragment(value):
    """A document (or part of one) as HTML: dicts as <dl>, lists as <ul>, all escaped."""
    if isinstance(value, dict):
        return '<dl>\n%s</dl>\n' % ''.join(
            '<dt>%s</dt><dd>%s</dd>\n' % (html.escape(str(k)), render_fragment(v)) for k, v in value.items())
    if isinstance(value, list):
        return '<ul>\n%s</ul>\n' % ''.join('<li>%s</li>\n' % render_fragment(v) for v in value)
    if value is None:
        return '<em>none</em>'
    return html.escape(_scalar(value))


def render_text(document, root):
    lines = []
    _text(document, lines, '')
    return '\n'.join(lines) + '\n'


def _text(value, lines, indent):
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append('%s%s:' % (indent, key))
                _text(item, lines, indent + '  ')
            else:
                lines.append('%s%s: %s' % (indent, key, _plain(item)))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                lines.append('%s-' % indent)
                _text(item, lines, indent + '  ')
            else:
                lines.append('%s- %s' % (indent, _plain(item)))
    else:
        lines.append(indent + _plain(value))


def _plain(value):
    if value is None:
        return '(none)'
    if isinstance(value, (dict, list)):
        return '(empty)'
    return _scalar(value)

