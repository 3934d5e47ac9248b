"""`python -m demo`: a scripted live demo of the service (see demo/__main__.py)."""
