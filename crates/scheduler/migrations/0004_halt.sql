-- When the durable consumer `scheduler-halt` stopped an open invoice's dunning because
-- `invoice.paid` was stored, before the in-order consumer applied the payment in full.
-- While it is set and the invoice is still open, the invoice has no next step.
ALTER TABLE scheduler.invoices ADD COLUMN halted_at TIMESTAMPTZ;
