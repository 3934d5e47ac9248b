"""`python -m cache.embedded OWN_FILE SHARED_FILE`: the shared embedded Redis server (started by start_server)."""

import sys

from cache.embedded.server import serve

serve(sys.argv[1], sys.argv[2])
