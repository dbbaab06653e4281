"""The HTTP binding: the SCEP routes (and their NDES aliases), the registration point's JSON
APIs, CRLs and the health check.

Only HTTP lives here: requests become bytes or parsed JSON for the services `scepd.wiring`
builds (`Services`), and their answers and refusals become responses (statuses from the error
table), with one log line per SCEP request. No protocol or policy decision is made here.
- app: create_app (routes, thread pool, lifespan), create_app_for_directory, ReloadingServices
- scep: GET and POST on the SCEP paths: query parsing, base64 quirks, size limits
- api: /api/v1/challenges and /ScepActions/{action} (service/rp_api.py decides)
- crl: /crl/{key_id}.crl; aia: /ca/{key_id}.crt (caIssuers); ocsp: /ocsp (GET and POST)
- metrics: /metrics (Prometheus), on the main port or a listener of its own
- tls: the server's TLS context (reloaded when its files change), the plain-HTTP port's guard
- console: the operator's console at /admin (sign-in, pages, actions)
- framing: RequestFraming, bodies read within the limit, refusals as text, log fields
- run: uvicorn with the connection handling scepd needs
- threads: WorkerThreads, what runs beside the event loop (enrollments, database reads)
May import: scepd.service, scepd.wiring (which builds everything from the instance
directory), scepd.protocol (its error vocabulary, the refusals written here), scepd.peerjson
(hostile JSON), scepd.logs and scepd.metrics (requests counted, /metrics served).
"""
