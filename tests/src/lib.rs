//! cross-service tests live in tests/
