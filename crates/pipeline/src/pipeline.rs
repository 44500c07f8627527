//! The look-up as one object: the model session, the catalogue, the scene's calibration and colour
//! correction, the strategy (one held-up item, or a person's garments) and the re-ranking,
//! assembled once from the config by [`Pipeline::assemble`]. A kiosk's scan and
//! `query --config` both call [`Pipeline::look_up`], so they answer a frame alike.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use image::RgbImage;

use crate::config::{Config, OutfitConfig};
use crate::outfit::OutfitScanner;
use crate::query::{self, QueryResult};
use crate::recommend::stock::Stock;
use crate::recommend::trends::Trends;
use crate::recommend::Recommender;
use kiosk_table::catalogue::Table;
use kiosk_vision::calibration::{Calibration, ColourSettings};
use kiosk_vision::colour::Correction;
use kiosk_vision::model::Session;

/// Frame in, recommendations out.
pub struct Pipeline {
    session: Session,
    table: Arc<Table>,
    /// With `[outfit]`: a person's garments are looked up one by one (else the whole frame).
    outfit: Option<OutfitScanner>,
    /// With `[recommend]`: the visual look-alikes re-ranked into recommendations.
    recommender: Option<Recommender>,
    /// The empty scene (the item is what differs from it) and the colour it corrects by.
    calibration: Option<Calibration>,
    colour_settings: ColourSettings,
    colour: Correction,
    /// Without a calibration: the part of the frame to embed.
    region: Option<[u32; 4]>,
    top: usize,
    /// The last look-up's best visual match (of each garment, for an outfit), for "goes with".
    last_matches: Vec<usize>,
}

impl Pipeline {
    /// The pipeline `config` describes, on a loaded model session and catalogue: the scene's
    /// calibration, the garment parser and the recommender (with the store's files, see
    /// [`Store`]) are loaded here. A part that fails to load is logged and left out, as a kiosk
    /// must still scan without it.
    pub fn assemble(config: &Config, session: Session, table: Table, store: &mut Store) -> Self {
        let calibration = load_calibration(config);
        let colour_settings = config.scene.colour();
        let colour = kiosk_vision::calibration::correction(calibration.as_ref(), &colour_settings);
        let recommender = store.recommender_for(config, &table);
        let outfit = config.outfit.as_ref().and_then(|settings| {
            load_outfits(settings, &table)
                .inspect_err(|e| {
                    tracing::error!("outfits off, every scan looks up the whole frame: {e:#}")
                })
                .ok()
        });
        Self {
            session,
            table: Arc::new(table),
            outfit,
            recommender,
            calibration,
            colour_settings,
            colour,
            region: config.scene.region,
            top: config.kiosk.top,
            last_matches: Vec::new(),
        }
    }

    /// What a scan of `frame` finds: the item (or each garment) and at most `top`
    /// recommendations, re-ranked where `[recommend]` says.
    pub fn look_up(&mut self, frame: &RgbImage) -> Result<QueryResult> {
        let options = query::Options {
            reference: self.calibration.as_ref().map(|c| &c.scene),
            colour: &self.colour,
            region: self.region,
            flip: false,
            crops: false,
        };
        let candidates = self
            .recommender
            .as_ref()
            .map_or(self.top, |r| r.candidates().max(self.top));
        self.last_matches.clear();
        let mut result = match self.outfit.as_mut() {
            Some(outfit) => {
                outfit.query(&mut self.session, &self.table, frame, options, candidates)?
            }
            None => query::query_image(&mut self.session, &self.table, frame, options, candidates)?,
        };
        self.last_matches = match result.results.first() {
            Some(best) => vec![best.index],
            None => result
                .garments
                .iter()
                .filter_map(|g| g.results.first().map(|r| r.index))
                .collect(),
        };
        for garment in &mut result.garments {
            garment.results.truncate(self.top);
        }
        match &self.recommender {
            Some(recommender) if !result.results.is_empty() => {
                result.latency_ms.rank =
                    query::recommend(&self.table, recommender, &mut result, self.top);
            }
            _ => result.results.truncate(self.top),
        }
        Ok(result)
    }

    /// What goes with the last look-up's best match, or completes the outfit its garments
    /// matched (the categories it lacks): (id, its subCategory), best first.
    pub fn goes_with(&self) -> Vec<(String, String)> {
        let Some(recommender) = &self.recommender else {
            return Vec::new();
        };
        let category = self.table.column("subCategory");
        recommender
            .completing(&self.table, &self.last_matches, self.top)
            .into_iter()
            .map(|r| {
                let item = self.table.item(r.index);
                let label = category.and_then(|c| item.metadata(c)).unwrap_or_default();
                (item.id.to_string(), label.to_string())
            })
            .collect()
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// A new calibration, used from the next look-up.
    pub fn set_calibration(&mut self, calibration: Calibration) {
        self.colour = calibration.correction(&self.colour_settings);
        self.calibration = Some(calibration);
    }

    /// A reloaded catalogue and its recommender, used from the next look-up.
    pub fn set_catalogue(&mut self, table: Arc<Table>, recommender: Option<Recommender>) {
        self.table = table;
        self.recommender = recommender;
        self.last_matches.clear();
    }
}

/// The empty scene's calibration, if there is one: a bad one is reported, and the kiosk runs
/// without it.
pub fn load_calibration(config: &Config) -> Option<Calibration> {
    let path = config.scene.reference.as_ref()?;
    match Calibration::load(path) {
        Ok(Some(calibration)) => {
            tracing::info!("scene: calibrated ({})", path.display());
            Some(calibration)
        }
        Ok(None) => {
            tracing::warn!(
                "scene: not calibrated yet ({} missing): run `fashion-kiosk calibrate`",
                path.display()
            );
            None
        }
        Err(e) => {
            tracing::error!("scene: {e:#}");
            None
        }
    }
}

/// The garment parser under `[outfit]`, with a warning for each configured category the
/// catalogue does not have.
fn load_outfits(settings: &OutfitConfig, table: &Table) -> Result<OutfitScanner> {
    let scanner = OutfitScanner::load(settings)?;
    for unknown in scanner.outfits.unknown_categories(table) {
        tracing::warn!("outfits: the catalogue has no {unknown}");
    }
    tracing::info!(
        "outfits: garment parser {} ({}): a person's garments are looked up one by one",
        scanner.outfits.parser.manifest().name,
        scanner.outfits.parser.manifest_path().display()
    );
    Ok(scanner)
}

/// The store's stock and co-scan trends as last loaded well, with the content id of the table
/// they were read against: a file that fails to load later leaves these in use.
#[derive(Default)]
pub struct Store {
    stock: Option<(String, Arc<Stock>)>,
    trends: Option<(String, Arc<Trends>)>,
}

impl Store {
    /// The recommender for `table` under `[recommend]`, with the store's stock and trends
    /// (loaded anew); `None` without a `[recommend]` section.
    pub fn recommender_for(&mut self, config: &Config, table: &Table) -> Option<Recommender> {
        let settings = config.recommend.clone()?;
        if let Some(path) = &settings.stock {
            load_into(&mut self.stock, table, "stock", path, Stock::load, |s| {
                if s.unknown_ids > 0 {
                    tracing::warn!(
                        "stock {}: {} of {} rows name ids the catalogue does not hold",
                        path.display(),
                        s.unknown_ids,
                        s.rows
                    );
                }
                format!(
                    "{} ({} rows, {} items out of stock)",
                    path.display(),
                    s.rows,
                    s.out_of_stock()
                )
            });
        }
        if let Some(path) = &settings.trends {
            load_into(&mut self.trends, table, "trends", path, Trends::load, |t| {
                format!(
                    "{} ({} sessions, {} scans)",
                    path.display(),
                    t.sessions,
                    t.scans
                )
            });
        }
        Some(Recommender::new(
            settings,
            table,
            self.stock.as_ref().map(|(_, s)| s.clone()),
            self.trends.as_ref().map(|(_, t)| t.clone()),
        ))
    }
}

/// Loads `what` from `path` for `table` into `slot`; a failure is logged, and the previous one is
/// kept when it was read against the same table.
fn load_into<T>(
    slot: &mut Option<(String, Arc<T>)>,
    table: &Table,
    what: &str,
    path: &Path,
    load: impl FnOnce(&Path, &Table) -> Result<T>,
    describe: impl FnOnce(&T) -> String,
) {
    let id = table.content_id();
    match load(path, table) {
        Ok(loaded) => {
            tracing::info!("{what}: {}", describe(&loaded));
            *slot = Some((id, Arc::new(loaded)));
        }
        Err(e) => {
            if slot.as_ref().is_some_and(|(kept, _)| *kept == id) {
                tracing::error!("{e:#}; keeping the {what} loaded before");
            } else {
                tracing::error!("{e:#}; recommending without a {what} file");
                *slot = None;
            }
        }
    }
}
