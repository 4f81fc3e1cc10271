-- How many times a step of the invoice was planned again because its message reached
-- a dispatcher after its send window had closed (`message.skipped`, `window_closed`):
-- the command of the n-th new plan is `<command id>:r<n>`, so the dispatchers, which
-- have recorded the late one as skipped, take it as a new message.
ALTER TABLE scheduler.invoices ADD COLUMN refires INTEGER NOT NULL DEFAULT 0;
