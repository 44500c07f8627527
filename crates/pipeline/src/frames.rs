//! Folders of camera frames, for `query --images` and `foreground`: each frame calibrated as a
//! kiosk calibrates its camera ([`SceneFiles`]) and looked up, or cut out, exactly as a scan does;
//! recall against the item id each file name starts with.

use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;

use crate::outfit::OutfitScanner;
use crate::query::{self, FoundBy, QueryResult};
use kiosk_table::catalogue::Table;
use kiosk_vision::calibration::SceneFiles;
use kiosk_vision::foreground;
use kiosk_vision::model::Session;
use kiosk_vision::preprocess::{decode_file, list_images};

/// Visits each image of `dir` in the folder-listing order (an error if there are none) with its
/// path and file name, behind a progress bar when `show_progress` (a terminal; logs and pipes
/// stay clean), which `visit` prints around with `suspend`. Returns how many images there were.
pub fn for_each_image(
    dir: &Path,
    show_progress: bool,
    mut visit: impl FnMut(&Path, &str, &ProgressBar) -> Result<()>,
) -> Result<usize> {
    let images = list_images(dir, "image folder")?.images;
    if images.is_empty() {
        bail!("{} holds no images", dir.display());
    }
    let progress = if show_progress {
        ProgressBar::new(images.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    for (path, name) in &images {
        progress.inc(1);
        visit(path, name, &progress)?;
    }
    progress.finish_and_clear();
    Ok(images.len())
}

/// How to look up each frame.
#[derive(Debug, Clone, Copy)]
pub struct LookUp {
    pub flip: bool,
    pub crops: bool,
    pub top: usize,
}

/// What looking up a folder of frames came to.
#[derive(Debug, Clone, Default)]
pub struct Recall {
    pub frames: usize,
    /// Frames (or their empty scenes) that could not be read: left out of the shares.
    pub unreadable: usize,
    /// Frames whose item was first, and among the first five.
    pub at1: usize,
    pub at5: usize,
    /// Frames where nothing differed from the empty scene.
    pub nothing: usize,
    /// Frames the garment parser took for a person (each garment looked up on its own).
    pub outfits: usize,
    /// Cards refused (those frames were looked up without one, as a kiosk keeps its last
    /// calibration).
    pub cards_refused: usize,
    /// Median milliseconds per frame.
    pub median_ms: f64,
}

impl Recall {
    fn share(&self, n: usize) -> f64 {
        n as f64 / (self.frames - self.unreadable).max(1) as f64
    }
    pub fn at1_share(&self) -> f64 {
        self.share(self.at1)
    }
    pub fn at5_share(&self) -> f64 {
        self.share(self.at5)
    }
}

/// Looks up the frame at `path` (named `name`) in `table`, calibrated by `scenes` exactly as the
/// kiosk calibrates from its camera; `card_refused` hears why its card was refused, if it was
/// (its error ends the look-up; otherwise the frame is looked up without the card).
#[allow(clippy::too_many_arguments)]
pub fn look_up_frame(
    session: &mut Session,
    table: &Table,
    path: &Path,
    name: &str,
    scenes: &SceneFiles,
    how: LookUp,
    outfit: Option<&mut OutfitScanner>,
    card_refused: impl FnOnce(&str) -> Result<()>,
) -> Result<QueryResult> {
    let frame = scenes.for_frame(name)?;
    if let Some(reason) = &frame.card_refused {
        card_refused(reason)?;
    }
    let calibration = frame.calibration;
    let colour = scenes.correction(calibration.as_ref());
    let options = query::Options {
        reference: calibration.as_ref().map(|c| &c.scene),
        colour: &colour,
        region: None,
        flip: how.flip,
        crops: how.crops,
    };
    query::query_file(session, table, path, options, how.top, outfit)
}

/// Looks up every frame of `dir` in `table`, calibrated by `scenes`; `on_frame` gets each
/// result (to print it) with the frame's path and name.
#[allow(clippy::too_many_arguments)]
pub fn look_up_folder(
    session: &mut Session,
    table: &Table,
    dir: &Path,
    scenes: &SceneFiles,
    how: LookUp,
    mut outfit: Option<&mut OutfitScanner>,
    show_progress: bool,
    mut on_frame: impl FnMut(&Path, &str, &QueryResult, &ProgressBar) -> Result<()>,
) -> Result<Recall> {
    let mut recall = Recall::default();
    let mut totals = Vec::new();
    recall.frames = for_each_image(dir, show_progress, |path, name, progress| {
        let outfit = outfit.as_deref_mut();
        let looked_up = look_up_frame(session, table, path, name, scenes, how, outfit, |reason| {
            progress.suspend(|| tracing::warn!("{name}: card refused: {reason}"));
            recall.cards_refused += 1;
            Ok(())
        });
        let result = match looked_up {
            Ok(result) => result,
            Err(e) => {
                progress.suspend(|| tracing::warn!("skipped {}: {e:#}", path.display()));
                recall.unreadable += 1;
                return Ok(());
            }
        };
        let id = name.split(['_', '.']).next().unwrap_or_default();
        // An outfit's garments each have their own list: the item's best place in any.
        let rank = std::iter::once(&result.results)
            .chain(result.garments.iter().map(|g| &g.results))
            .filter_map(|results| results.iter().position(|r| r.id == id))
            .min();
        recall.outfits += usize::from(result.region == FoundBy::Outfit);
        recall.at1 += usize::from(rank == Some(0));
        recall.at5 += usize::from(rank.is_some_and(|r| r < 5));
        recall.nothing += usize::from(result.region == FoundBy::Nothing);
        totals.push(result.latency_ms.total);
        on_frame(path, name, &result, progress)
    })?;
    totals.sort_by(f64::total_cmp);
    recall.median_ms = totals.get(totals.len() / 2).copied().unwrap_or(0.0);
    Ok(recall)
}

/// What cutting a folder of frames out came to.
#[derive(Debug, Clone, Default)]
pub struct CutOuts {
    pub frames: usize,
    pub items: usize,
    /// Frames with nothing to scan (by a reference) or nothing that stands out (without one).
    pub nothing: usize,
    pub unreadable: usize,
}

/// Cuts the item out of every frame of `dir` as a scan does (found, cut out on white, colour
/// corrected) and saves it as a PNG named as the frame in `out`; `on_line` gets one line per
/// frame.
pub fn cut_out_folder(
    dir: &Path,
    scenes: &SceneFiles,
    out: &Path,
    show_progress: bool,
    mut on_line: impl FnMut(&str, &ProgressBar),
) -> Result<CutOuts> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut tally = CutOuts::default();
    tally.frames = for_each_image(dir, show_progress, |path, name, progress| {
        let line = (|| -> Result<String> {
            let frame = decode_file(path)?;
            let calibration = scenes.for_frame(name)?;
            if let Some(reason) = &calibration.card_refused {
                progress.suspend(|| tracing::warn!("{name}: card refused: {reason}"));
            }
            let colour = scenes.correction(calibration.calibration.as_ref());
            let options = query::Options {
                reference: calibration.calibration.as_ref().map(|c| &c.scene),
                colour: &colour,
                region: None,
                flip: false,
                crops: false,
            };
            let subject = query::subject(&frame, &options)?;
            Ok(match (subject.path, subject.bbox) {
                (_, Some((x, y, w, h))) => {
                    let saved = out.join(Path::new(name).with_extension("png"));
                    foreground::save_png(&saved, &subject.image)?;
                    tally.items += 1;
                    let share = (w * h) as f64 / (frame.width() * frame.height()) as f64;
                    format!(
                        "{name}: item at ({x}, {y}) {w}×{h}, {:.1}% of the frame -> {}",
                        100.0 * share,
                        saved.display()
                    )
                }
                (FoundBy::Nothing, None) => {
                    tally.nothing += 1;
                    format!("{name}: nothing to scan")
                }
                (_, None) => {
                    tally.nothing += 1;
                    format!("{name}: nothing stands out (a scan embeds the centred square)")
                }
            })
        })();
        let line = line.unwrap_or_else(|e| {
            tally.unreadable += 1;
            format!("{name}: skipped: {e:#}")
        });
        on_line(&line, progress);
        Ok(())
    })?;
    if tally.unreadable == tally.frames {
        bail!("no frame of {} could be read", dir.display());
    }
    Ok(tally)
}
