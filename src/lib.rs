//! fashion-kiosk: turn a camera frame into fashion recommendations on a Raspberry Pi.
//!
//! The core is pure and device-free: [`preprocess`] an image as the [`model`] manifest says,
//! embed it with tract, and search the [`catalogue`] table for the nearest items (exactly, through
//! a [`prefilter`]); in a fixed
//! camera's frame, [`foreground`] finds the item by its difference to the empty scene; with a
//! person in view, the [`outfit`] garment parser finds each garment to look up on its own. [`indexer`]
//! builds tables (on a cluster, one [`shard`] per task into a [`part`] file, joined by [`merge`]),
//! [`evaluate`] measures their quality and [`bench`] their speed.
//!
//! The [`kiosk`] service runs it all day on a Pi: [`device`] drivers (camera, button, OLED) behind
//! small traits, a TOML [`config`], and a [`scanlog`] of every scan; [`check`] tries each part.

pub mod bench;
pub mod calibration;
pub mod catalogue;
pub mod cells;
pub mod check;
pub mod colour;
pub mod config;
pub mod device;
pub mod evaluate;
pub mod foreground;
pub mod form;
pub mod frames;
pub mod health;
pub mod indexer;
pub mod items;
pub mod kiosk;
pub mod labels;
pub mod merge;
pub mod model;
pub mod outfit;
pub mod part;
pub mod prefilter;
pub mod preprocess;
pub mod query;
pub mod recommend;
pub mod resources;
pub mod scanlog;
pub mod shard;
pub mod uplink;
