//! fashion-kiosk: turn a camera frame into fashion recommendations on a Raspberry Pi.
//!
//! The core is pure and device-free: [`preprocess`] an image as the [`model`] manifest says,
//! embed it with tract, and search the [`catalogue`] table for the nearest items. [`indexer`]
//! builds tables, [`evaluate`] measures their quality and [`bench`] their speed.

pub mod bench;
pub mod catalogue;
pub mod evaluate;
pub mod indexer;
pub mod labels;
pub mod model;
pub mod preprocess;
pub mod query;
pub mod resources;
