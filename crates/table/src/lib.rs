//! The catalogue table: its versioned file format, validated load, and search (exact, through
//! the i8 table's [`prefilter`], or approximately by [`cells`]); the labels CSV its items carry.

pub mod catalogue;
pub mod cells;
pub mod items;
pub mod labels;
pub mod prefilter;
