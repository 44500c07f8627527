//! Where the bundled model and demo catalogue live: beside the working directory, in the installed
//! package's share folder, or in the source tree this binary was built from.

use std::path::PathBuf;

/// The default model manifest: the int8 fashion ResNet50.
pub const DEFAULT_MODEL: &str = "models/fashion-resnet50-int8.manifest.json";
/// The fp32 network (not quantised), kept selectable with `--model` and as `bench`'s reference.
pub const FP32_MODEL: &str = "models/fashion-resnet50-fp32.manifest.json";
/// The garment parser's manifest (outfits).
pub const GARMENT_PARSER: &str = "models/garment-parser.manifest.json";
/// The bundled demo: `catalogue/` images, `labels.csv`, query `photos/`.
pub const DEMO_DIR: &str = "demo";

/// Finds a bundled file or folder by its path relative to the project root. Looks in the working
/// directory, then `/usr/share/fashion-kiosk`, then the source tree of this build. Returns the
/// first that exists, else the working-directory path (so the error that follows names it).
pub fn locate(relative: &str) -> PathBuf {
    let candidates = [
        PathBuf::from(relative),
        PathBuf::from("/usr/share/fashion-kiosk").join(relative),
        source_tree().join(relative),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

/// The project root this build was made from (the workspace above this crate).
pub fn source_tree() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
