"""Run REDbot (HTTP lint) on one URL with one Accept header and print its
notes as JSON: {"status", "notes": [{"note_id", "level", "summary"}]}, the
follow-up requests REDbot makes (conditional, ranged, compressed) included.

Run as a separate process (REDbot's event loop is global):
    python test/redbot_lint.py URL ACCEPT [RANGE]
(RANGE: a Range header to send, such as bytes=0-9,20-29.)
"""
import json
import sys
from configparser import ConfigParser

import thor
from redbot.resource import HttpResource


def flatten(notes):
    for note in notes:
        yield {'note_id': note.__class__.__name__, 'level': note.level.name, 'summary': note.summary}
        yield from flatten(note.subnotes or [])


def main(url, accept, range_header=None):
    config = ConfigParser()
    config.read_dict({'redbot': {'enable_local_access': 'True'}})
    resource = HttpResource(config['redbot'])
    resource.set_request(url, headers=[('Accept', accept)] + ([('Range', range_header)] if range_header else []))

    @thor.events.on(resource)
    def check_done():
        thor.stop()

    resource.check()
    thor.run()
    print(json.dumps({'status': resource.response.status_code, 'notes': list(flatten(resource.response.notes))}))


if __name__ == '__main__':
    main(*sys.argv[1:4])
