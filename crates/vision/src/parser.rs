//! The garment parser: a segmentation network with its own manifest and fingerprint, beside the
//! embedder, that scores every part of the frame as background, skin, hair or a garment class.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use image::RgbImage;
use serde::Deserialize;
use tract_onnx::prelude::*;

use crate::model::{optimise, read_verified, validate_model_file, writable_input, InputSpec};
use crate::preprocess::{Preprocessor, Region};
use kiosk_util::digest::Fingerprint;

/// The parser manifest format this build understands.
pub const PARSER_FORMAT: &str = "fashion-kiosk-parser/1";

/// The classes every parser has, first and in this order; the garment classes follow.
pub const BODY_CLASSES: [&str; 3] = ["background", "skin", "hair"];

/// What the parser produces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParserOutputSpec {
    pub name: String,
    /// `[1, classes, height, width]`.
    pub shape: [usize; 4],
    pub layout: String,
    /// Input pixels per output cell, each way.
    pub stride: u32,
    /// `logits`: the class per pixel is the arg-max of the upsampled scores.
    pub kind: String,
    #[serde(rename = "use")]
    pub usage: String,
}

/// The manifest beside the parser's ONNX file (`NAME.manifest.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParserManifest {
    pub format: String,
    pub name: String,
    pub model_file: String,
    pub precision: String,
    pub sha256: String,
    pub input: InputSpec,
    pub output: ParserOutputSpec,
    /// Class names in output order: [`BODY_CLASSES`], then the garment classes.
    pub classes: Vec<String>,
    #[serde(default)]
    pub provenance: serde_json::Value,
}

impl ParserManifest {
    /// Reads and validates a parser manifest; every error names the file and the field at fault.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read parser manifest {}", path.display()))?;
        let manifest: ParserManifest = serde_json::from_str(&text)
            .with_context(|| format!("parser manifest {} is not valid", path.display()))?;
        manifest
            .validate()
            .with_context(|| format!("parser manifest {} is not valid", path.display()))?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.format == PARSER_FORMAT,
            "field `format` is {:?}, this build reads {PARSER_FORMAT:?}",
            self.format
        );
        validate_model_file(&self.model_file, &self.sha256)?;
        self.input.validate()?;
        ensure!(
            self.classes.len() > BODY_CLASSES.len() && self.classes.len() <= 255,
            "field `classes` must name background, skin, hair and 1 to 252 garment classes"
        );
        ensure!(
            self.classes[..BODY_CLASSES.len()] == BODY_CLASSES,
            "field `classes` must start with {BODY_CLASSES:?}, got {:?}",
            &self.classes[..BODY_CLASSES.len()]
        );
        for (i, class) in self.classes.iter().enumerate() {
            ensure!(
                !class.is_empty() && !self.classes[..i].contains(class),
                "field `classes` names {class:?} twice (or an empty class)"
            );
        }
        let output = &self.output;
        ensure!(
            output.layout == "NCHW" && output.kind == "logits",
            "field `output.layout` must be \"NCHW\" and `output.kind` \"logits\""
        );
        ensure!(
            output.stride > 0
                && output.shape
                    == [
                        1,
                        self.classes.len(),
                        self.input.height.div_ceil(output.stride) as usize,
                        self.input.width.div_ceil(output.stride) as usize,
                    ],
            "field `output.shape` {:?} does not match {} classes at stride {} of a {}x{} input",
            output.shape,
            self.classes.len(),
            output.stride,
            self.input.width,
            self.input.height
        );
        Ok(())
    }

    /// The fingerprint the manifest declares (validated at load).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_hex(&self.sha256).expect("validated at load")
    }
}

/// A loaded, optimised parser, shared by every thread that parses.
pub struct Parser {
    manifest: ParserManifest,
    path: PathBuf,
    plan: Arc<TypedSimplePlan>,
}

impl Parser {
    /// Loads the manifest, checks that the model file is the one it describes, and prepares the
    /// network with tract.
    pub fn load(manifest_path: &Path) -> Result<Self> {
        let manifest = ParserManifest::load(manifest_path)?;
        let (model_path, bytes) = read_verified(
            manifest_path,
            &manifest.model_file,
            manifest.fingerprint(),
            "parser model",
        )?;
        let plan = prepare(&bytes, &manifest)
            .with_context(|| format!("cannot load parser model {}", model_path.display()))?;
        Ok(Self {
            manifest,
            path: manifest_path.to_path_buf(),
            plan,
        })
    }

    pub fn manifest(&self) -> &ParserManifest {
        &self.manifest
    }

    pub fn manifest_path(&self) -> &Path {
        &self.path
    }

    /// A per-thread parsing session (its own tract state and buffers).
    pub fn session(&self) -> Result<ParseSession> {
        let input = &self.manifest.input;
        let tensor = Tensor::zero::<f32>(&[1, 3, input.height as usize, input.width as usize])?;
        Ok(ParseSession {
            state: self.plan.spawn()?,
            input: Arc::new(tensor),
            preprocessor: Preprocessor::new(input),
            classes: self.manifest.classes.clone(),
            shape: self.manifest.output.shape,
        })
    }
}

fn prepare(bytes: &[u8], manifest: &ParserManifest) -> Result<Arc<TypedSimplePlan>> {
    let (model, got) = optimise(bytes, &manifest.input)?;
    ensure!(
        got == manifest.output.shape,
        "output shape is {got:?}, the manifest says {:?}",
        manifest.output.shape
    );
    model.into_runnable()
}

/// One thread's parsing state.
pub struct ParseSession {
    state: TypedSimpleState,
    input: Arc<Tensor>,
    preprocessor: Preprocessor,
    classes: Vec<String>,
    shape: [usize; 4],
}

impl ParseSession {
    /// Scores every part of the view of `region` of `frame` (its largest centred part of the
    /// parser's shape).
    pub fn parse(&mut self, frame: &RgbImage, region: Region) -> Result<ClassScores> {
        let view = self.preprocessor.view(frame, region)?;
        let tensor = writable_input(&mut self.input)?;
        self.preprocessor.run(
            frame,
            region,
            tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        )?;
        let outputs = self
            .state
            .run(tvec!(TValue::from_const(self.input.clone())))
            .context("garment parser inference failed")?;
        let plain = outputs[0].try_as_plain_ram()?;
        let scores = plain.as_slice::<f32>()?;
        let [_, classes, rows, columns] = self.shape;
        ensure!(
            scores.len() == classes * rows * columns,
            "garment parser produced {} values, expected {}",
            scores.len(),
            classes * rows * columns
        );
        Ok(ClassScores {
            classes: self.classes.clone(),
            rows,
            columns,
            scores: scores.to_vec(),
            view,
        })
    }
}

/// The parser's class scores over one frame.
#[derive(Debug, Clone)]
pub struct ClassScores {
    pub classes: Vec<String>,
    pub rows: usize,
    pub columns: usize,
    /// Class-major: `scores[(class * rows + row) * columns + column]`.
    pub scores: Vec<f32>,
    /// The part of the frame that was parsed, `(x, y, width, height)`.
    pub view: (u32, u32, u32, u32),
}

impl ClassScores {
    /// The class of every pixel of the view (row-major, `width × height` of the view): the scores
    /// upsampled bilinearly (half-pixel centres, edges clamped), then the arg-max.
    pub fn label_map(&self) -> LabelMap {
        let (_, _, width, height) = self.view;
        let (width, height) = (width as usize, height as usize);
        let x_taps: Vec<(usize, usize, f32)> =
            (0..width).map(|x| taps(x, width, self.columns)).collect();
        let mut labels = vec![0u8; width * height];
        let mut row_scores = vec![0f32; self.classes.len() * self.columns];
        let mut best = vec![0f32; width];
        for y in 0..height {
            let (y0, y1, wy) = taps(y, height, self.rows);
            for class in 0..self.classes.len() {
                let plane = &self.scores[class * self.rows * self.columns..];
                let (top, bottom) = (
                    &plane[y0 * self.columns..(y0 + 1) * self.columns],
                    &plane[y1 * self.columns..(y1 + 1) * self.columns],
                );
                for (c, out) in row_scores[class * self.columns..(class + 1) * self.columns]
                    .iter_mut()
                    .enumerate()
                {
                    *out = top[c] + (bottom[c] - top[c]) * wy;
                }
            }
            let out = &mut labels[y * width..(y + 1) * width];
            for class in 0..self.classes.len() {
                let row = &row_scores[class * self.columns..(class + 1) * self.columns];
                for (x, &(x0, x1, wx)) in x_taps.iter().enumerate() {
                    let score = row[x0] + (row[x1] - row[x0]) * wx;
                    if class == 0 || score > best[x] {
                        best[x] = score;
                        out[x] = class as u8;
                    }
                }
            }
        }
        LabelMap {
            width: width as u32,
            height: height as u32,
            labels,
            origin: (self.view.0, self.view.1),
        }
    }
}

/// The two source cells and the weight of the second for output position `at` of `size`, from
/// `cells` cells (half-pixel centres, clamped at the edges).
fn taps(at: usize, size: usize, cells: usize) -> (usize, usize, f32) {
    let source = ((at as f32 + 0.5) * cells as f32 / size as f32 - 0.5).max(0.0);
    let first = (source.floor() as usize).min(cells - 1);
    let second = (first + 1).min(cells - 1);
    (first, second, source - first as f32)
}

/// The class of every pixel of the parsed view.
#[derive(Debug, Clone)]
pub struct LabelMap {
    pub width: u32,
    pub height: u32,
    /// Row-major class indices.
    pub labels: Vec<u8>,
    /// Where the view's top-left pixel lies in the frame.
    pub origin: (u32, u32),
}

impl LabelMap {
    pub fn at(&self, x: u32, y: u32) -> u8 {
        self.labels[(y * self.width + x) as usize]
    }

    /// Writes `other`'s labels over this map where it lies (it must lie inside).
    pub fn paste(&mut self, other: &LabelMap) {
        let (dx, dy) = (
            (other.origin.0 - self.origin.0) as usize,
            (other.origin.1 - self.origin.1) as usize,
        );
        let (width, other_width) = (self.width as usize, other.width as usize);
        for (y, row) in other.labels.chunks_exact(other_width).enumerate() {
            let at = (dy + y) * width + dx;
            self.labels[at..at + other_width].copy_from_slice(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(rows: usize, columns: usize, planes: &[Vec<f32>]) -> ClassScores {
        ClassScores {
            classes: (0..planes.len()).map(|c| format!("c{c}")).collect(),
            rows,
            columns,
            scores: planes.concat(),
            view: (10, 20, (columns * 4) as u32, (rows * 4) as u32),
        }
    }

    #[test]
    fn upsampling_keeps_each_cells_class_at_its_centre_and_splits_between_cells() {
        // Two columns of cells: class 1 wins on the left, class 2 on the right.
        let planes = vec![
            vec![0.0; 4],
            vec![2.0, -2.0, 2.0, -2.0],
            vec![-2.0, 2.0, -2.0, 2.0],
        ];
        let map = scores(2, 2, &planes).label_map();
        assert_eq!((map.width, map.height, map.origin), (8, 8, (10, 20)));
        for y in 0..8 {
            let row: Vec<u8> = (0..8).map(|x| map.at(x, y)).collect();
            assert_eq!(row, [1, 1, 1, 1, 2, 2, 2, 2], "row {y}");
        }
    }

    #[test]
    fn taps_clamp_at_the_edges_and_interpolate_between_centres() {
        assert_eq!(taps(0, 8, 2), (0, 1, 0.0));
        assert_eq!(taps(7, 8, 2), (1, 1, 0.375));
        let (a, b, w) = taps(4, 8, 2);
        assert_eq!((a, b), (0, 1));
        assert!((w - 0.625).abs() < 1e-6);
    }
}
