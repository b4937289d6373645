"""The dashboard and HTTP API: `orchestrator ui`, or the daemon with `ui = true`.

- app.py: the FastAPI application (security headers, error shapes, the routers);
- deps.py: who is asking (session cookie, API token, or nobody when `ui_auth = false`),
  roles and CSRF, as FastAPI dependencies the API and the pages share;
- auth.py: passwords, sessions, tokens and the failed-login limiter;
- operations.py: cancel, replay, resume, fork and send, each recorded in `ui_actions`;
- api.py: the JSON API under /api/v1; pages.py: the server-rendered pages;
- server.py: uvicorn, blocking (`orchestrator ui`) or on a thread (the daemon).
"""
