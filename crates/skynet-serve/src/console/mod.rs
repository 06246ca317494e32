//! The people's console: an HTTP API under `/api/v1` and the web console at `/`, served on
//! `[api] listen`, beside (not instead of) `/metrics`, `/healthz` and `/readyz`.
//!
//! [`Console`] is the hub the pipeline feeds: committed revisions and cell changes (pushed to
//! browsers over one Server-Sent Events stream per tab), each camera's latest annotated frame
//! and live thresholds, each sensor's last reading, and the way back into the risk stage for
//! status changes made by people. It reads the incident history from the outbox and keeps
//! users, tokens, notes, acknowledgements and the audit log in the same state database.

mod api;
mod assets;
pub mod auth;
mod city;
mod hosts;
mod live;
mod live_view;
pub mod passwords;
mod patrol;
mod settings;
pub mod store;
mod streams;
mod views;
mod what_if;

pub use api::router as console_router;
pub use auth::{Permission, Role, Scope, User};
pub use city::ClusterHealth;
pub use hosts::{AllowedHosts, check_host};
pub use live::{
    CameraRegistration, Console, GridScope, LiveMessage, PlatformFigures, PlatformRegistration,
    SensorRegistration, SubmitStatus,
};
pub use live_view::{LiveRefusal, LiveVideo};
pub use patrol::PatrolRegistration;
pub(crate) use settings::canonical;
pub use settings::{ApiConfig, ApiSettings, LiveConfig, LiveSettings};
pub use store::{ConsoleStore, StoreError, TokenKind};
pub use what_if::{WHAT_IF_EXAMPLES, WhatIf, WhatIfError, WhatIfExample, WhatIfReport};
