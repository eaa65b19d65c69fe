"""A web.py hello world: the ceiling the store is measured against.

run.py serves it with the store's own server settings:

    PYTHONPATH=bench python serve.py hello:application
"""
import web

urls = ('/', 'Hello')


class Hello:
    def GET(self):
        body = 'Hello, world!\n'
        web.header('Content-Type', 'text/plain; charset=utf-8')
        # As the store does: a length keeps the connection alive under any server.
        web.header('Content-Length', str(len(body)))
        return body


application = web.application(urls, globals(), autoreload=False).wsgifunc()
