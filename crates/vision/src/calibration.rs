//! A fixed camera's calibration, kept beside the empty scene's picture (`scene.reference`, say
//! `empty-scene.png`): the background model's noise map (`empty-scene.noise.png`) and a record
//! (`empty-scene.toml`) of when it was taken, the camera controls locked for it, the white card's
//! reading and the white patch's colour. Each file is written atomically, the record last with
//! checksums of the pictures it belongs to, so a record left over from another calibration is
//! noticed and ignored rather than mixed in.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use image::{ImageBuffer, Luma, RgbImage};
use serde::{Deserialize, Serialize};

use crate::colour::{self, CardReading, Correction, WhitePatch};
use crate::foreground::{self, BackgroundModel};
use kiosk_util::files::write_atomically;

/// The record's format name.
const FORMAT: &str = "fashion-kiosk-calibration/1";
/// Noise map values are stored as this many steps per grey level (16-bit PNG).
const NOISE_STEPS: f32 = 256.0;

/// A camera control as set when the calibration was taken (a V4L2 control id and value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlSetting {
    pub id: u32,
    /// The driver's name of the control, for people reading the record.
    pub name: String,
    pub value: i64,
}

/// How colour is calibrated (`[scene]` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColourSettings {
    /// What the white card becomes after correction.
    pub card_level: f32,
    /// A neutral patch in view, `[x, y, width, height]`.
    pub white_patch: Option<[u32; 4]>,
}

impl Default for ColourSettings {
    fn default() -> Self {
        ColourSettings {
            card_level: colour::DEFAULT_CARD_LEVEL,
            white_patch: None,
        }
    }
}

/// The record beside the picture.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: String,
    /// When the calibration was taken (RFC 3339).
    taken: String,
    width: u32,
    height: u32,
    /// Frames averaged into the empty scene.
    frames: u32,
    /// CRC-32 of the picture and of the noise map this record belongs to.
    reference_crc32: u32,
    noise_crc32: Option<u32>,
    #[serde(default)]
    controls: Vec<ControlSetting>,
    card: Option<CardReading>,
    patch: Option<WhitePatch>,
}

/// Everything a calibration says about a fixed camera's scene.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub scene: BackgroundModel,
    /// Frames averaged into the empty scene.
    pub frames: u32,
    /// When it was taken (RFC 3339), if known.
    pub taken: Option<String>,
    /// The camera controls locked for it.
    pub controls: Vec<ControlSetting>,
    /// The white card's reading, if a card was held up.
    pub card: Option<CardReading>,
    /// The white patch and what it reads under the studio's light, if one is configured.
    pub patch: Option<WhitePatch>,
}

impl Calibration {
    /// Computes a calibration from frames of the empty scene and, optionally, a frame of the
    /// same scene with a white card held up (refused with the card's reason when it cannot be
    /// read). The white patch, when configured, is read on the empty scene: against the card its
    /// own colour is learnt, else it is taken to be white.
    pub fn from_frames(
        empty: &[RgbImage],
        card: Option<&RgbImage>,
        settings: &ColourSettings,
        controls: Vec<ControlSetting>,
    ) -> Result<Self> {
        let scene = BackgroundModel::from_frames(empty)?;
        let card = card
            .map(|frame| colour::read_card(frame, &scene, settings.card_level))
            .transpose()?;
        // The patch's own colour, learnt against the card; a patch that cannot be read on the
        // empty scene is taken as white (and is read, or not, on each frame as usual).
        let patch = settings.white_patch.and_then(|rect| {
            let seen = colour::read_patch(scene.image(), rect)
                .map_err(|e| tracing::warn!("white patch on the empty scene: {e:#}"))
                .ok()?;
            let card = card.as_ref()?;
            Some(WhitePatch {
                rect,
                level: std::array::from_fn(|c| seen[c] * card.gains[c]),
            })
        });
        Ok(Calibration {
            scene,
            frames: u32::try_from(empty.len()).unwrap_or(u32::MAX),
            taken: Some(
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            ),
            controls,
            card,
            patch,
        })
    }

    /// [`Calibration::from_frames`] of picture files (empty-scene frames and the card's frame).
    pub fn from_files(
        empty: &[PathBuf],
        card: Option<&Path>,
        settings: &ColourSettings,
    ) -> Result<Self> {
        let frames = empty
            .iter()
            .map(|path| crate::preprocess::decode_file(path))
            .collect::<Result<Vec<_>>>()?;
        let card = card.map(crate::preprocess::decode_file).transpose()?;
        Self::from_frames(&frames, card.as_ref(), settings, Vec::new())
    }

    /// The colour correction for scans under `settings`: the card's gains, and the white patch
    /// with its learnt colour (or taken as white, if it was configured after calibration).
    pub fn correction(&self, settings: &ColourSettings) -> Correction {
        Correction {
            card: self.card.map(|card| card.gains),
            patch: settings.white_patch.map(|rect| match self.patch {
                Some(patch) if patch.rect == rect => patch,
                _ => WhitePatch {
                    rect,
                    level: [settings.card_level; 3],
                },
            }),
        }
    }

    /// Writes the calibration beside `reference` (the picture itself at `reference`).
    pub fn save(&self, reference: &Path) -> Result<()> {
        if let Some(dir) = reference.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let image = self.scene.image();
        let noise = self
            .scene
            .noise()
            .map(|noise| encode_noise(noise, image.width(), image.height()))
            .transpose()?;
        if let Some(bytes) = &noise {
            write_atomically(&noise_path(reference), bytes)?;
        }
        let picture = foreground::encode_png(image)
            .with_context(|| format!("cannot encode {}", reference.display()))?;
        write_atomically(reference, &picture)?;
        let record = Record {
            format: FORMAT.into(),
            taken: self.taken.clone().unwrap_or_default(),
            width: image.width(),
            height: image.height(),
            frames: self.frames,
            reference_crc32: crc32fast::hash(&picture),
            noise_crc32: noise.as_deref().map(crc32fast::hash),
            controls: self.controls.clone(),
            card: self.card,
            patch: self.patch,
        };
        let text = toml::to_string(&record).context("cannot write the calibration record")?;
        write_atomically(&record_path(reference), text.as_bytes())
    }

    /// Reads the calibration kept at `reference`: `None` when there is none yet. A picture
    /// without its record (or with another calibration's) is a calibration of that picture alone,
    /// with a warning; a record that does not parse, or a picture or noise map of another size
    /// than the record says, is an error naming the file.
    pub fn load(reference: &Path) -> Result<Option<Self>> {
        let picture = match std::fs::read(reference) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the empty scene {}", reference.display())
                })
            }
        };
        let image = crate::preprocess::decode_bytes(&picture).with_context(|| {
            format!(
                "bad empty-scene reference {} (recalibrate)",
                reference.display()
            )
        })?;
        let record_file = record_path(reference);
        let record = match std::fs::read_to_string(&record_file) {
            Ok(text) => Some(
                toml::from_str::<Record>(&text)
                    .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
                    .with_context(|| format!("bad calibration record {}", record_file.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", record_file.display()))
            }
        };
        let record = match record {
            Some(record) if record.reference_crc32 == crc32fast::hash(&picture) => record,
            Some(_) => {
                tracing::warn!(
                    "{} belongs to another picture than {} (a calibration cut short?): using \
                     the picture alone; recalibrate",
                    record_file.display(),
                    reference.display()
                );
                return Ok(Some(Self::of_picture(image)));
            }
            None => return Ok(Some(Self::of_picture(image))),
        };
        ensure!(
            record.format == FORMAT,
            "{}: format {:?}, expected {FORMAT:?}",
            record_file.display(),
            record.format
        );
        ensure!(
            (record.width, record.height) == image.dimensions(),
            "{} says {}×{} but {} is {}×{}: recalibrate",
            record_file.display(),
            record.width,
            record.height,
            reference.display(),
            image.width(),
            image.height()
        );
        let noise = match record.noise_crc32 {
            Some(crc) => {
                let path = noise_path(reference);
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if crc32fast::hash(&bytes) == crc {
                    Some(
                        decode_noise(&bytes, image.width(), image.height())
                            .with_context(|| format!("bad noise map {}", path.display()))?,
                    )
                } else {
                    tracing::warn!(
                        "{} belongs to another calibration: judging noise per frame",
                        path.display()
                    );
                    None
                }
            }
            None => None,
        };
        Ok(Some(Calibration {
            scene: BackgroundModel::from_parts(image, noise)?,
            frames: record.frames,
            taken: Some(record.taken).filter(|t| !t.is_empty()),
            controls: record.controls,
            card: record.card,
            patch: record.patch,
        }))
    }

    fn of_picture(image: RgbImage) -> Self {
        Calibration {
            scene: BackgroundModel::from_image(image),
            frames: 1,
            taken: None,
            controls: Vec::new(),
            card: None,
            patch: None,
        }
    }
}

/// The colour correction for scans under `settings` with `calibration`, or without one (a white
/// patch is still read, taken as white).
pub fn correction(calibration: Option<&Calibration>, settings: &ColourSettings) -> Correction {
    match calibration {
        Some(calibration) => calibration.correction(settings),
        None => Correction {
            card: None,
            patch: settings.white_patch.map(|rect| WhitePatch {
                rect,
                level: [settings.card_level; 3],
            }),
        },
    }
}

/// Where camera frames read from files (`query`, `foreground`) get their calibration: one
/// kiosk calibration for all of them (with what is kept beside it), or, per frame, the empty scene
/// (and card) of the same name in a folder — computed as the kiosk computes its own.
#[derive(Debug, Clone, Default)]
pub struct SceneFiles {
    /// The calibration every frame shares, read from its picture.
    pub shared: Option<Calibration>,
    /// A folder of empty scenes named as the frames.
    pub reference_dir: Option<PathBuf>,
    /// A folder of card frames named as the frames.
    pub card_dir: Option<PathBuf>,
    pub settings: ColourSettings,
}

/// One frame's calibration, and why its card was refused if it was (it is then calibrated
/// without it, as a kiosk would keep its previous calibration).
#[derive(Debug)]
pub struct FrameCalibration {
    pub calibration: Option<Calibration>,
    pub card_refused: Option<String>,
}

impl SceneFiles {
    /// A shared calibration from `reference` (the picture; with `card`, computed anew with that
    /// card frame) and/or folders of per-frame empty scenes and cards.
    pub fn open(
        reference: Option<&Path>,
        card: Option<&Path>,
        reference_dir: Option<PathBuf>,
        card_dir: Option<PathBuf>,
        settings: ColourSettings,
    ) -> Result<Self> {
        let shared = match (reference, card) {
            (Some(reference), Some(card)) => Some(Calibration::from_files(
                &[reference.to_path_buf()],
                Some(card),
                &settings,
            )?),
            (Some(reference), None) => Some(
                Calibration::load(reference)?
                    .with_context(|| format!("cannot read image {}", reference.display()))?,
            ),
            (None, _) => None,
        };
        Ok(SceneFiles {
            shared,
            reference_dir,
            card_dir,
            settings,
        })
    }

    /// The calibration of the frame file named `name`.
    pub fn for_frame(&self, name: &str) -> Result<FrameCalibration> {
        let Some(dir) = &self.reference_dir else {
            return Ok(FrameCalibration {
                calibration: self.shared.clone(),
                card_refused: None,
            });
        };
        let empty = [dir.join(name)];
        let card = self.card_dir.as_ref().map(|dir| dir.join(name));
        match Calibration::from_files(&empty, card.as_deref(), &self.settings) {
            Ok(calibration) => Ok(FrameCalibration {
                calibration: Some(calibration),
                card_refused: None,
            }),
            Err(e) if card.is_some() => Ok(FrameCalibration {
                calibration: Some(Calibration::from_files(&empty, None, &self.settings)?),
                card_refused: Some(format!("{e:#}")),
            }),
            Err(e) => Err(e),
        }
    }

    /// The colour correction of a frame calibrated as `calibration`.
    pub fn correction(&self, calibration: Option<&Calibration>) -> Correction {
        correction(calibration, &self.settings)
    }
}

/// `empty-scene.png` → `empty-scene.toml`.
pub fn record_path(reference: &Path) -> PathBuf {
    reference.with_extension("toml")
}

/// `empty-scene.png` → `empty-scene.noise.png`.
pub fn noise_path(reference: &Path) -> PathBuf {
    reference.with_extension("noise.png")
}

fn encode_noise(noise: &[f32], width: u32, height: u32) -> Result<Vec<u8>> {
    let cell = foreground::cell_size();
    let (w, h) = (width / cell, height / cell);
    let map: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_fn(w, h, |x, y| {
        let value = noise[(y * w + x) as usize] * NOISE_STEPS;
        Luma([value.round().clamp(0.0, u16::MAX as f32) as u16])
    });
    let mut png = Vec::new();
    map.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

fn decode_noise(bytes: &[u8], width: u32, height: u32) -> Result<Vec<f32>> {
    let map = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)?.into_luma16();
    let cell = foreground::cell_size();
    if map.dimensions() != (width / cell, height / cell) {
        bail!(
            "{}×{} cells, the scene has {}×{}",
            map.width(),
            map.height(),
            width / cell,
            height / cell
        );
    }
    Ok(map.pixels().map(|p| p.0[0] as f32 / NOISE_STEPS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn frame(seed: u32) -> RgbImage {
        let mut state = seed.max(1);
        RgbImage::from_fn(160, 120, |x, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let v = 60 + (x / 20 % 2) as u8 * 80 + (state % 7) as u8;
            Rgb([v, v / 2 + 40, 120])
        })
    }

    #[test]
    fn a_saved_calibration_loads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("empty-scene.png");
        assert!(Calibration::load(&reference).unwrap().is_none());
        let frames: Vec<RgbImage> = (1..=4).map(frame).collect();
        let controls = vec![ControlSetting {
            id: 0x009a0901,
            name: "Auto Exposure".into(),
            value: 1,
        }];
        let calibration =
            Calibration::from_frames(&frames, None, &ColourSettings::default(), controls.clone())
                .unwrap();
        calibration.save(&reference).unwrap();
        let loaded = Calibration::load(&reference).unwrap().unwrap();
        assert_eq!(loaded.scene.image(), calibration.scene.image());
        let (saved, back) = (
            calibration.scene.noise().unwrap(),
            loaded.scene.noise().unwrap(),
        );
        assert_eq!(saved.len(), back.len());
        assert!(saved
            .iter()
            .zip(back)
            .all(|(a, b)| (a - b).abs() <= 0.5 / NOISE_STEPS));
        assert!(saved.iter().any(|&n| n > 0.0));
        assert_eq!(loaded.controls, controls);
        assert_eq!(loaded.frames, 4);
        assert!(loaded.taken.is_some());
    }

    #[test]
    fn a_record_from_another_picture_is_ignored_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("empty-scene.png");
        let frames: Vec<RgbImage> = (1..=3).map(frame).collect();
        Calibration::from_frames(&frames, None, &ColourSettings::default(), Vec::new())
            .unwrap()
            .save(&reference)
            .unwrap();
        // Another picture put in place by hand: its record no longer belongs to it.
        foreground::save_png(&reference, &frame(9)).unwrap();
        let loaded = Calibration::load(&reference).unwrap().unwrap();
        assert!(loaded.scene.noise().is_none());
        assert_eq!(loaded.frames, 1);
        std::fs::write(record_path(&reference), "format = 3").unwrap();
        let err = Calibration::load(&reference).unwrap_err();
        assert!(format!("{err:#}").contains("empty-scene.toml"), "{err:#}");
    }

    #[test]
    fn the_patch_learns_its_colour_from_the_card_or_is_taken_as_white() {
        let with_patch = |seed| {
            let mut image = frame(seed);
            for y in 0..8 {
                for x in 0..8 {
                    image.put_pixel(x, y, Rgb([180, 170, 160]));
                }
            }
            image
        };
        let frames = vec![with_patch(1), with_patch(2)];
        let settings = ColourSettings {
            card_level: 200.0,
            white_patch: Some([0, 0, 8, 8]),
        };
        let calibration = Calibration::from_frames(&frames, None, &settings, Vec::new()).unwrap();
        let correction = calibration.correction(&settings);
        assert_eq!(correction.card, None);
        assert_eq!(correction.patch.unwrap().level, [200.0; 3]);
        // A patch that cannot be read (here: off the frame) leaves the calibration whole.
        let off_frame = ColourSettings {
            white_patch: Some([600, 0, 8, 8]),
            ..settings
        };
        assert!(Calibration::from_frames(&frames, None, &off_frame, Vec::new()).is_ok());
        // A patch configured after calibration is read as white too.
        let moved = ColourSettings {
            white_patch: Some([20, 0, 8, 8]),
            ..settings
        };
        assert_eq!(
            calibration.correction(&moved).patch.unwrap().rect,
            [20, 0, 8, 8]
        );
    }
}
