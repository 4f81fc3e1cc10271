//! The regua wire contract, version 1.
//!
//! Everything an integrator or another regua service codes against lives here and only
//! here: the subjects and stream names ([`subjects`]), the dispatch commands
//! ([`commands`]), the event envelope
//! ([`envelope`]), the inbound payloads ([`inbound`]), the domain events ([`events`]),
//! the core-NATS signals between services ([`signals`]), the stable rejection codes
//! ([`rejection`]) and the decoding of inbound payloads with those codes ([`decode`]).
//! [`map`] maps wire types to and from the domain's own vocabulary. [`proto`] renders all of it as JSON Schema,
//! an AsyncAPI 3 document and example payloads; the files under `proto/` at the top of
//! the repository are generated from it and a test fails when they are stale.

pub mod commands;
pub mod decode;
pub mod envelope;
pub mod events;
pub mod inbound;
pub mod map;
pub mod proto;
pub mod rejection;
pub mod signals;
pub mod subjects;

pub use envelope::Envelope;
pub use events::{DomainEvent, EventType};
pub use rejection::{FieldIssue, RejectCode, WarnCode};
pub use subjects::{InboundKind, TenantId};

/// The contract version carried in every subject and envelope.
pub const CONTRACT_VERSION: u32 = 1;
