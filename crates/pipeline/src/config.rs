//! The kiosk's TOML configuration: one file, every field validated at start with an error that
//! names the field, relative paths resolved against the file's folder, CLI overrides on top.
//!
//! Documented examples: `systemd/kiosk.toml` (a Raspberry Pi) and `demo/kiosk.toml` (simulation).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use kiosk_util::resources;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub model: ModelConfig,
    pub catalogue: CatalogueConfig,
    pub camera: CameraConfig,
    pub trigger: TriggerConfig,
    pub display: DisplayConfig,
    #[serde(default)]
    pub scene: SceneConfig,
    #[serde(default)]
    pub kiosk: KioskConfig,
    #[serde(default)]
    pub scan_log: ScanLogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The broker uplink (`fashion-kiosk uplink`, its own service); the kiosk ignores it.
    pub uplink: Option<UplinkConfig>,
    /// Re-ranking and "goes with"; without it a scan shows the visual look-alikes.
    pub recommend: Option<RecommendConfig>,
    /// Outfits: each garment on a person in view looked up on its own; without it a scan looks
    /// up the whole frame as one item.
    pub outfit: Option<OutfitConfig>,
}

/// `[model]`: which network embeds the frames.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Model manifest (default: the bundled int8 fashion ResNet50); `"auto"`: the bundled model or
    /// its fp32 twin, whichever runs faster on this CPU.
    pub manifest: Option<PathBuf>,
    /// Threads for the network's matrix products; 0 = all cores.
    pub threads: usize,
}

impl ModelConfig {
    /// The manifest to load and why: the configured one (`"auto"` resolved for this CPU) or the
    /// bundled default.
    pub fn pick(&self) -> anyhow::Result<kiosk_vision::form::Pick> {
        kiosk_vision::form::resolve(self.manifest.as_deref())
    }

    /// The thread count to use: the configured one, or all cores for 0.
    pub fn thread_count(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        }
    }
}

/// `[catalogue]`: the embedding table to search (made by `fashion-kiosk index`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    pub table: PathBuf,
}

/// Pixel format asked of a V4L2 camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormatChoice {
    /// MJPEG when the camera offers it, else YUYV.
    Auto,
    Mjpeg,
    Yuyv,
}

/// `[camera]`: where frames come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CameraConfig {
    /// A V4L2 capture device.
    V4l2 {
        #[serde(default = "default_video_device")]
        device: PathBuf,
        #[serde(default = "default_width")]
        width: u32,
        #[serde(default = "default_height")]
        height: u32,
        #[serde(default = "default_pixel_format")]
        format: PixelFormatChoice,
        /// mmap buffers; few, so that stale frames are few to drop.
        #[serde(default = "default_buffers")]
        buffers: u32,
    },
    /// Simulated: the images of a folder in name order (cycling), or one image file.
    Folder {
        path: PathBuf,
        /// Simulate a UVC camera's exposure and white-balance controls.
        #[serde(default)]
        controls: bool,
    },
}

fn default_video_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_pixel_format() -> PixelFormatChoice {
    PixelFormatChoice::Auto
}
fn default_buffers() -> u32 {
    2
}

/// `[scene]`: how the item is found in the camera's frame.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SceneConfig {
    /// The empty scene of the fixed camera, written by `calibrate`; used whenever it exists: the
    /// item is what differs from it.
    pub reference: Option<PathBuf>,
    /// Without a reference: the part of the frame to embed, `[x, y, width, height]`; without
    /// either, what stands out from the store near the middle of the frame (else the centred
    /// square).
    pub region: Option<[u32; 4]>,
    /// Frames `calibrate` averages into the reference.
    pub calibration_frames: u32,
    /// Whether calibration asks for a matte white card after the empty scene, to measure the
    /// kiosk's light (its colour gains correct every scan).
    pub card: bool,
    /// What the white card's colour becomes after correction (its reflectance × 255: about 225
    /// for matte white paper).
    pub card_level: f32,
    /// A neutral patch that stays in the camera's view, `[x, y, width, height]`: read on every
    /// frame, it corrects colour as the light changes.
    pub white_patch: Option<[u32; 4]>,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            reference: None,
            region: None,
            calibration_frames: 8,
            card: false,
            card_level: kiosk_vision::colour::DEFAULT_CARD_LEVEL,
            white_patch: None,
        }
    }
}

impl SceneConfig {
    /// How colour is calibrated and corrected.
    pub fn colour(&self) -> kiosk_vision::calibration::ColourSettings {
        kiosk_vision::calibration::ColourSettings {
            card_level: self.card_level,
            white_patch: self.white_patch,
        }
    }
}

/// GPIO library used for the button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpioBackend {
    /// rppal on a Raspberry Pi, gpiocdev elsewhere.
    Auto,
    Rppal,
    Gpiocdev,
}

/// `[trigger]`: what counts as a press. SIGUSR1 is always one press as well.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TriggerConfig {
    /// A push button between a GPIO pin and ground (internal pull-up, falling edge).
    Gpio {
        /// BCM pin number (rppal) or line offset on `chip` (gpiocdev).
        pin: u8,
        #[serde(default = "default_gpio_chip")]
        chip: PathBuf,
        #[serde(default = "default_gpio_backend")]
        backend: GpioBackend,
    },
    /// Simulated: each line on standard input is a press; end of input stops the kiosk.
    Stdin,
    /// Simulated: each datagram on this Unix socket is a press.
    Socket { path: PathBuf },
    /// Only SIGUSR1 presses.
    Signal,
}

fn default_gpio_chip() -> PathBuf {
    PathBuf::from("/dev/gpiochip0")
}
fn default_gpio_backend() -> GpioBackend {
    GpioBackend::Auto
}

/// `[display]`: where screens are shown.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DisplayConfig {
    /// An SSD1306 128×64 OLED on an I2C bus.
    Ssd1306 {
        #[serde(default = "default_i2c_bus")]
        bus: PathBuf,
        #[serde(default = "default_i2c_address")]
        address: u8,
    },
    /// Simulated: every screen as a PNG in `screens` and/or drawn in the terminal.
    Simulated {
        screens: Option<PathBuf>,
        /// Pixel scale of the PNGs (1–8).
        #[serde(default = "default_scale")]
        scale: u32,
        #[serde(default)]
        terminal: bool,
    },
    /// No display: headless.
    None,
}

fn default_i2c_bus() -> PathBuf {
    PathBuf::from("/dev/i2c-1")
}
fn default_i2c_address() -> u8 {
    0x3c
}
fn default_scale() -> u32 {
    1
}

/// `[kiosk]`: behaviour of the service loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KioskConfig {
    /// How long results stay on screen, seconds.
    pub results_secs: f64,
    /// Presses closer than this to the previous accepted press are contact bounce, ms.
    pub debounce_ms: u64,
    /// Items per scan kept in the scan log (the screen shows the first 3).
    pub top: usize,
    /// A scan taking longer than this is a hang: watchdog pings stop, seconds.
    pub scan_timeout_secs: f64,
    /// Longest wait between attempts to reopen a lost camera, seconds.
    pub camera_retry_max_secs: f64,
}

impl Default for KioskConfig {
    fn default() -> Self {
        KioskConfig {
            results_secs: 8.0,
            debounce_ms: 50,
            top: 5,
            scan_timeout_secs: 30.0,
            camera_retry_max_secs: 30.0,
        }
    }
}

impl KioskConfig {
    pub fn results_for(&self) -> Duration {
        Duration::from_secs_f64(self.results_secs)
    }
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
    pub fn scan_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.scan_timeout_secs)
    }
    pub fn camera_retry_max(&self) -> Duration {
        Duration::from_secs_f64(self.camera_retry_max_secs)
    }
}

/// `[scan_log]`: the JSON-lines record of every scan.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanLogConfig {
    /// The log file; omitted = no scan log.
    pub path: Option<PathBuf>,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`scans.jsonl.1` … `.N`).
    pub keep: u32,
}

impl Default for ScanLogConfig {
    fn default() -> Self {
        ScanLogConfig {
            path: None,
            max_bytes: 10 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// `[metrics]`: the kiosk's health for monitoring, as files (the kiosk has no network).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Folder for `fashion-kiosk.prom` (Prometheus text format; node-exporter's textfile
    /// collector folder, on Debian `/var/lib/prometheus/node-exporter`) and `fashion-kiosk.json`
    /// (the same health as JSON, which the uplink publishes); omitted = none written.
    pub folder: Option<PathBuf>,
}

/// `[recommend]`: how the visual look-alikes become recommendations (see `src/recommend/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecommendConfig {
    /// Visual candidates re-ranked.
    pub candidates: usize,
    /// Leave out other genders than the scanned item's (Unisex always passes).
    pub gender: bool,
    /// The store's stock CSV (`id,in_stock` or `id,quantity`); reloaded with the table.
    pub stock: Option<PathBuf>,
    /// The co-scan sidecar made by `fashion-kiosk trends`; reloaded with the table.
    pub trends: Option<PathBuf>,
    /// Items of one articleType at least this alike (cosine) are variants: one stays (0 = off).
    pub variants: f32,
    /// λ of maximal marginal relevance: 1 = relevance only, lower = more varied.
    pub diversity: f32,
    /// The scan's best match stays first when its score is at least this.
    pub confident: f32,
    /// Weight of the co-scan score (and a quarter of it for popularity) against the visual.
    pub co_scan_weight: f32,
    /// A press while results are shown shows what goes with the scanned item.
    pub goes_with: bool,
    /// subCategory → the complementary subCategories "goes with" shows, in order.
    pub complements: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        let complements = [
            ("Topwear", &["Bottomwear", "Shoes", "Watches"][..]),
            ("Bottomwear", &["Topwear", "Shoes", "Belts"]),
            ("Dress", &["Shoes", "Bags", "Jewellery"]),
            ("Shoes", &["Bottomwear", "Topwear", "Socks"]),
            ("Sandal", &["Bottomwear", "Topwear", "Bags"]),
            ("Flip Flops", &["Bottomwear", "Topwear", "Eyewear"]),
            ("Bags", &["Topwear", "Shoes", "Wallets"]),
            ("Watches", &["Topwear", "Belts", "Wallets"]),
        ]
        .into_iter()
        .map(|(from, to)| (from.to_string(), to.iter().map(|s| s.to_string()).collect()))
        .collect();
        RecommendConfig {
            candidates: 50,
            gender: true,
            stock: None,
            trends: None,
            variants: DEFAULT_VARIANTS,
            diversity: 0.8,
            confident: 0.8,
            co_scan_weight: 0.3,
            goes_with: true,
            complements,
        }
    }
}

/// Items of one articleType this alike are variants of one style (measured in docs/recommendations.md).
pub const DEFAULT_VARIANTS: f32 = 0.95;

impl RecommendConfig {
    /// Every stage off: the visual list as it is (for measuring against it).
    pub fn off() -> Self {
        RecommendConfig {
            gender: false,
            variants: 0.0,
            diversity: 1.0,
            co_scan_weight: 0.0,
            ..RecommendConfig::default()
        }
    }

    fn validate(&self) -> Result<()> {
        if !(1..=1000).contains(&self.candidates) {
            bail!("recommend.candidates = {}: must be 1–1000", self.candidates);
        }
        let v = self.variants;
        if !(v == 0.0 || (v.is_finite() && (0.5..=1.0).contains(&v))) {
            bail!("recommend.variants = {v}: must be 0 (off) or 0.5–1 (a cosine similarity)");
        }
        if !(self.diversity.is_finite() && (0.0..=1.0).contains(&self.diversity)) {
            bail!("recommend.diversity = {}: must be 0–1", self.diversity);
        }
        if !(self.confident.is_finite() && (-1.0..=1.0).contains(&self.confident)) {
            bail!("recommend.confident = {}: must be -1–1", self.confident);
        }
        if !(self.co_scan_weight.is_finite() && (0.0..=10.0).contains(&self.co_scan_weight)) {
            bail!(
                "recommend.co_scan_weight = {}: must be 0–10",
                self.co_scan_weight
            );
        }
        Ok(())
    }
}

/// `[outfit]`: the garment parser and how its garments are looked up (see `src/outfit/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutfitConfig {
    /// The parser's manifest (`models/garment-parser.manifest.json`); `None` = the bundled one.
    pub parser: Option<PathBuf>,
    /// A person is in view when skin, hair and garments cover at least this share of the view
    /// and skin or hair at least a tenth of that (a held-up shirt shows neither). 0.12: 99.8% of
    /// the parser's training photos, full-length street shots, have more; a person before a
    /// mirror fills more of its camera's view.
    pub person_share: f32,
    /// A garment is looked up when it covers at least this share of the view.
    pub min_share: f32,
    /// At most this many garments are looked up (the largest; each costs an embedding).
    pub max_garments: usize,
    /// The table column the garments' categories are in.
    pub category_column: String,
    /// The table column of the items' colour names (`baseColour`).
    pub colour_column: String,
    /// Among the `candidates` nearest items of a garment's categories, those of the garment's
    /// colour come first.
    pub colour_first: bool,
    pub candidates: usize,
    /// Parser class → how it is shown and the categories it is looked up among.
    pub garments: std::collections::BTreeMap<String, GarmentConfig>,
}

/// One garment class of `[outfit.garments]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GarmentConfig {
    /// Its name on the screen (at most 5 characters show).
    pub label: String,
    /// The values of `category_column` it is looked up among.
    pub categories: Vec<String>,
}

impl Default for OutfitConfig {
    fn default() -> Self {
        let garments = [
            ("upper", "Top", &["Topwear"][..]),
            ("lower", "Legs", &["Bottomwear"]),
            ("full", "Dress", &["Dress"]),
            ("footwear", "Shoes", &["Shoes", "Sandal", "Flip Flops"]),
            ("bag", "Bag", &["Bags", "Wallets"]),
            (
                "accessories",
                "Acc",
                &[
                    "Belts",
                    "Headwear",
                    "Eyewear",
                    "Watches",
                    "Scarves",
                    "Mufflers",
                    "Stoles",
                    "Socks",
                    "Jewellery",
                    "Ties",
                    "Gloves",
                    "Accessories",
                ],
            ),
        ]
        .into_iter()
        .map(|(class, label, categories)| {
            (
                class.to_string(),
                GarmentConfig {
                    label: label.to_string(),
                    categories: categories.iter().map(|c| c.to_string()).collect(),
                },
            )
        })
        .collect();
        OutfitConfig {
            parser: None,
            person_share: 0.12,
            min_share: 0.004,
            max_garments: 4,
            category_column: "subCategory".into(),
            colour_column: "baseColour".into(),
            colour_first: true,
            candidates: 30,
            garments,
        }
    }
}

impl OutfitConfig {
    /// The parser's manifest: the configured one, else the bundled one.
    pub fn parser_manifest(&self) -> PathBuf {
        self.parser
            .clone()
            .unwrap_or_else(|| resources::locate(resources::GARMENT_PARSER))
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.person_share.is_finite() && (0.0..=1.0).contains(&self.person_share)) {
            bail!("outfit.person_share = {}: must be 0–1", self.person_share);
        }
        if !(self.min_share.is_finite() && (0.0..=1.0).contains(&self.min_share)) {
            bail!("outfit.min_share = {}: must be 0–1", self.min_share);
        }
        if !(1..=8).contains(&self.max_garments) {
            bail!("outfit.max_garments = {}: must be 1–8", self.max_garments);
        }
        if !(1..=1000).contains(&self.candidates) {
            bail!("outfit.candidates = {}: must be 1–1000", self.candidates);
        }
        for (class, garment) in &self.garments {
            if garment.label.trim().is_empty() {
                bail!("outfit.garments.{class}.label is empty");
            }
            if garment.categories.is_empty() {
                bail!("outfit.garments.{class}.categories is empty");
            }
        }
        Ok(())
    }
}

/// `[uplink]`: the MQTT broker that `fashion-kiosk uplink` publishes the scan log and the
/// kiosk's health to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Broker host name or address.
    pub broker: String,
    /// Broker port (default 1883, or 8883 with TLS).
    pub port: Option<u16>,
    /// TLS to the broker (rustls), verified against `ca_file` or the system's roots.
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the certificate authorities to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// TOML file with `username` and `password` (kept out of this file; mode 0640 or tighter).
    pub credentials: Option<PathBuf>,
    /// This kiosk's name in topics (default: the host name).
    pub kiosk_id: Option<String>,
    /// MQTT client id (default `fashion-kiosk-KIOSK_ID`).
    pub client_id: Option<String>,
    /// Topic prefix: topics are `PREFIX/KIOSK_ID/{scans,available,state,stats}`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Where the uplink keeps what the broker has acknowledged.
    #[serde(default = "default_checkpoint")]
    pub checkpoint: PathBuf,
    /// Seconds between `stats` messages.
    #[serde(default = "default_stats_secs")]
    pub stats_secs: f64,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Longest wait between reconnection attempts, seconds (the wait doubles from 1 s).
    #[serde(default = "default_retry_max_secs")]
    pub retry_max_secs: f64,
    /// Publish Home Assistant MQTT discovery (retained) for the kiosk's sensors.
    #[serde(default)]
    pub home_assistant: bool,
    /// Home Assistant's discovery prefix.
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
}

fn default_prefix() -> String {
    "fashion-kiosk".into()
}
fn default_checkpoint() -> PathBuf {
    PathBuf::from("/var/lib/fashion-kiosk-uplink/checkpoint.json")
}
fn default_stats_secs() -> f64 {
    60.0
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_retry_max_secs() -> f64 {
    60.0
}
fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

impl UplinkConfig {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 8883 } else { 1883 })
    }

    /// Checks the uplink's values; the error names the field.
    fn validate(&self) -> Result<()> {
        if self.broker.trim().is_empty() {
            bail!("uplink.broker is empty: name the MQTT broker's host");
        }
        if self.port == Some(0) {
            bail!("uplink.port = 0: must be 1–65535");
        }
        let topic_safe = |s: &str| !s.is_empty() && !s.contains(['+', '#', '\0']);
        let prefix_safe = |s: &str| topic_safe(s) && !s.starts_with('/') && !s.ends_with('/');
        if !prefix_safe(&self.prefix) {
            bail!(
                "uplink.prefix = {:?}: must be a topic without `+`, `#` or a leading or trailing `/`",
                self.prefix
            );
        }
        if !prefix_safe(&self.discovery_prefix) {
            bail!(
                "uplink.discovery_prefix = {:?}: must be a topic without `+`, `#` or a leading or trailing `/`",
                self.discovery_prefix
            );
        }
        if let Some(id) = &self.kiosk_id {
            if !topic_safe(id) || id.contains('/') {
                bail!("uplink.kiosk_id = {id:?}: must be one topic level (no `/`, `+`, `#`)");
            }
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 128 {
                bail!("uplink.client_id = {id:?}: must be 1–128 characters");
            }
        }
        if !(self.stats_secs.is_finite() && (1.0..=86400.0).contains(&self.stats_secs)) {
            bail!("uplink.stats_secs = {}: must be 1–86400", self.stats_secs);
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            bail!(
                "uplink.keep_alive_secs = {}: must be 5–3600",
                self.keep_alive_secs
            );
        }
        if !(self.retry_max_secs.is_finite() && (1.0..=3600.0).contains(&self.retry_max_secs)) {
            bail!(
                "uplink.retry_max_secs = {}: must be 1–3600",
                self.retry_max_secs
            );
        }
        if self.ca_file.is_some() && !self.tls {
            bail!("uplink.ca_file is set but uplink.tls = false: set tls = true to use it");
        }
        Ok(())
    }
}

/// Command-line values that replace the file's.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub table: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub scan_log: Option<PathBuf>,
    pub screens: Option<PathBuf>,
}

impl Config {
    /// Reads, parses, resolves and validates `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config =
            Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.apply(overrides);
        config
            .validate()
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok(config)
    }

    /// Parses TOML text (paths left as written).
    pub fn parse(text: &str) -> Result<Self> {
        // toml's message names the key and shows the line.
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(m) = self.model.manifest.as_mut() {
            if m != Path::new(kiosk_vision::form::AUTO) {
                fix(m)
            }
        }
        fix(&mut self.catalogue.table);
        match &mut self.camera {
            CameraConfig::Folder { path, .. } => fix(path),
            CameraConfig::V4l2 { .. } => {}
        }
        if let TriggerConfig::Socket { path } = &mut self.trigger {
            fix(path)
        }
        if let DisplayConfig::Simulated {
            screens: Some(dir), ..
        } = &mut self.display
        {
            fix(dir)
        }
        if let Some(p) = self.scan_log.path.as_mut() {
            fix(p)
        }
        if let Some(p) = self.scene.reference.as_mut() {
            fix(p)
        }
        if let Some(p) = self.metrics.folder.as_mut() {
            fix(p)
        }
        if let Some(recommend) = self.recommend.as_mut() {
            for p in [recommend.stock.as_mut(), recommend.trends.as_mut()]
                .into_iter()
                .flatten()
            {
                fix(p)
            }
        }
        if let Some(p) = self.outfit.as_mut().and_then(|o| o.parser.as_mut()) {
            fix(p)
        }
        if let Some(uplink) = self.uplink.as_mut() {
            fix(&mut uplink.checkpoint);
            for p in [uplink.ca_file.as_mut(), uplink.credentials.as_mut()]
                .into_iter()
                .flatten()
            {
                fix(p)
            }
        }
    }

    /// Applies command-line overrides (already relative to the working directory).
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(t) = &o.table {
            self.catalogue.table = t.clone();
        }
        if let Some(m) = &o.model {
            self.model.manifest = Some(m.clone());
        }
        if let Some(s) = &o.scan_log {
            self.scan_log.path = Some(s.clone());
        }
        if let Some(dir) = &o.screens {
            match &mut self.display {
                DisplayConfig::Simulated { screens, .. } => *screens = Some(dir.clone()),
                other => {
                    *other = DisplayConfig::Simulated {
                        screens: Some(dir.clone()),
                        scale: default_scale(),
                        terminal: false,
                    }
                }
            }
        }
    }

    /// Checks every value's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.validate_devices()?;
        self.scene.validate()?;
        self.kiosk.validate()?;
        if self.scan_log.max_bytes < 4096 {
            bail!(
                "scan_log.max_bytes = {}: must be at least 4096",
                self.scan_log.max_bytes
            );
        }
        if self.scan_log.keep > 100 {
            bail!("scan_log.keep = {}: must be 0–100", self.scan_log.keep);
        }
        if self.model.threads > 256 {
            bail!("model.threads = {}: must be 0–256", self.model.threads);
        }
        if let Some(uplink) = &self.uplink {
            uplink.validate()?;
        }
        if let Some(recommend) = &self.recommend {
            recommend.validate()?;
        }
        if let Some(outfit) = &self.outfit {
            outfit.validate()?;
        }
        Ok(())
    }

    /// The camera's, trigger's and display's settings.
    fn validate_devices(&self) -> Result<()> {
        if let CameraConfig::V4l2 {
            width,
            height,
            buffers,
            ..
        } = &self.camera
        {
            if !(16..=8192).contains(width) {
                bail!("camera.width = {width}: must be 16–8192 pixels");
            }
            if !(16..=8192).contains(height) {
                bail!("camera.height = {height}: must be 16–8192 pixels");
            }
            if !(1..=8).contains(buffers) {
                bail!("camera.buffers = {buffers}: must be 1–8");
            }
        }
        if let TriggerConfig::Gpio { pin, .. } = &self.trigger {
            if *pin > 63 {
                bail!("trigger.pin = {pin}: must be a GPIO number 0–63");
            }
        }
        match &self.display {
            DisplayConfig::Ssd1306 { address, .. } if !(0x03..=0x77).contains(address) => {
                bail!("display.address = {address:#04x}: must be a 7-bit I2C address 0x03–0x77");
            }
            DisplayConfig::Simulated { scale, .. } if !(1..=8).contains(scale) => {
                bail!("display.scale = {scale}: must be 1–8");
            }
            DisplayConfig::Simulated {
                screens: None,
                terminal: false,
                ..
            } => bail!("display: a simulated display needs `screens` or `terminal = true`"),
            _ => {}
        }
        Ok(())
    }
}

impl SceneConfig {
    fn validate(&self) -> Result<()> {
        if let Some([x, y, w, h]) = self.region {
            if w < 16 || h < 16 || x.checked_add(w).is_none() || y.checked_add(h).is_none() {
                bail!("scene.region = [{x}, {y}, {w}, {h}]: width and height must be at least 16");
            }
        }
        if !(self.card_level.is_finite() && (50.0..=250.0).contains(&self.card_level)) {
            bail!("scene.card_level = {}: must be 50–250", self.card_level);
        }
        if let Some([x, y, w, h]) = self.white_patch {
            if w < 4 || h < 4 || x.checked_add(w).is_none() || y.checked_add(h).is_none() {
                bail!(
                    "scene.white_patch = [{x}, {y}, {w}, {h}]: width and height must be at least 4"
                );
            }
        }
        if !(1..=64).contains(&self.calibration_frames) {
            bail!(
                "scene.calibration_frames = {}: must be 1–64",
                self.calibration_frames
            );
        }
        Ok(())
    }
}

impl KioskConfig {
    fn validate(&self) -> Result<()> {
        if !(self.results_secs.is_finite() && (0.5..=600.0).contains(&self.results_secs)) {
            bail!(
                "kiosk.results_secs = {}: must be 0.5–600",
                self.results_secs
            );
        }
        if self.debounce_ms > 1000 {
            bail!("kiosk.debounce_ms = {}: must be 0–1000", self.debounce_ms);
        }
        if !(1..=100).contains(&self.top) {
            bail!("kiosk.top = {}: must be 1–100", self.top);
        }
        if !(self.scan_timeout_secs.is_finite() && (1.0..=3600.0).contains(&self.scan_timeout_secs))
        {
            bail!(
                "kiosk.scan_timeout_secs = {}: must be 1–3600",
                self.scan_timeout_secs
            );
        }
        if !(self.camera_retry_max_secs.is_finite()
            && (0.1..=3600.0).contains(&self.camera_retry_max_secs))
        {
            bail!(
                "kiosk.camera_retry_max_secs = {}: must be 0.1–3600",
                self.camera_retry_max_secs
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [catalogue]
        table = "catalogue.fkt"
        [camera]
        kind = "folder"
        path = "photos"
        [trigger]
        kind = "stdin"
        [display]
        kind = "simulated"
        screens = "screens"
    "#;

    #[test]
    fn minimal_config_gets_defaults_and_resolves_paths() {
        let mut config = Config::parse(MINIMAL).unwrap();
        config.resolve_paths(Path::new("/etc/kiosk"));
        config.validate().unwrap();
        assert_eq!(
            config.catalogue.table,
            PathBuf::from("/etc/kiosk/catalogue.fkt")
        );
        assert!(
            matches!(&config.camera, CameraConfig::Folder { path, .. } if path == Path::new("/etc/kiosk/photos"))
        );
        assert_eq!(config.kiosk.debounce_ms, 50);
        assert_eq!(config.scan_log.keep, 5);
        assert!(config.scan_log.path.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                MINIMAL.replace("path = \"photos\"", "path = \"photos\"\nwidht = 3"),
                "widht",
            ),
            (MINIMAL.replace("\"folder\"", "\"webcam\""), "webcam"),
            (
                format!("{MINIMAL}\n[kiosk]\ndebounce_ms = 5000\n"),
                "kiosk.debounce_ms",
            ),
            (
                format!("{MINIMAL}\n[kiosk]\nresults_secs = -1\n"),
                "kiosk.results_secs",
            ),
            (format!("{MINIMAL}\n[kiosk]\ntop = 0\n"), "kiosk.top"),
            (
                MINIMAL.replace(
                    "kind = \"simulated\"\n        screens = \"screens\"",
                    "kind = \"ssd1306\"\naddress = 200",
                ),
                "display.address",
            ),
            (
                MINIMAL.replace("kind = \"stdin\"", "kind = \"gpio\"\npin = 99"),
                "trigger.pin",
            ),
            (
                MINIMAL.replace("[catalogue]\n        table = \"catalogue.fkt\"", ""),
                "catalogue",
            ),
            (
                format!("{MINIMAL}\n[scene]\nregion = [0, 0, 4, 300]\n"),
                "scene.region",
            ),
            (
                format!("{MINIMAL}\n[scene]\ncalibration_frames = 0\n"),
                "scene.calibration_frames",
            ),
            (
                format!("{MINIMAL}\n[scene]\ncard_level = 255\n"),
                "scene.card_level",
            ),
            (
                format!("{MINIMAL}\n[scene]\nwhite_patch = [0, 0, 2, 30]\n"),
                "scene.white_patch",
            ),
        ];
        for (text, field) in cases {
            let err = Config::parse(&text).and_then(|c| c.validate());
            let message = format!("{:#}", err.expect_err(field));
            assert!(message.contains(field), "{field}: {message}");
        }
    }

    #[test]
    fn the_documented_examples_are_valid() {
        for (name, text) in [
            (
                "systemd/kiosk.toml",
                include_str!("../../../systemd/kiosk.toml"),
            ),
            ("demo/kiosk.toml", include_str!("../../../demo/kiosk.toml")),
        ] {
            let config = Config::parse(text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        let pi = Config::parse(include_str!("../../../systemd/kiosk.toml")).unwrap();
        assert!(matches!(pi.camera, CameraConfig::V4l2 { buffers: 2, .. }));
        assert!(matches!(pi.trigger, TriggerConfig::Gpio { pin: 17, .. }));
        assert!(matches!(
            pi.display,
            DisplayConfig::Ssd1306 { address: 0x3c, .. }
        ));
        // The commented [uplink] example, uncommented, is valid too.
        let text = include_str!("../../../systemd/kiosk.toml");
        let start = text.find("# [uplink]").expect("an [uplink] example");
        let uncommented: String = text[start..]
            .lines()
            .map(|line| format!("{}\n", line.strip_prefix("# ").unwrap_or(line)))
            .collect();
        let with_uplink = Config::parse(&format!("{}{uncommented}", &text[..start])).unwrap();
        with_uplink.validate().unwrap();
        let uplink = with_uplink.uplink.unwrap();
        assert_eq!((uplink.port(), uplink.tls), (8883, true));
    }

    #[test]
    fn the_commented_outfit_example_is_valid_and_is_the_default() {
        let text = include_str!("../../../systemd/kiosk.toml");
        let start = text.find("# [outfit]").expect("an [outfit] example");
        let end = start
            + text[start..]
                .find("\n[metrics]")
                .expect("[metrics] after it");
        let uncommented: String = text[start..end]
            .lines()
            .map(|line| format!("{}\n", line.strip_prefix("# ").unwrap_or(line)))
            .collect();
        let config = Config::parse(&format!("{MINIMAL}\n{uncommented}")).unwrap();
        config.validate().unwrap();
        let outfit = config.outfit.unwrap();
        let default = OutfitConfig::default();
        assert_eq!(outfit.garments.len(), default.garments.len());
        for (class, garment) in &default.garments {
            assert_eq!(outfit.garments[class].label, garment.label, "{class}");
            assert_eq!(
                outfit.garments[class].categories, garment.categories,
                "{class}"
            );
        }
        assert_eq!(
            (
                outfit.person_share,
                outfit.min_share,
                outfit.max_garments,
                outfit.candidates
            ),
            (
                default.person_share,
                default.min_share,
                default.max_garments,
                default.candidates
            )
        );
        for (field, value) in [
            ("outfit.min_share", "min_share = 2"),
            ("outfit.max_garments", "max_garments = 0"),
            (
                "outfit.garments.upper.categories",
                "garments.upper = { label = \"Top\", categories = [] }",
            ),
        ] {
            let config = Config::parse(&format!("{MINIMAL}\n[outfit]\n{value}\n")).unwrap();
            let err = format!("{:#}", config.validate().unwrap_err());
            assert!(err.contains(field), "{value}: {err}");
        }
    }

    #[test]
    fn uplink_errors_name_the_field() {
        for (uplink, field) in [
            ("broker = \"\"", "uplink.broker"),
            ("broker = \"b\"\nprefix = \"a/#\"", "uplink.prefix"),
            (
                "broker = \"b\"\ndiscovery_prefix = \"home+assistant\"",
                "uplink.discovery_prefix",
            ),
            (
                "broker = \"b\"\ndiscovery_prefix = \"ha/#\"",
                "uplink.discovery_prefix",
            ),
            ("broker = \"b\"\nkiosk_id = \"a/b\"", "uplink.kiosk_id"),
            ("broker = \"b\"\nstats_secs = 0", "uplink.stats_secs"),
            ("broker = \"b\"\nca_file = \"ca.pem\"", "uplink.ca_file"),
            ("broker = \"b\"\nport = 0", "uplink.port"),
        ] {
            let config = Config::parse(&format!("{MINIMAL}\n[uplink]\n{uplink}\n")).unwrap();
            let err = format!("{:#}", config.validate().unwrap_err());
            assert!(err.contains(field), "{uplink:?}: {err}");
        }
    }

    #[test]
    fn overrides_replace_file_values() {
        let mut config = Config::parse(MINIMAL).unwrap();
        config.apply(&Overrides {
            table: Some("other.fkt".into()),
            scan_log: Some("scans.jsonl".into()),
            screens: Some("out".into()),
            model: None,
        });
        assert_eq!(config.catalogue.table, PathBuf::from("other.fkt"));
        assert_eq!(config.scan_log.path, Some(PathBuf::from("scans.jsonl")));
        assert!(
            matches!(&config.display, DisplayConfig::Simulated { screens: Some(d), .. } if d == Path::new("out"))
        );
    }
}
