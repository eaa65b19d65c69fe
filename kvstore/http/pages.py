"""HTML pages: the documents a person reads in a browser, linked to each other.

index -> buckets -> bucket -> keys (pages linked next and previous) -> a key's
record (its raw value linked, an image shown) and back; the cluster page
draws the ring.  A document without a page of its own is rendered whole
(documents.render_fragment), under the same navigation.  Everything from the
store (keys above all) is escaped: every text and attribute goes through esc.
The pages hold no script, and no form but the key list's prefix search (a
GET); access.py serves them sandboxed, forms allowed on these pages alone.
"""
import html
import math

from kvstore.http import documents
from kvstore.http.links import bucket_path, changes_path, key_path, listing_path, locate_path, record_path

# Tables fit a phone's width: long names break anywhere, and below 40em the
# columns marked "more" (details a wider screen has room for) are left out.
STYLE = ('body{font-family:sans-serif;margin:1.5em 2em;max-width:72em}nav{margin-bottom:1em;color:#555}'
         'dt{font-weight:bold}dd{margin:0 0 .5em 1.5em}table{border-collapse:collapse;margin:.5em 0;max-width:100%}'
         'th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}td{overflow-wrap:anywhere}'
         'td.n{text-align:right;white-space:nowrap}pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:30em}'
         'img.value{max-width:100%;max-height:40em;border:1px solid #ccc}.pager a{margin-right:1.5em}'
         '.up{color:#1e7b45}.suspect{color:#a67c00}.down{color:#b02a1a}details{margin-top:2em}'
         'svg{max-width:100%;height:auto}form{margin:.5em 0}input[type=search]{width:16em;max-width:60%}'
         '@media (max-width:40em){body{margin:.8em}.more{display:none}th,td{padding:.2em .3em}}')
STATE_COLOURS = {'up': '#2e8b57', 'suspect': '#d4a017', 'down': '#c0392b'}


def esc(value):
    return html.escape(str(value), quote=True)


def link(href, text):
    return '<a href="%s">%s</a>' % (esc(href), esc(text))


def render_page(document, root):
    """The HTML of a document: its page, or the generic rendering, under the navigation."""
    title, body, shown = PAGES.get(root, generic_page)(document, root)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><title>%s</title><style>%s</style>'
            '</head>\n<body>\n%s\n<h1>%s</h1>\n%s\n<details><summary>The %s document</summary>\n%s</details>\n'
            '</body></html>\n' % (esc(title), STYLE, navigation(document), esc(title), body, esc(root),
                                  documents.render_fragment(shown)))


def navigation(document):
    """kvstore > buckets > bucket > keys > key, as far as the document goes, and the cluster."""
    crumbs = [link('/', 'kvstore'), link('/buckets', 'buckets')]
    bucket = document.get('bucket') if isinstance(document, dict) else None
    if isinstance(bucket, str):
        crumbs += [link(bucket_path(bucket), bucket), link(listing_path(bucket), 'keys')]
        key = document.get('key')
        if isinstance(key, str):
            crumbs.append(link(record_path(bucket, key), key))
    return '<nav>%s | %s</nav>' % (' &rsaquo; '.join(crumbs), link('/cluster', 'cluster'))


def generic_page(document, root):
    return root.replace('_', ' ').capitalize(), '', document


def index_page(doc, root):
    body = ('<p>%s</p><ul><li>%s</li><li>%s</li></ul><p>N=%s, R=%s, W=%s</p>' % (
        esc(doc['service']), link('/buckets', 'Buckets'), link('/cluster', 'The cluster'),
        esc(doc['replicas']), esc(doc['r']), esc(doc['w'])))
    body += table(('method', 'path', 'does'), [(esc(e['method']), '<code>%s</code>' % esc(e['path']), esc(e['does']))
                                               for e in doc['endpoints']])
    return 'kvstore', body, doc


def buckets_page(doc, root):
    items = ''.join('<li>%s</li>' % link(bucket_path(b), b) for b in doc['buckets'])
    return 'Buckets', '<ul>%s</ul>' % items if items else '<p>No buckets yet.</p>', doc


def bucket_page(doc, root):
    bucket = doc['bucket']
    count = ('%s live keys' % esc(doc['key_count']) if 'key_count' in doc
             else link(bucket_path(bucket) + '?count=true', 'count the keys'))
    parts = ['<p>%s | %s | %s</p>' % (link(listing_path(bucket), 'list the keys'), count,
                                       link(changes_path(bucket, '0'), 'its changes'))]
    if doc.get('properties') is not None:
        parts.append('<h2>Properties</h2>' + documents.render_fragment(doc['properties']))
    return 'Bucket %s' % bucket, ''.join(parts), doc


def keys_page(doc, root):
    """The key browser: folders (a delimiter's common prefixes) and keys with
    their size, type and date, a prefix search, and the pages on either side."""
    bucket, prefix, limit, delimiter = doc['bucket'], doc['prefix'], doc.get('limit'), doc.get('delimiter')
    listed = {entry['key']: entry for entry in doc.get('details', [])}
    # Names as in a folder: after the last delimiter of the prefix (all of it without one).
    here = prefix[:prefix.rfind(delimiter) + len(delimiter)] if delimiter and delimiter in prefix else ''
    entries = [(folder, (link(listing_path(bucket, folder, limit, delimiter=delimiter), folder[len(here):]),
                         '', 'folder', '')) for folder in doc.get('common_prefixes', [])]
    entries += [(key, (link(record_path(bucket, key), key[len(here):]),) + listed_cells(listed.get(key)))
                for key in doc['keys']]
    rows = [row for _, row in sorted(entries)]   # folders among the keys, in the listing's order
    pager = [link(listing_path(bucket, prefix, limit, delimiter=delimiter), 'first page')]
    if doc.get('previous_cursor'):
        pager.append('<a rel="prev" href="%s">&larr; previous page</a>' % esc(
            listing_path(bucket, prefix, limit, before=doc['previous_cursor'], delimiter=delimiter)))
    if doc.get('next_cursor'):
        pager.append('<a rel="next" href="%s">next page &rarr;</a>' % esc(
            listing_path(bucket, prefix, limit, cursor=doc['next_cursor'], delimiter=delimiter)))
    view = (link(listing_path(bucket, prefix, limit), 'all keys, without folders') if delimiter
            else link(listing_path(bucket, prefix, limit, delimiter='/'), 'by folders (/)'))
    body = ('<p>%s%s, %s a page; %s.</p>%s%s%s<p class="pager">%s</p>' % (
        folder_trail(bucket, prefix, limit, delimiter), '' if not prefix or delimiter else
        ' starting with <code>%s</code>' % esc(prefix), esc(limit), view, search_form(bucket, prefix, delimiter),
        table(('name', 'size', 'type', 'last modified'), rows, more=(2, 3)) if rows else '',
        '' if rows else '<p><em>no keys on this page</em></p>', ''.join(pager)))
    return 'Keys of %s' % bucket, body, doc


def changes_page(doc, root):
    """A page of the change feed, oldest first, and the link to the changes after it."""
    bucket = doc['bucket']
    rows = [(link(record_path(bucket, c['key']), c['key']), esc(c['etag']), 'delete' if c['deleted'] else 'put',
             number(c['size'], size(c['size'])), esc(c['last_modified'])) for c in doc['changes']]
    body = table(('key', 'ETag', 'change', 'size', 'last modified'), rows, more=(1, 3)) if rows else \
        '<p><em>no changes after this cursor yet</em></p>'
    if doc.get('incomplete'):
        body += '<p class="down">Not read (their changes come later): %s</p>' % esc(', '.join(doc['incomplete']))
    body += '<p class="pager"><a rel="next" href="%s">changes after these &rarr;</a></p>' % esc(
        changes_path(bucket, doc['cursor']))
    return 'Changes of %s' % bucket, body, doc


def listed_cells(entry):
    """A key's size, type and date cells (empty without details; siblings say how many)."""
    if entry is None:
        return '', '', ''
    if 'siblings' in entry:
        return '<td class="n">%s siblings</td>' % esc(entry['siblings']), '', ''
    return number(entry['size'], size(entry['size'])), esc(entry['content_type']), esc(entry['last_modified'])


def folder_trail(bucket, prefix, limit, delimiter):
    """bucket / img / 2024 /: each folder of prefix linked to its own listing."""
    trail = [link(listing_path(bucket, '', limit, delimiter=delimiter), bucket)]
    if delimiter:
        start = 0
        while True:
            end = prefix.find(delimiter, start)
            if end < 0:
                break
            end += len(delimiter)
            trail.append(link(listing_path(bucket, prefix[:end], limit, delimiter=delimiter), prefix[start:end]))
            start = end
        if prefix[start:]:
            trail.append(esc(prefix[start:]) + '&hellip;')
    return 'Keys of bucket ' + ' '.join(trail)


def search_form(bucket, prefix, delimiter):
    """A GET of the listing with the prefix typed (and the delimiter kept)."""
    kept = '<input type="hidden" name="delimiter" value="%s">' % esc(delimiter) if delimiter else ''
    return ('<form method="get" action="%s" role="search"><label>Keys starting with '
            '<input type="search" name="prefix" value="%s"></label>%s <button>Search</button></form>'
            % (esc(listing_path(bucket)), esc(prefix), kept))


def value_html(bucket, key, version):
    """A value on a page: an image shown, text in a <pre>, else a link to its bytes."""
    raw = key_path(bucket, key)
    if version['content_type'].lower().startswith('image/'):
        return '<p><img class="value" src="%s" alt="%s"></p>' % (esc(raw), esc(key))
    if 'value' in version:
        return '<pre>%s</pre>' % esc(version['value'])
    return '<p>%s bytes of %s: %s</p>' % (esc(version['size']), esc(version['content_type']),
                                          link(raw, 'download the value'))


def record_page(doc, root):
    bucket, key = doc['bucket'], doc['key']
    fields = [(name, doc[name]) for name in ('content_type', 'size', 'etag', 'last_modified', 'expires_at', 'meta',
                                             'cache_control', 'expires', 'content_encoding', 'content_disposition',
                                             'content_language') if name in doc]
    body = ('<p>%s | %s | %s</p>%s<h2>The value</h2>%s' % (
        link(key_path(bucket, key), 'the raw value'), link(locate_path(bucket, key), 'where it is stored'),
        link(listing_path(bucket), 'back to the keys of %s' % bucket),
        documents.render_fragment(dict(fields)), value_html(bucket, key, doc)))
    return key, body, without_base64(doc)


def siblings_page(doc, root):
    bucket, key = doc['bucket'], doc['key']
    parts = ['<p>%s</p>' % esc(doc['message'])]
    for n, sibling in enumerate(doc['siblings'], 1):
        parts.append('<h2>Sibling %d: %s, %s bytes, %s</h2>%s' % (
            n, esc(sibling['content_type']), esc(sibling['size']), esc(sibling['last_modified']),
            '<pre>%s</pre>' % esc(sibling['value']) if 'value' in sibling else '<p>(binary)</p>'))
    parts.append('<p>%s</p>' % link(locate_path(bucket, key), 'where it is stored'))
    return '%s: siblings' % key, ''.join(parts), dict(doc, siblings=[without_base64(s) for s in doc['siblings']])


def without_base64(doc):
    """A document without its base64 value: the page links to the bytes instead."""
    if 'value_base64' not in doc:
        return doc
    return dict({k: v for k, v in doc.items() if k != 'value_base64'},
                value_base64='(%d bytes: see the raw value)' % doc['size'])


def receipt_page(doc, root):
    bucket, key = doc['bucket'], doc['key']
    what = 'Deleted' if doc.get('deleted') else 'Stored'
    return '%s %s' % (what, key), '<p>%s</p>' % link(record_path(bucket, key), 'the record'), doc


def cluster_page(doc, root):
    partitions = doc['partitions']
    rows = []
    for p in partitions:
        observed = ('%s s ago by %s' % (esc(p['observed_seconds_ago']), esc(p['observer'] or 'this process'))
                    if p['observed'] else 'not yet')
        rows.append(('<b>%s</b> (%s)' % (esc(p['name']), esc(p['engine'])),
                     '<span class="%s">%s</span> since %s' % (esc(p['state']), esc(p['state']), esc(p['since'])),
                     observed, esc(p['last_error'] or ''), number('%.1f %%' % (100 * p['share'])),
                     number(p['keys']), number(p['bytes'], size(p['bytes'])), number(p['pending']),
                     number(p['hints_held']), number(p['hints_waiting']), number(p['hints_expired'])))
    body = ('<p>N=%s, R=%s, W=%s; answered by %s</p>%s' % (
        esc(doc['replicas']), esc(doc['r']), esc(doc['w']), esc(doc['front_end']), ring_svg(partitions)))
    body += table(('partition', 'state', 'observed', 'last error', 'share', 'keys', 'bytes', 'pending',
                   'hints held', 'hints waiting', 'hints expired'), rows, more=(2, 4, 7, 8, 9, 10))
    body += '<p>Keys, bytes and pending markers counted at %s.</p>' % esc(doc['usage_counted'])
    runs = [(esc(job), esc(run.get('finished')), '<span class="%s">%s</span>' % (
        'up' if run.get('ok') else 'down', 'ok' if run.get('ok') else 'failed'), esc('yes' if run.get('work_left') else 'no'),
        esc(run.get('error') or run.get('summary') or '')) for job, run in sorted(doc['sync'].items())]
    body += '<h2>Last sync.py runs</h2>' + (table(('job', 'finished', 'outcome', 'work left', 'summary'), runs, more=(1, 3))
                                            if runs else '<p>sync.py has recorded no runs yet.</p>')
    body += '<h2>Rebalance</h2>' + documents.render_fragment(doc['rebalance'])
    body += '<h2>Gossip</h2>' + documents.render_fragment(doc['gossip'])
    return 'The cluster', body, doc


def locate_page(doc, root):
    bucket, key = doc['bucket'], doc['key']
    rows = []
    for name in doc['owners'] + doc['fallbacks']:
        replica = doc['replicas'][name]
        versions = replica.get('versions', [])
        rows.append((esc(name), 'owner' if name in doc['owners'] else 'fallback',
                     '<span class="%s">%s</span>' % ('up' if replica['state'] == 'ok' else 'down', esc(replica['state'])),
                     '<br>'.join('%s%s, %s bytes, %s' % (esc(v['etag']), ' (deleted)' if v['deleted'] else '',
                                                         esc(v['size']), esc(v['modified'])) for v in versions)))
    body = ('<p>%s, at point %s of the ring.</p>%s' % (link(record_path(bucket, key), key), esc(doc['point']),
                                                       table(('partition', 'role', 'state', 'versions'), rows)))
    return 'Where %s is' % key, body, doc


def error_page(doc, root):
    return 'Error %s: %s' % (doc['status'], doc['code']), '<p>%s</p>' % esc(doc['message']), doc


def table(headings, rows, more=()):
    """rows hold HTML already escaped; the columns numbered in more are left
    out on a narrow screen."""
    def cell(i, html, tag='td'):
        kind = ' class="more"' if i in more else ''
        if html.startswith('<td'):
            return html.replace('<td class="', '<td class="more ', 1) if kind else html
        return '<%s%s>%s</%s>' % (tag, kind, html, tag)
    return '<table><tr>%s</tr>%s</table>' % (''.join(cell(i, esc(h), 'th') for i, h in enumerate(headings)), ''.join(
        '<tr>%s</tr>' % ''.join(cell(i, c) for i, c in enumerate(row)) for row in rows))


def number(value, shown=None):
    """A number's cell; ? when it is unknown (null: a partition that did not answer)."""
    return '<td class="n">%s</td>' % esc('?' if value is None else shown or value)


def size(count):
    """A byte count for people (1.5 KiB); None when it is unknown."""
    if count is None:
        return None
    if count == 1:
        return '1 byte'
    for unit in ('bytes', 'KiB', 'MiB', 'GiB'):
        if count < 1024:
            break
        count /= 1024
    return '%s %s' % (count if isinstance(count, int) else '%.1f' % count, unit)


def ring_svg(partitions, centre=200, radius=120, width=40):
    """The ring: each partition an arc as long as its share, coloured by its state."""
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="400" height="400" viewBox="0 0 400 400" role="img" '
             'aria-label="the ring"><circle cx="%d" cy="%d" r="%d" fill="none" stroke="#eee" stroke-width="%d"/>'
             % (centre, centre, radius, width)]
    start = 0.0
    for p in partitions:
        share = p['share']
        if share <= 0:
            continue
        colour = STATE_COLOURS.get(p['state'], '#999')
        label = '%s: %s, %.1f %% of the ring' % (p['name'], p['state'], 100 * share)
        a0, a1 = 2 * math.pi * start - math.pi / 2, 2 * math.pi * (start + share) - math.pi / 2
        if share >= 0.999:
            shape = '<circle cx="%d" cy="%d" r="%d" fill="none"' % (centre, centre, radius)
        else:
            gap = min(0.01, (a1 - a0) / 4)
            shape = '<path d="M %.2f %.2f A %d %d 0 %d 1 %.2f %.2f" fill="none"' % (
                centre + radius * math.cos(a0 + gap), centre + radius * math.sin(a0 + gap), radius, radius,
                1 if a1 - a0 > math.pi else 0, centre + radius * math.cos(a1 - gap), centre + radius * math.sin(a1 - gap))
        parts.append('%s stroke="%s" stroke-width="%d"><title>%s</title></%s>' % (
            shape, colour, width, esc(label), 'circle' if share >= 0.999 else 'path'))
        mid = (a0 + a1) / 2
        parts.append('<text x="%.1f" y="%.1f" text-anchor="middle" dominant-baseline="middle" font-size="13">'
                     '%s %.0f%%</text>' % (centre + (radius + width) * math.cos(mid),
                                          centre + (radius + width) * math.sin(mid), esc(p['name']), 100 * share))
        start += share
    parts.append('<text x="%d" y="%d" text-anchor="middle" font-size="15">%d partitions</text></svg>'
                 % (centre, centre + 5, len(partitions)))
    return ''.join(parts)


PAGES = {'index': index_page, 'buckets': buckets_page, 'bucket': bucket_page, 'keys': keys_page,
         'record': record_page, 'siblings': siblings_page, 'receipt': receipt_page, 'cluster': cluster_page,
         'locate': locate_page, 'changes': changes_page, 'error': error_page}
