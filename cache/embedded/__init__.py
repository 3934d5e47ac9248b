"""The embedded Redis for a laptop start with no REDIS_URL: server.py (the fakeredis server and the in-process
client), share.py (one server per database file, shared by its instances), lua_sandbox.py. Imported only at
the edge: app.py and gunicorn.conf.py."""
