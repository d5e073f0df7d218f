"""``perdure ui``: a web UI over a perdure database, for the people who run it.

Lists runs by status, type and id; shows a run's description, outcome, what it is
waiting on and its whole event history; signals, queries, updates, cancels and terminates
runs; starts workflows; lists, pauses, unpauses and triggers schedules. Needs the
``ui`` extra (Starlette, uvicorn, Jinja2): pip install 'perdure[ui]'.
"""

from perdure._ui._app import create_app
from perdure._ui._server import serve

__all__ = ["create_app", "serve"]
