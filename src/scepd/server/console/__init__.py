"""The operator's console at /admin: server-rendered pages (Jinja2, autoescaped) over the
administration (service/admin.py) and the accounts (service/accounts.py).

HTTP only, as the rest of server/: sign-in, the session cookie and CSRF checks are the
edge's part; every decision is a service's.
- routes: the pages and actions, and `console_routes` that app.py mounts at /admin
- sessions: transport (HTTPS or loopback), the session cookie, CSRF and role checks
- chart: the overview's hourly chart as SVG geometry, drawn by its template
May import: scepd.service, scepd.wiring, scepd.protocol (the refusals shown) and scepd.logs.
"""

from scepd.server.console.routes import console_routes

__all__ = ["console_routes"]
