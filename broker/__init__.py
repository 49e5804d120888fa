"""Network services: broker, PRNG sync, control/telemetry bus, broker CLI."""
