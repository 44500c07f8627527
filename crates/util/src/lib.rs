//! The bottom layer every other crate of fashion-kiosk may use, and which uses none of them:
//! files written atomically, the SHA-256 fingerprint, and where the bundled data lies.

pub mod digest;
pub mod files;
pub mod logging;
pub mod resources;
