//! The application: see ../../app_main.rs (both apps run the same code; only their
//! reqwest dependency differs).

include!("../../app_main.rs");
