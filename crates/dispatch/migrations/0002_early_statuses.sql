-- Statuses that arrived before the send they report on was recorded: a provider can
-- call back within milliseconds of accepting a message, before the worker commits its
-- result. Each waits here until the send is recorded, then is applied once; one that
-- never matches (a message regua did not send) is dropped after seven days.
CREATE TABLE dispatch.early_statuses (
    provider            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    status              TEXT NOT NULL,
    reason              TEXT,
    received_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, provider_message_id, status)
);
