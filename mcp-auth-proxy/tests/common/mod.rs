//! Shared harness of the gateway's and the bridge's tests.
#![allow(dead_code)]

pub mod gateway;
pub mod oidc;
#[path = "../../../tests/common/processes.rs"]
mod processes;
#[allow(unused_imports)] // not every test binary runs an external program
pub use processes::*;
