"""``python -m app``: serve the model repository (app/server.py; settings from ``SERVE_*``)."""

from app.server import main

main()
