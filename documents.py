"""Documents: how every response that is not a raw value is written out.

A document is a tree of dicts, lists and scalars with a root name ('error',
'receipt', 'keys', ...).  It renders to JSON, XML, HTML or plain text; the
controller lets mimerender pick one from the request's Accept header.
"""
import html
import json
import re
from xml.sax.saxutils import escape, quoteattr

XML_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9._-]*\Z')


def render_json(document, root):
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False) + '\n'


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


def render_html(document, root):
    title = html.escape(root.replace('_', ' ').capitalize())
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>%s</title>'
            '<style>body{font-family:sans-serif;margin:2em}dt{font-weight:bold}'
            'dd{margin:0 0 .5em 1.5em}</style></head>\n<body><h1>%s</h1>\n%s</body></html>\n'
            % (title, title, _html(document)))


def _html(value):
    if isinstance(value, dict):
        return '<dl>\n%s</dl>\n' % ''.join(
            '<dt>%s</dt><dd>%s</dd>\n' % (html.escape(str(k)), _html(v)) for k, v in value.items())
    if isinstance(value, list):
        return '<ul>\n%s</ul>\n' % ''.join('<li>%s</li>\n' % _html(v) for v in value)
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


RENDERERS = dict(json=render_json, xml=render_xml, html=render_html, txt=render_text)
