-- Tenancy: the tenants and the hashes of their API keys, which every service's tenant
-- routes check (regua_platform::tenancy). Intake creates tenants (validating their
-- CDC art. 42-A identity); any service reads them.
CREATE TABLE tenancy.tenants (
    id            TEXT COLLATE "C" PRIMARY KEY,
    legal_name    TEXT NOT NULL,
    cnpj          TEXT NOT NULL,
    address       TEXT NOT NULL,
    contact       TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    test_clock    BOOLEAN NOT NULL DEFAULT false,
    clock_start   TIMESTAMPTZ,
    api_key_hash  BYTEA NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL
);

-- A database from before tenancy moved into the platform keeps its tenants in
-- intake.tenants (intake's migration 0005 drops that table once this has run).
DO $$
BEGIN
    IF to_regclass('intake.tenants') IS NOT NULL THEN
        INSERT INTO tenancy.tenants (id, legal_name, cnpj, address, contact, timezone,
                                     test_clock, clock_start, api_key_hash, created_at)
        SELECT id, legal_name, cnpj, address, contact, timezone,
               test_clock, clock_start, api_key_hash, created_at
          FROM intake.tenants
        ON CONFLICT DO NOTHING;
    END IF;
END
$$;
