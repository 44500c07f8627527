//! The embedding model: its manifest (what the network expects and who it is), loading the ONNX
//! file with tract once, and `embed()`, which turns a preprocessed image into an L2-normalised vector.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kiosk_table::catalogue::normalise;
use kiosk_util::digest::Fingerprint;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::preprocess::{Preprocessor, Region};

/// The manifest format this build understands.
pub const MANIFEST_FORMAT: &str = "fashion-kiosk-model/1";

/// What the network expects as input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub layout: String,
    pub colour_order: String,
    /// Pixel values are divided by this before mean/std normalisation (255 → 0..1).
    pub value_scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub crop: CropRule,
    pub resize: String,
}

/// How a frame is brought to the network's input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CropRule {
    /// The largest centred square (for a square input).
    CentreSquare,
    /// The largest centred part with the input's width-to-height ratio.
    CentreAspect,
}

impl InputSpec {
    /// Checks every field; errors name the field (the caller names the file).
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (16..=2048).contains(&self.width) && (16..=2048).contains(&self.height),
            "field `input.width`/`input.height` must be within 16..=2048, got {}x{}",
            self.width,
            self.height
        );
        ensure!(
            self.crop != CropRule::CentreSquare || self.width == self.height,
            "field `input.crop` is \"centre-square\" but the input is {}x{}",
            self.width,
            self.height
        );
        ensure!(
            self.layout == "NCHW",
            "field `input.layout` must be \"NCHW\", got {:?}",
            self.layout
        );
        ensure!(
            self.colour_order == "RGB",
            "field `input.colour_order` must be \"RGB\", got {:?}",
            self.colour_order
        );
        ensure!(
            self.resize == "bilinear",
            "field `input.resize` must be \"bilinear\", got {:?}",
            self.resize
        );
        ensure!(
            self.value_scale.is_finite() && self.value_scale > 0.0,
            "field `input.value_scale` must be a positive number"
        );
        ensure!(
            self.std.iter().all(|s| s.is_finite() && *s > 0.0),
            "field `input.std` must hold three positive numbers"
        );
        ensure!(
            self.mean.iter().all(|m| m.is_finite()),
            "field `input.mean` must hold three numbers"
        );
        Ok(())
    }
}

/// What the network produces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub dim: usize,
}

/// The manifest that travels beside every model file (`NAME.manifest.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub name: String,
    pub model_file: String,
    /// `fp32` or `int8`: informative, shown by `bench` and `check`.
    pub precision: String,
    pub sha256: String,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// The same network in another precision, whose tables this model reads.
    #[serde(default)]
    pub twin: Option<Twin>,
    #[serde(default)]
    pub provenance: serde_json::Value,
}

/// A manifest's `twin`: the same network in another precision, whose top-5 lists agree with this
/// one's (measured), so that a table built by either serves both ([`crate::form`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Twin {
    /// The twin's manifest, a file name beside this one.
    pub manifest: String,
    /// The SHA-256 of the twin's model file.
    pub sha256: String,
}

impl Manifest {
    /// Reads and validates a manifest; every error names the file and the field at fault.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model manifest {}", path.display()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("model manifest {} is not valid", path.display()))?;
        manifest
            .validate()
            .with_context(|| format!("model manifest {} is not valid", path.display()))?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.format == MANIFEST_FORMAT,
            "field `format` is {:?}, this build reads {MANIFEST_FORMAT:?}",
            self.format
        );
        validate_model_file(&self.model_file, &self.sha256)?;
        self.input.validate()?;
        if let Some(twin) = &self.twin {
            validate_model_file(&twin.manifest, &twin.sha256).context("field `twin`")?;
        }
        ensure!(
            (1..=65536).contains(&self.output.dim),
            "field `output.dim` must be within 1..=65536, got {}",
            self.output.dim
        );
        Ok(())
    }

    /// The fingerprint the manifest declares (validated at load).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_hex(&self.sha256).expect("validated at load")
    }
}

/// A loaded, optimised model, shared by every thread that embeds.
pub struct Embedder {
    manifest: Manifest,
    manifest_path: PathBuf,
    plan: Arc<TypedSimplePlan>,
}

impl Embedder {
    /// Loads the manifest, checks that the model file is the one it describes, and prepares the
    /// network with tract (load → typed → optimised → runnable).
    pub fn load(manifest_path: &Path) -> Result<Self> {
        let manifest = Manifest::load(manifest_path)?;
        let (model_path, bytes) = read_verified(
            manifest_path,
            &manifest.model_file,
            manifest.fingerprint(),
            "model file",
        )?;
        let plan = prepare(&bytes, &manifest)
            .with_context(|| format!("cannot load model {}", model_path.display()))?;
        Ok(Self {
            manifest,
            manifest_path: manifest_path.to_path_buf(),
            plan,
        })
    }

    /// Loads the table at `path` and checks it was made with this model or its twin.
    pub fn load_table(&self, path: &Path) -> Result<kiosk_table::catalogue::Table> {
        let table = kiosk_table::catalogue::Table::load(path)?;
        let twin = self
            .manifest
            .twin
            .as_ref()
            .map(|t| Fingerprint::from_hex(&t.sha256).expect("validated at load"));
        let accepted: Vec<Fingerprint> = std::iter::once(self.fingerprint()).chain(twin).collect();
        table.ensure_model(&accepted, self.manifest_path())?;
        Ok(table)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.manifest.fingerprint()
    }

    pub fn dim(&self) -> usize {
        self.manifest.output.dim
    }

    /// A per-thread embedding session: its own tract state, input tensor and preprocessing buffers,
    /// reused from call to call.
    pub fn session(&self) -> Result<Session> {
        let input = &self.manifest.input;
        let tensor = Tensor::zero::<f32>(&[1, 3, input.height as usize, input.width as usize])?;
        Ok(Session {
            state: self.plan.spawn()?,
            input: Arc::new(tensor),
            preprocessor: Preprocessor::new(input),
            dim: self.dim(),
        })
    }
}

fn prepare(bytes: &[u8], manifest: &Manifest) -> Result<Arc<TypedSimplePlan>> {
    let (model, shape) = optimise(bytes, &manifest.input)?;
    let volume: usize = shape.iter().product();
    ensure!(
        volume == manifest.output.dim,
        "output has {volume} values, the manifest says output.dim = {}",
        manifest.output.dim
    );
    model.into_runnable()
}

/// Checks a manifest's `model_file` (a file name beside it) and `sha256` (64 hex digits).
pub fn validate_model_file(model_file: &str, sha256: &str) -> Result<()> {
    ensure!(
        Fingerprint::from_hex(sha256).is_some(),
        "field `sha256` must be 64 hex digits"
    );
    ensure!(
        !model_file.is_empty() && !model_file.contains(['/', '\\']),
        "field `model_file` must be a file name beside the manifest, got {model_file:?}"
    );
    Ok(())
}

/// Reads `model_file` beside the manifest at `manifest_path` and checks that it is the file the
/// manifest's `expected` fingerprint names; `what` names it in errors ("model file"). Returns
/// its path and bytes.
pub fn read_verified(
    manifest_path: &Path,
    model_file: &str,
    expected: Fingerprint,
    what: &str,
) -> Result<(PathBuf, Vec<u8>)> {
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let model_path = dir.join(model_file);
    let file = std::fs::File::open(&model_path).with_context(|| {
        format!(
            "cannot read {what} {} (named by {})",
            model_path.display(),
            manifest_path.display()
        )
    })?;
    let bytes = verify_open_file(
        file,
        &model_path,
        manifest_path,
        expected,
        what,
        DigestCache::from_env().as_ref(),
    )?;
    Ok((model_path, bytes))
}

/// Reads the open `file` (at `model_path`) and checks its digest against `expected`, taking it
/// from `cache` when the file is one already verified. The file's identity comes from the open
/// descriptor before and after the read, so a file replaced or changed meanwhile (an upgrade
/// racing a start) is never remembered with the other bytes' digest.
fn verify_open_file(
    mut file: std::fs::File,
    model_path: &Path,
    manifest_path: &Path,
    expected: Fingerprint,
    what: &str,
    cache: Option<&DigestCache>,
) -> Result<Vec<u8>> {
    use std::io::Read;
    let cannot_read = || {
        format!(
            "cannot read {what} {} (named by {})",
            model_path.display(),
            manifest_path.display()
        )
    };
    let before = FileIdentity::of_open(&file, model_path);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(cannot_read)?;
    let after = FileIdentity::of_open(&file, model_path);
    let identity = before.filter(|before| after.as_ref() == Some(before));
    let remembered = cache
        .zip(identity.as_ref())
        .and_then(|(cache, identity)| cache.lookup(identity));
    let actual = match remembered {
        Some(digest) => digest,
        None => {
            let digest = Fingerprint(Sha256::digest(&bytes).into());
            // Only the file expected is remembered, and only if it did not change while read.
            if let (Some(cache), Some(identity)) = (cache, &identity) {
                if digest == expected {
                    cache.remember(identity, digest);
                }
            }
            digest
        }
    };
    if actual != expected {
        bail!(
            "{what} {} does not match its manifest {}: sha256 is {}, the manifest says {}",
            model_path.display(),
            manifest_path.display(),
            actual.short(),
            expected.short()
        );
    }
    Ok(bytes)
}

/// What identifies a file's contents without reading them: any write, truncation, replacement or
/// `touch` changes its change time (which no user can set) or another field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct FileIdentity {
    path: PathBuf,
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl FileIdentity {
    /// The identity of the file at `path` now.
    pub fn of(path: &Path) -> Option<Self> {
        Self::from_metadata(&std::fs::metadata(path).ok()?, path)
    }

    /// The identity of the open `file`, opened at `path` (whatever that path names now).
    pub fn of_open(file: &std::fs::File, path: &Path) -> Option<Self> {
        Self::from_metadata(&file.metadata().ok()?, path)
    }

    fn from_metadata(meta: &std::fs::Metadata, path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(Self {
            path: std::fs::canonicalize(path).ok()?,
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// Digests of model files already verified, by file identity, so that a kiosk restarting on the
/// same files does not hash ~40 MB again (1.2 G instructions on a Pi 5). It lives in the service's
/// state folder (`$STATE_DIRECTORY`, set by systemd's `StateDirectory=`); without one, every start
/// hashes. A file that changes in any way has a new identity and is hashed again.
pub struct DigestCache {
    path: PathBuf,
}

#[derive(Default, serde::Serialize, Deserialize)]
struct DigestRecords {
    verified: Vec<(FileIdentity, String)>,
}

impl DigestCache {
    const FILE: &'static str = "verified-models.json";

    /// The cache in `$STATE_DIRECTORY`, if the service has one.
    pub fn from_env() -> Option<Self> {
        let dir = std::env::var_os("STATE_DIRECTORY")?;
        // systemd may list several folders, colon-separated: the first is the service's own.
        let first = std::env::split_paths(&dir).next()?;
        Some(Self::in_folder(&first))
    }

    pub fn in_folder(dir: &Path) -> Self {
        Self {
            path: dir.join(Self::FILE),
        }
    }

    fn records(&self) -> DigestRecords {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// The digest remembered for a file of exactly this identity.
    pub fn lookup(&self, identity: &FileIdentity) -> Option<Fingerprint> {
        self.records()
            .verified
            .into_iter()
            .find(|(known, _)| known == identity)
            .and_then(|(_, digest)| Fingerprint::from_hex(&digest))
    }

    /// Remembers `digest` for the file of `identity` (replacing what was known of that path).
    /// A cache that cannot be written is logged, never an error: the next start hashes again.
    pub fn remember(&self, identity: &FileIdentity, digest: Fingerprint) {
        let mut records = self.records();
        records
            .verified
            .retain(|(known, _)| known.path != identity.path);
        records
            .verified
            .push((identity.clone(), digest.to_string()));
        let written = serde_json::to_vec_pretty(&records)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| kiosk_util::files::write_atomically(&self.path, &bytes));
        if let Err(err) = written {
            tracing::warn!("{err:#}; model files will be hashed again at the next start");
        }
    }
}

/// The ONNX network in `bytes` for one `1 × 3 × height × width` f32 input as `input` says,
/// optimised by tract, and the concrete shape of its one output.
pub fn optimise(bytes: &[u8], input: &InputSpec) -> Result<(TypedModel, Vec<usize>)> {
    let shape = [1usize, 3, input.height as usize, input.width as usize];
    let onnx = tract_onnx::onnx();
    let mut proto = onnx.proto_model_for_read(&mut std::io::Cursor::new(bytes))?;
    fold_weight_conversions(&mut proto);
    let model = onnx
        .model_for_proto_model(&proto)?
        .with_input_fact(0, f32::fact(shape).into())?
        .into_optimized()?;
    ensure!(
        model.output_outlets()?.len() == 1,
        "expected one output, found {}",
        model.output_outlets()?.len()
    );
    let output = model
        .output_fact(0)?
        .shape
        .as_concrete()
        .context("output shape is not concrete")?
        .to_vec();
    Ok((model, output))
}

/// Replaces each conversion of a stored weight to f32 by the weight already in f32: a `Cast` of
/// an f16 weight (how our models store weights at half the size) and a `DequantizeLinear` of an
/// int8 weight with one scale and zero point (how the emulated int8 model stores its convolution
/// weights). tract would otherwise convert such a weight at every run and several times while
/// optimising (~0.9 G instructions of a Pi 5's start-up, 8% of an int8 embedding). Both
/// conversions are exact, as tract computes them, so the network computes the same. Returns how
/// many.
fn fold_weight_conversions(proto: &mut tract_onnx::pb::ModelProto) -> usize {
    let Some(graph) = proto.graph.as_mut() else {
        return 0;
    };
    let mut folded = Vec::new();
    let mut sources = std::collections::HashSet::new();
    for (position, node) in graph.node.iter().enumerate() {
        let Some((weight, values)) = weight_in_f32(node, &graph.initializer) else {
            continue;
        };
        sources.insert(weight.name.clone());
        folded.push((
            position,
            tract_onnx::pb::TensorProto {
                name: node.output[0].clone(),
                dims: weight.dims.clone(),
                data_type: onnx_type::FLOAT,
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            },
        ));
    }
    for (position, _) in folded.iter().rev() {
        graph.node.remove(*position);
    }
    let count = folded.len();
    graph
        .initializer
        .extend(folded.into_iter().map(|(_, weight)| weight));
    // The stored originals that nothing reads any more.
    let read: std::collections::HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let unread: std::collections::HashSet<String> = sources
        .into_iter()
        .filter(|name| !read.contains(name.as_str()))
        .collect();
    graph.initializer.retain(|t| !unread.contains(&t.name));
    count
}

/// ONNX's element types that [`fold_weight_conversions`] reads.
mod onnx_type {
    pub const FLOAT: i32 = 1;
    pub const INT8: i32 = 3;
    pub const FLOAT16: i32 = 10;
}

fn initializer<'a>(
    initializers: &'a [tract_onnx::pb::TensorProto],
    name: &str,
) -> Option<&'a tract_onnx::pb::TensorProto> {
    initializers.iter().find(|t| t.name == name)
}

/// The stored weight that `node` converts to f32, and its f32 values, where it is a conversion
/// that [`fold_weight_conversions`] folds; `None` for any other node.
fn weight_in_f32<'a>(
    node: &tract_onnx::pb::NodeProto,
    initializers: &'a [tract_onnx::pb::TensorProto],
) -> Option<(&'a tract_onnx::pb::TensorProto, Vec<f32>)> {
    if node.output.len() != 1 || node.input.is_empty() {
        return None;
    }
    let weight = initializer(initializers, &node.input[0])?;
    let values: Vec<f32> = match node.op_type.as_str() {
        "Cast" => {
            let to_f32 = node
                .attribute
                .iter()
                .any(|a| a.name == "to" && a.i == i64::from(onnx_type::FLOAT));
            if !to_f32 || node.input.len() != 1 || weight.data_type != onnx_type::FLOAT16 {
                return None;
            }
            // f16 values travel as raw little-endian bytes, or one per int32 (ONNX's rule).
            let halves: Vec<u16> = if weight.raw_data.is_empty() {
                weight.int32_data.iter().map(|v| *v as u16).collect()
            } else {
                weight
                    .raw_data
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect()
            };
            halves
                .iter()
                .map(|h| half::f16::from_bits(*h).to_f32())
                .collect()
        }
        "DequantizeLinear" => {
            let [_, scale, zero_point] = node.input.as_slice() else {
                return None;
            };
            let (scale, zero_point) = (
                initializer(initializers, scale)?,
                initializer(initializers, zero_point)?,
            );
            let per_tensor = |t: &tract_onnx::pb::TensorProto| t.dims.iter().product::<i64>() == 1;
            let has_axis = node.attribute.iter().any(|a| a.name == "axis");
            if weight.data_type != onnx_type::INT8
                || scale.data_type != onnx_type::FLOAT
                || zero_point.data_type != onnx_type::INT8
                || !per_tensor(scale)
                || !per_tensor(zero_point)
                || has_axis
            {
                return None;
            }
            let scale = match (scale.raw_data.as_slice(), scale.float_data.as_slice()) {
                (&[a, b, c, d], _) => f32::from_le_bytes([a, b, c, d]),
                ([], &[value]) => value,
                _ => return None,
            };
            let zero_point = *int8_values(zero_point).first()?;
            // As tract and the ONNX standard compute it: (q - zero point) × scale in f32.
            int8_values(weight)
                .iter()
                .map(|q| (i32::from(*q) - i32::from(zero_point)) as f32 * scale)
                .collect()
        }
        _ => return None,
    };
    let count: i64 = weight.dims.iter().product();
    (i64::try_from(values.len()) == Ok(count)).then_some((weight, values))
}

/// An int8 tensor's values: raw bytes, or one per int32 (ONNX's rule).
fn int8_values(tensor: &tract_onnx::pb::TensorProto) -> Vec<i8> {
    if tensor.raw_data.is_empty() {
        tensor.int32_data.iter().map(|v| *v as i8).collect()
    } else {
        tensor.raw_data.iter().map(|b| *b as i8).collect()
    }
}

/// `input` ready to be written: tract may still hold the previous run's tensor, and then a
/// fresh buffer of the same shape takes its place.
pub fn writable_input(input: &mut Arc<Tensor>) -> Result<&mut Tensor> {
    if Arc::get_mut(input).is_none() {
        *input = Arc::new(Tensor::zero::<f32>(input.shape())?);
    }
    Ok(Arc::get_mut(input).expect("fresh Arc is unique"))
}

/// One thread's embedding state: call [`Session::embed_image`] as often as needed.
pub struct Session {
    state: TypedSimpleState,
    input: Arc<Tensor>,
    preprocessor: Preprocessor,
    dim: usize,
}

impl Session {
    /// Preprocesses `image` (region, resize, normalise) and embeds it. Returns the L2-normalised
    /// embedding.
    pub fn embed_image(&mut self, image: &image::RgbImage, region: Region) -> Result<Vec<f32>> {
        self.preprocess(image, region)?;
        self.embed_prepared()
    }

    /// Fills the input tensor from `image` without running the network (for benchmarks).
    pub fn preprocess(&mut self, image: &image::RgbImage, region: Region) -> Result<()> {
        let tensor = writable_input(&mut self.input)?;
        self.preprocessor.run(
            image,
            region,
            tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        )
    }

    /// Runs the network on the tensor [`Session::preprocess`] filled.
    pub fn embed_prepared(&mut self) -> Result<Vec<f32>> {
        let outputs = self
            .state
            .run(tvec!(TValue::from_const(self.input.clone())))
            .context("model inference failed")?;
        let plain = outputs[0].try_as_plain_ram()?;
        let view = plain.as_slice::<f32>()?;
        ensure!(
            view.len() == self.dim,
            "model produced {} values, expected {}",
            view.len(),
            self.dim
        );
        let mut vector = view.to_vec();
        normalise(&mut vector);
        Ok(vector)
    }
}

impl Session {
    /// Runs the network once on the prepared input, adding the time spent in each operator type
    /// to `totals` (for `bench --profile`).
    pub fn profile_prepared(&mut self, totals: &mut HashMap<String, Duration>) -> Result<()> {
        let inputs = tvec!(TValue::from_const(self.input.clone()));
        self.state
            .run_plan_with_eval(inputs, |context, state, node, inputs| {
                let start = Instant::now();
                let outputs = tract_onnx::tract_core::plan::eval(context, state, node, inputs);
                *totals.entry(node.op().name().to_string()).or_default() += start.elapsed();
                outputs
            })
            .context("model inference failed")?;
        Ok(())
    }
}

/// A tract executor that splits each matrix product over `threads` threads (1: no threads).
/// Use it with `tract_linalg::multithread::multithread_tract_scope` around `embed` calls.
pub fn executor(threads: usize) -> tract_linalg::multithread::Executor {
    if threads <= 1 {
        tract_linalg::multithread::Executor::SingleThread
    } else {
        tract_linalg::multithread::Executor::multithread(threads)
    }
}

/// tract 0.23.9's AVX2 int8 kernel runs ~13× slower than its AVX one on the x86 machines we
/// measured (an AVX-SSE transition; models/README.md). Unless the user chose kernels with
/// `TRACT_CPU_ISA`, leave AVX2 out of tract's pool. Call it before anything else runs, while the
/// process is single-threaded and before tract first reads the variable. No effect off x86_64: on
/// ARM tract rejects x86 tokens, so the choice cannot be a build-wide environment variable.
pub fn avoid_slow_int8_kernel() {
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("TRACT_CPU_ISA").is_none() {
        std::env::set_var("TRACT_CPU_ISA", "-avx2");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_models_weight_conversions_are_folded_into_f32_weights() {
        let models = kiosk_util::resources::source_tree().join("models");
        // Each model's two head weights are f16 casts; the emulated twin also dequantises the
        // int8 weights of its 53 convolutions.
        for (file, conversions) in [
            ("fashion-resnet50-int8.onnx", 2),
            ("fashion-resnet50-fp32.onnx", 2),
            ("fashion-resnet50-int8-emulated.onnx", 55),
        ] {
            let bytes = std::fs::read(models.join(file)).unwrap();
            let onnx = tract_onnx::onnx();
            let mut proto = onnx
                .proto_model_for_read(&mut std::io::Cursor::new(&bytes))
                .unwrap();
            let before = proto.graph.as_ref().unwrap().node.len();
            let folded = fold_weight_conversions(&mut proto);
            let graph = proto.graph.as_ref().unwrap();
            assert!(folded >= conversions, "{file}: {folded} conversions folded");
            assert_eq!(graph.node.len(), before - folded, "{file}");
            assert!(
                graph.node.iter().all(|n| !matches!(
                    n.op_type.as_str(),
                    "Cast" | "DequantizeLinear"
                ) || !graph
                    .initializer
                    .iter()
                    .any(|t| t.name == n.input[0])),
                "{file}: a weight is still converted at run time"
            );
            assert!(
                graph
                    .initializer
                    .iter()
                    .all(|t| t.data_type != onnx_type::FLOAT16),
                "{file}"
            );
        }
    }

    #[test]
    fn a_folded_int8_weight_is_the_dequantised_value() {
        use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
        let tensor = |name: &str, data_type, dims: Vec<i64>, raw_data: Vec<u8>| TensorProto {
            name: name.into(),
            data_type,
            dims,
            raw_data,
            ..Default::default()
        };
        let weights = [-128i8, -3, 0, 5, 127];
        let model = |attribute: Vec<AttributeProto>| ModelProto {
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    op_type: "DequantizeLinear".into(),
                    input: vec!["w".into(), "s".into(), "z".into()],
                    output: vec!["w_f32".into()],
                    attribute,
                    ..Default::default()
                }],
                initializer: vec![
                    tensor(
                        "w",
                        onnx_type::INT8,
                        vec![5],
                        weights.iter().map(|w| *w as u8).collect(),
                    ),
                    tensor(
                        "s",
                        onnx_type::FLOAT,
                        vec![],
                        0.25f32.to_le_bytes().to_vec(),
                    ),
                    tensor("z", onnx_type::INT8, vec![], vec![(-2i8) as u8]),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut proto = model(vec![]);
        assert_eq!(fold_weight_conversions(&mut proto), 1);
        let graph = proto.graph.as_ref().unwrap();
        assert!(graph.node.is_empty());
        let folded = graph
            .initializer
            .iter()
            .find(|t| t.name == "w_f32")
            .unwrap();
        let values: Vec<f32> = folded
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, [-31.5, -0.25, 0.5, 1.75, 32.25]);
        assert!(!graph.initializer.iter().any(|t| t.name == "w"));

        // A dequantisation along an axis (per-channel scales) is left to tract.
        let mut per_channel = model(vec![AttributeProto {
            name: "axis".into(),
            i: 0,
            ..Default::default()
        }]);
        assert_eq!(fold_weight_conversions(&mut per_channel), 0);
        assert_eq!(per_channel.graph.unwrap().node.len(), 1);
    }

    #[test]
    fn a_digest_is_remembered_by_file_identity_and_forgotten_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.onnx");
        std::fs::write(&file, b"weights").unwrap();
        let cache = DigestCache::in_folder(dir.path());
        let identity = FileIdentity::of(&file).unwrap();
        assert_eq!(cache.lookup(&identity), None);
        let digest = Fingerprint(Sha256::digest(b"weights").into());
        cache.remember(&identity, digest);
        assert_eq!(
            cache.lookup(&FileIdentity::of(&file).unwrap()),
            Some(digest)
        );
        // Same size, other bytes: a new identity, so it is hashed again.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, b"weighTs").unwrap();
        assert_eq!(cache.lookup(&FileIdentity::of(&file).unwrap()), None);
        // A corrupt cache file is an empty cache.
        std::fs::write(dir.path().join(DigestCache::FILE), b"{not json").unwrap();
        assert_eq!(cache.lookup(&identity), None);
    }

    #[test]
    fn a_model_replaced_while_it_is_read_is_not_remembered_with_the_old_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DigestCache::in_folder(dir.path());
        let (manifest, model) = (dir.path().join("m.json"), dir.path().join("model.onnx"));
        let old = Fingerprint(Sha256::digest(b"old weights").into());
        let new = Fingerprint(Sha256::digest(b"new weights").into());
        std::fs::write(&model, b"old weights").unwrap();
        // A start opens the old file; an upgrade renames the new one over it before the read.
        let opened = std::fs::File::open(&model).unwrap();
        let staged = dir.path().join(".model.onnx.dpkg-new");
        std::fs::write(&staged, b"new weights").unwrap();
        std::fs::rename(&staged, &model).unwrap();
        let bytes = verify_open_file(opened, &model, &manifest, old, "model", Some(&cache));
        assert_eq!(bytes.unwrap(), b"old weights");
        // The restart after the upgrade, with the new manifest: the new file is accepted.
        let file = std::fs::File::open(&model).unwrap();
        let bytes = verify_open_file(file, &model, &manifest, new, "model", Some(&cache));
        assert_eq!(bytes.unwrap(), b"new weights");
        assert_eq!(
            cache.lookup(&FileIdentity::of(&model).unwrap()),
            Some(new),
            "the new file remembered with its own digest"
        );
    }

    #[test]
    fn fingerprint_round_trips_through_hex() {
        let hex = "00ff10ab".repeat(8);
        let fp = Fingerprint::from_hex(&hex).unwrap();
        assert_eq!(fp.to_string(), hex);
        assert_eq!(fp.short(), "00ff10ab00ff");
        assert!(Fingerprint::from_hex("abc").is_none());
        assert!(Fingerprint::from_hex(&"zz".repeat(32)).is_none());
    }
}
