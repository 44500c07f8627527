//! The scanning service: the [`kiosk`] (a pure core of events and a clock, and the I/O loop that
//! performs its effects), its [`device`]s behind small traits (camera, button, display), its
//! [`health`] and metrics, the [`scanlog`] of every scan, and [`check`], which tries each part.
//! It links no network code: the uplink is its own service (`kiosk-fleet`).

pub mod check;
pub mod device;
pub mod health;
pub mod kiosk;
pub mod scanlog;
