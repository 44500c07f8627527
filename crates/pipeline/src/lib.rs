//! One look-up, frame to recommendations, and what the kiosk writes down about it: the TOML
//! [`config`], the [`pipeline`] it assembles (the look-up itself: [`query`], whole frame or
//! [`outfit`]; re-ranking, [`recommend`]: filters, stock, co-scan trends), the scan log's
//! [`record`], the kiosk's [`status`] file, building a table
//! from a folder of images ([`indexer`]), and measuring it all ([`evaluate`], [`bench`],
//! [`frames`]).

pub mod args;
pub mod bench;
pub mod config;
pub mod evaluate;
pub mod frames;
pub mod indexer;
pub mod outfit;
pub mod pipeline;
pub mod query;
pub mod recommend;
pub mod record;
pub mod status;
