//! What the camera sees, as numbers: the embedding [`model`] and its manifest in tract, the
//! [`form`] that runs best on this CPU, [`preprocess`]ing, the item cut out of a frame by its
//! difference to the empty scene ([`foreground`]), [`colour`] correction and its
//! [`calibration`], and the garment [`parser`] with the [`palette`] that names a garment's
//! colour.

pub mod calibration;
pub mod colour;
pub mod foreground;
pub mod form;
pub mod model;
pub mod palette;
pub mod parser;
pub mod preprocess;
