-- `invoices_by_customer` is read by no query: intake looks invoices up by their key
-- only (the batch's reads, the HTTP API's GET), and no other service reads intake's
-- schema. Every invoice written paid for an entry in it. (The scheduler, which does
-- take a customer's invoices together, keeps its own index on its own table.)
DROP INDEX IF EXISTS intake.invoices_by_customer;
