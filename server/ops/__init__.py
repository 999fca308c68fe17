"""Operations: structured logs, Prometheus metrics and security events."""
