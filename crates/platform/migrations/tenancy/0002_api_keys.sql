-- A tenant's API keys, several at once, so a key can be rotated (the previous one keeps
-- working until its expiry, the grace the rotation chose) and revoked. A key is stored
-- as its SHA-256 only; `id` names it in listings and revocations.
CREATE TABLE tenancy.api_keys (
    key_hash    BYTEA PRIMARY KEY,
    id          UUID NOT NULL UNIQUE,
    tenant      TEXT COLLATE "C" NOT NULL REFERENCES tenancy.tenants (id),
    created_at  TIMESTAMPTZ NOT NULL,
    -- NULL: until rotated or revoked.
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant ON tenancy.api_keys (tenant);

INSERT INTO tenancy.api_keys (key_hash, id, tenant, created_at)
SELECT api_key_hash, gen_random_uuid(), id, created_at FROM tenancy.tenants;

ALTER TABLE tenancy.tenants DROP COLUMN api_key_hash;
