"""The floor under the store's GET r=1: the web.py hello world plus one
primary-key SELECT on the key's first owner, sent and read by the store's
own engine (engines.MySQLEngine: its pooled connections, its statement,
its answer reader).

No GET that reads a MariaDB partition through this stack costs less.  What
it leaves out is the rest of the store: versions, health, negotiation,
headers.  run.py serves it with the store's server settings:

    PYTHONPATH=bench STORE_CONFIG=... python serve.py floor:application
"""
import web

from kvstore import configuration
from kvstore.engines import open_engine
from kvstore.coordinator.ring import Ring

config = configuration.load()
ring = Ring.of(config)
engines = {p.name: open_engine(p, config) for p in config.partitions}

urls = ('/buckets/([^/]+)/keys/([^/?]+)', 'Key')


class Key:
    def GET(self, bucket, key):
        engine = engines[ring.preference_list(bucket, key, 1)[0]]
        _, rows = engine._fenced_rows(engine.finish_query(engine.send_read(bucket, key)))   # less the bucket's fence
        if not rows:
            raise web.notfound('')
        value = rows[0][1]
        web.header('Content-Type', 'application/octet-stream')
        web.header('Content-Length', str(len(value)))
        return value


application = web.application(urls, globals(), autoreload=False).wsgifunc()
