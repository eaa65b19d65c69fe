"""A web.py hello world: the ceiling the store is measured against.

run.py serves it with the store's own gunicorn settings:

    gunicorn --config gunicorn.conf.py --pythonpath bench hello:application
"""
import web

urls = ('/', 'Hello')


class Hello:
    def GET(self):
        web.header('Content-Type', 'text/plain; charset=utf-8')
        return 'Hello, world!\n'


application = web.application(urls, globals(), autoreload=False).wsgifunc()
