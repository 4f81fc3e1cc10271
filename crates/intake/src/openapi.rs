//! The OpenAPI 3.1 document served at `/openapi.json`. Request schemas come from the
//! contract types, so HTTP and NATS cannot describe different payloads.

use regua_contract::events::CustomerState;
use regua_contract::inbound::{CustomerUpsert, InvoiceCancel, InvoiceUpsert, PaymentReceived};
use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Value, json};

fn schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3().into_generator();
    serde_json::to_value(generator.into_root_schema_for::<T>()).unwrap_or(Value::Null)
}

fn problem() -> Value {
    json!({
        "description": "RFC 9457 problem",
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

fn submit_responses() -> Value {
    json!({
        "202": { "description": "Durable; body has the outcome: accepted, duplicate, stale, or pending", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ItemResult" } } } },
        "401": problem(), "404": problem(), "422": problem(), "503": problem(),
    })
}

fn tenant_param() -> Value {
    json!({ "name": "tenant", "in": "path", "required": true, "schema": { "type": "string" } })
}

fn idempotency_param() -> Value {
    json!({ "name": "Idempotency-Key", "in": "header", "required": false, "schema": { "type": "string", "maxLength": 200 }, "description": "Becomes the Nats-Msg-Id: a repeat is reported as duplicate" })
}

/// The document.
pub fn document() -> Value {
    let body = |name: &str| json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{name}") } } } });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "regua", "version": "1.0.0", "description": "Invoices, customers, tenants and payments in. The same payloads as the NATS subjects regua.v1.in.<tenant>.*. Payment routes, the invoice read with its amount due, and the PIX webhook are served by reconciliation." },
        "components": {
            "securitySchemes": {
                "tenantKey": { "type": "http", "scheme": "bearer", "description": "The tenant API key returned once by POST /v1/tenants" },
                "adminToken": { "type": "http", "scheme": "bearer", "description": "REGUA_ADMIN_TOKEN" }
            },
            "schemas": {
                "InvoiceUpsert": schema::<InvoiceUpsert>(),
                "InvoiceCancel": schema::<InvoiceCancel>(),
                "CustomerUpsert": schema::<CustomerUpsert>(),
                "PaymentReceived": schema::<PaymentReceived>(),
                "Customer": schema::<CustomerState>(),
                "InvoiceBatch": { "type": "object", "required": ["invoices"], "properties": { "invoices": { "type": "array", "minItems": 1, "maxItems": 1000, "items": { "$ref": "#/components/schemas/InvoiceUpsert" } } } },
                "ItemResult": { "type": "object", "required": ["message_id", "outcome"], "properties": {
                    "index": { "type": "integer" }, "invoice_id": { "type": "string" }, "message_id": { "type": "string" },
                    "outcome": { "enum": ["accepted", "duplicate", "stale", "rejected", "pending"] },
                    "reason": { "type": "string" },
                    "errors": { "type": "array", "items": { "$ref": "#/components/schemas/FieldIssue" } },
                    "warnings": { "type": "array", "items": { "$ref": "#/components/schemas/FieldIssue" } } } },
                "FieldIssue": { "type": "object", "required": ["field", "code", "message"], "properties": { "field": { "type": "string" }, "code": { "type": "string" }, "message": { "type": "string" } } },
                "Problem": { "type": "object", "required": ["type", "title", "status"], "properties": {
                    "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" }, "detail": { "type": "string" },
                    "message_id": { "type": "string" },
                    "errors": { "type": "array", "items": { "$ref": "#/components/schemas/FieldIssue" } },
                    "warnings": { "type": "array", "items": { "$ref": "#/components/schemas/FieldIssue" } } } },
                "NewTenant": { "type": "object", "required": ["id", "legal_name", "cnpj", "address", "contact"], "properties": {
                    "id": { "type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{1,62}$" }, "legal_name": { "type": "string" }, "cnpj": { "type": "string" },
                    "address": { "type": "string" }, "contact": { "type": "string" },
                    "timezone": { "type": "string", "default": "America/Sao_Paulo" }, "test_clock": { "type": "boolean", "default": false },
                    "now": { "type": "string", "format": "date-time" } } }
            }
        },
        "security": [ { "tenantKey": [] } ],
        "paths": {
            "/v1/tenants": { "post": { "summary": "Create a tenant; the response carries its api_key, shown once", "security": [ { "adminToken": [] } ], "requestBody": body("NewTenant"),
                "responses": { "201": { "description": "Created" }, "401": problem(), "403": problem(), "409": problem(), "422": problem() } } },
            "/v1/tenants/{tenant}/invoices": { "post": { "summary": "Create or replace an invoice", "parameters": [tenant_param(), idempotency_param()], "requestBody": body("InvoiceUpsert"), "responses": submit_responses() } },
            "/v1/tenants/{tenant}/invoices:batch": { "post": { "summary": "Up to 1000 invoices, with a result per item", "parameters": [tenant_param(), idempotency_param()], "requestBody": body("InvoiceBatch"),
                "responses": { "200": { "description": "One result per item, in order, and a summary by outcome" }, "401": problem(), "404": problem(), "422": problem(), "503": problem() } } },
            "/v1/tenants/{tenant}/invoices:cancel": { "post": { "summary": "Cancel an invoice (final)", "parameters": [tenant_param(), idempotency_param()], "requestBody": body("InvoiceCancel"), "responses": submit_responses() } },
            "/v1/tenants/{tenant}/invoices/{invoice_id}": { "get": { "summary": "An invoice as stored; with reconciliation running, also amount_due (principal, fine, interest, paid, balance for the tenant's today), its ledger and payments", "parameters": [tenant_param(), { "name": "invoice_id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "The invoice, its status and revision" }, "401": problem(), "404": problem() } } },
            "/v1/tenants/{tenant}/customers": { "post": { "summary": "Create or replace a customer", "parameters": [tenant_param(), idempotency_param()], "requestBody": body("CustomerUpsert"), "responses": submit_responses() } },
            "/v1/tenants/{tenant}/customers/{customer_id}": { "get": { "summary": "A customer as stored", "parameters": [tenant_param(), { "name": "customer_id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "The customer" }, "401": problem(), "404": problem() } } },
            "/v1/tenants/{tenant}/messages/{message_id}": { "get": { "summary": "The recorded outcome of one inbound message (NATS or HTTP)", "parameters": [tenant_param(), { "name": "message_id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "outcome, detail, processed_at" }, "401": problem(), "404": problem() } } },
            "/v1/tenants/{tenant}/keys": { "get": { "summary": "The tenant's API keys: key_id, created_at, expires_at, revoked_at, active (never a key)", "parameters": [tenant_param()],
                "responses": { "200": { "description": "{\"keys\": [...]}" }, "401": problem() } } },
            "/v1/tenants/{tenant}/keys:rotate": { "post": { "summary": "A new API key (shown once); the keys it replaces keep working for grace_seconds (default 86400, at most 30 days)", "parameters": [tenant_param()],
                "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": { "grace_seconds": { "type": "integer", "minimum": 0, "maximum": 2592000 } } } } } },
                "responses": { "201": { "description": "key_id, api_key, previous_keys_expire_at" }, "401": problem(), "422": problem() } } },
            "/v1/tenants/{tenant}/keys/{key_id}": { "delete": { "summary": "Revoke a key at once (not the last working one)", "parameters": [tenant_param(), { "name": "key_id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }],
                "responses": { "204": { "description": "revoked" }, "401": problem(), "404": problem(), "409": problem() } } },
            "/v1/tenants/{tenant}/payments": { "post": { "summary": "Record a payment (reconciliation): matched, unmatched or duplicate", "parameters": [tenant_param(), idempotency_param()], "requestBody": body("PaymentReceived"),
                "responses": { "200": { "description": "outcome: matched (invoice_id, matched_by, settled, balance_cents, credit_cents), unmatched (reason) or duplicate" }, "401": problem(), "422": problem() } } },
            "/v1/tenants/{tenant}/payments/unmatched": { "get": { "summary": "Payments waiting for a match, with their reason", "parameters": [tenant_param()],
                "responses": { "200": { "description": "{\"payments\": [...]}" }, "401": problem() } } },
            "/v1/tenants/{tenant}/payments/{payment_id}:match": { "post": { "summary": "Apply a waiting payment to an invoice", "parameters": [tenant_param(), { "name": "payment_id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["invoice_id"], "properties": { "invoice_id": { "type": "string" } } } } } },
                "responses": { "200": { "description": "matched_by: manual" }, "401": problem(), "404": problem(), "409": problem(), "422": problem() } } },
            "/v1/tenants/{tenant}/credits": { "get": { "summary": "Overpayments held as customer credit, flagged for review", "parameters": [tenant_param()],
                "responses": { "200": { "description": "{\"credits\": [...]}" }, "401": problem() } } },
            "/v1/tenants/{tenant}/pix/webhook-secret": { "post": { "summary": "Issue or rotate the PIX webhook secret (shown once)", "parameters": [tenant_param()],
                "responses": { "201": { "description": "secret and webhook_url" }, "401": problem() } } },
            "/webhooks/pix/{tenant}": { "post": { "summary": "Banco Central PIX webhook: {\"pix\": [{endToEndId, txid, valor, horario, infoPagador}]}; secret as ?hmac=<secret> or a bearer token", "security": [], "parameters": [tenant_param(), { "name": "hmac", "in": "query", "required": false, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "a result per entry" }, "401": problem(), "422": { "description": "a result per entry; refused entries have errors, the others were applied" } } } },
            "/healthz": { "get": { "summary": "Liveness", "security": [], "responses": { "200": { "description": "ok" } } } },
            "/readyz": { "get": { "summary": "Readiness: Postgres, NATS and the streams", "security": [], "responses": { "200": { "description": "ready" }, "503": { "description": "not ready" } } } }
        }
    })
}
