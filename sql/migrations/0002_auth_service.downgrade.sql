DROP TABLE sessions;
DROP FUNCTION sessions_default_expiry();
