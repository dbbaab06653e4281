"""The HTTP binding: SCEP routes (and their NDES aliases), transport decoding, size limits.

Only HTTP lives here: it turns requests into bytes for `scepd.enrollment.EnrollmentService`
and its results into responses, and writes one log line per request. No protocol or policy
decisions are made in this package.
May import: every other package of scepd.
"""
