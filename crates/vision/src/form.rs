//! Which form of the network runs fastest on this CPU. A model's manifest may name its `twin`: the
//! same network computed in another precision, whose tables it reads (the int8 model's twin
//! computes its quantised network in fp32, so both find the same items; measured in
//! `models/README.md`). int8 pays only where the CPU has an int8 dot-product instruction (a Pi 5's
//! SDOT); elsewhere (a Pi 4's Cortex-A72, x86) the fp32 twin executes fewer instructions.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use crate::model::{Manifest, Twin};

/// The value of `model.manifest` (and `--model`) that picks the form by CPU.
pub const AUTO: &str = "auto";

/// Whether this CPU has an int8 dot-product instruction that tract's int8 kernels use.
pub fn has_int8_dot_product() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// The precision that runs fastest on a CPU with or without an int8 dot product.
pub fn fastest_precision(int8_dot_product: bool) -> &'static str {
    if int8_dot_product {
        "int8"
    } else {
        "fp32"
    }
}

/// The form picked for this CPU: the manifest to load and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub manifest: PathBuf,
    pub reason: String,
}

/// Of the model at `manifest` and its twin (if it names one), the form for a CPU with or without
/// an int8 dot product. The twin must be the file the manifest names (its SHA-256).
pub fn pick(manifest: &Path, int8_dot_product: bool) -> Result<Pick> {
    let given = Manifest::load(manifest)?;
    let wanted = fastest_precision(int8_dot_product);
    let cpu = if int8_dot_product {
        "this CPU has an int8 dot product"
    } else {
        "this CPU has no int8 dot product"
    };
    let Some(twin) = &given.twin else {
        return Ok(Pick {
            manifest: manifest.to_path_buf(),
            reason: format!("{} names no twin", given.name),
        });
    };
    if given.precision == wanted {
        return Ok(Pick {
            manifest: manifest.to_path_buf(),
            reason: format!("{cpu}: {wanted} runs fastest"),
        });
    }
    let (twin_path, twin_manifest) = load_twin(manifest, twin)?;
    Ok(Pick {
        manifest: twin_path,
        reason: format!(
            "{cpu}: {} runs faster than {}, whose twin it is",
            twin_manifest.name, given.name
        ),
    })
}

/// The manifest of the twin that the model at `manifest` names, if it names one.
pub fn twin(manifest: &Path) -> Result<Option<PathBuf>> {
    let given = Manifest::load(manifest)?;
    given
        .twin
        .map(|twin| Ok(load_twin(manifest, &twin)?.0))
        .transpose()
}

/// The twin's manifest beside `manifest`, loaded and checked to be the file it names (its SHA-256).
fn load_twin(manifest: &Path, twin: &Twin) -> Result<(PathBuf, Manifest)> {
    let twin_path = manifest
        .parent()
        .unwrap_or(Path::new("."))
        .join(&twin.manifest);
    let twin_manifest = Manifest::load(&twin_path)
        .with_context(|| format!("the twin {} names", manifest.display()))?;
    ensure!(
        twin_manifest.sha256 == twin.sha256,
        "the twin {} names is not the one it was measured with: {} says sha256 {}, {} expects {}",
        manifest.display(),
        twin_path.display(),
        &twin_manifest.sha256[..12],
        manifest.display(),
        &twin.sha256[..12]
    );
    Ok((twin_path, twin_manifest))
}

/// Resolves a configured manifest: none is the bundled model, [`AUTO`] the bundled model or its
/// twin, whichever runs faster on this CPU; any other path is taken as it is.
pub fn resolve(configured: Option<&Path>) -> Result<Pick> {
    let bundled = || kiosk_util::resources::locate(kiosk_util::resources::DEFAULT_MODEL);
    match configured {
        None => Ok(Pick {
            manifest: bundled(),
            reason: "the default".into(),
        }),
        Some(auto) if auto == Path::new(AUTO) => pick(&bundled(), has_int8_dot_product()),
        Some(path) => Ok(Pick {
            manifest: path.to_path_buf(),
            reason: "configured".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled(name: &str) -> PathBuf {
        kiosk_util::resources::source_tree()
            .join("models")
            .join(name)
    }

    #[test]
    fn int8_is_picked_only_where_the_cpu_has_an_int8_dot_product() {
        let int8 = bundled("fashion-resnet50-int8.manifest.json");
        let twin_manifest = bundled("fashion-resnet50-int8-emulated.manifest.json");
        assert_eq!(pick(&int8, true).unwrap().manifest, int8);
        assert_eq!(pick(&int8, false).unwrap().manifest, twin_manifest);
        assert_eq!(pick(&twin_manifest, true).unwrap().manifest, int8);
        assert_eq!(pick(&twin_manifest, false).unwrap().manifest, twin_manifest);
        assert!(pick(&int8, false)
            .unwrap()
            .reason
            .contains("no int8 dot product"));
        // The plain fp32 network is another network: it names no twin, so it is always itself.
        let fp32 = bundled("fashion-resnet50-fp32.manifest.json");
        assert_eq!(pick(&fp32, true).unwrap().manifest, fp32);
        assert_eq!(twin(&int8).unwrap(), Some(twin_manifest));
        assert_eq!(twin(&fp32).unwrap(), None);
    }

    #[test]
    fn a_twin_that_is_not_the_named_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "fashion-resnet50-int8.manifest.json",
            "fashion-resnet50-int8-emulated.manifest.json",
        ] {
            std::fs::copy(bundled(name), dir.path().join(name)).unwrap();
        }
        let twin = dir
            .path()
            .join("fashion-resnet50-int8-emulated.manifest.json");
        let text = std::fs::read_to_string(&twin).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["sha256"] = "ab".repeat(32).into();
        std::fs::write(&twin, json.to_string()).unwrap();
        let err = pick(
            &dir.path().join("fashion-resnet50-int8.manifest.json"),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is not the one it was measured with"), "{err}");
        let err = super::twin(&dir.path().join("fashion-resnet50-int8.manifest.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not the one it was measured with"), "{err}");
    }

    #[test]
    fn a_path_other_than_auto_is_taken_as_it_is() {
        let pick = resolve(Some(Path::new("/etc/models/x.manifest.json"))).unwrap();
        assert_eq!(pick.manifest, Path::new("/etc/models/x.manifest.json"));
    }
}
