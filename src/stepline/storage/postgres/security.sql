-- Hardening tables (storage/sql_security.py, migration 0008): expression errors, dashboard sessions, login throttle.

-- name: upsert_expression_error
INSERT INTO expression_errors (function_id, place, expression, message, count, first_at, last_at)
VALUES (%(function_id)s, %(place)s, %(expression)s, %(message)s, %(count)s, %(now)s, %(now)s)
ON CONFLICT (function_id, place) DO UPDATE SET expression = excluded.expression, message = excluded.message,
    count = expression_errors.count + excluded.count, last_at = excluded.last_at

-- name: list_expression_errors
SELECT function_id, place, expression, message, count, first_at, last_at FROM expression_errors
ORDER BY function_id, place

-- name: insert_dashboard_session
INSERT INTO dashboard_sessions (sid, created_at, expires_at, revoked_at) VALUES (%(sid)s, %(now)s, %(expires_at)s, NULL)

-- name: delete_expired_dashboard_sessions
DELETE FROM dashboard_sessions WHERE expires_at < %(now)s

-- name: revoke_dashboard_session
UPDATE dashboard_sessions SET revoked_at = %(now)s WHERE sid = %(sid)s AND revoked_at IS NULL

-- name: dashboard_session_valid
SELECT 1 FROM dashboard_sessions WHERE sid = %(sid)s AND revoked_at IS NULL AND expires_at > %(now)s

-- name: add_login_failure
INSERT INTO login_failures (address, minute, count) VALUES (%(address)s, %(minute)s, 1)
ON CONFLICT (address, minute) DO UPDATE SET count = login_failures.count + 1
RETURNING count

-- name: login_failures_in_minute
SELECT count FROM login_failures WHERE address = %(address)s AND minute = %(minute)s

-- name: delete_old_login_failures
DELETE FROM login_failures WHERE minute < %(minute)s
