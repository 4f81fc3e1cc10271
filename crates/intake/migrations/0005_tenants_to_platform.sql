-- Tenants and their API keys are the platform's now (the `tenancy` schema, which every
-- service's tenant routes check). The platform's tenancy migration, which runs before
-- this one, copied any tenants from here.
DROP TABLE IF EXISTS intake.tenants;
