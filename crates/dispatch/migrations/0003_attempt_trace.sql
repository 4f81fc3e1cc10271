-- The trace a message was sent in, so a provider's status callback (which carries no
-- trace context) is linked back to it.
ALTER TABLE dispatch.attempts ADD COLUMN traceparent TEXT;
