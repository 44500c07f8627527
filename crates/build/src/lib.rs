//! Building a catalogue on many machines: each task embeds one [`shard`] of the folder
//! ([`shards`]) into a [`part`] file (Parquet, readable by other tools), and [`merge`] joins the
//! parts into one table.

pub mod merge;
pub mod part;
pub mod shard;
pub mod shards;
