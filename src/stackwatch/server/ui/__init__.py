"""The server-rendered web UI: login and the log explorer (Jinja2 pages, plain JS, uPlot charts).

Pages are rendered here; the data on them comes from the JSON API (``/api/v1/...``), which the
page's script calls with the session cookie, so the UI can do nothing the API would refuse.
"""

from stackwatch.server.ui.routes import router

__all__ = ["router"]
