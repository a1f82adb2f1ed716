//! The platform's control plane: the daemon's state (`state`), what deploys
//! and inspects apps (`platform`), the control API's wire types (`api`), its
//! server (`server`) and the client the CLI is built on (`client`).
//!
//! Invariants: wire types are only in `api` and never derived on internal
//! state; a deploy takes traffic only once its app is compiled, linked and
//! recorded; a failed deploy changes nothing that serves; two deploys of one
//! app never run at once (the second gets 409).

pub mod api;
pub mod client;
pub mod platform;
pub mod server;
pub mod state;

pub use platform::{ControlError, DaemonConfig, DeployClaim, DeployOptions, Platform};
