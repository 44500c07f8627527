//! Where frames come from: a V4L2 capture device (MJPEG or YUYV, mmap streaming, the first frame
//! captured after the request) and, for development and tests, a folder of images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use image::RgbImage;

use kiosk_pipeline::config::PixelFormatChoice;
use kiosk_vision::calibration::ControlSetting;
use kiosk_vision::preprocess::decode_bytes;

/// A source of frames.
pub trait Camera: Send {
    /// What it is, for logs and `check`.
    fn describe(&self) -> String;
    /// A frame captured after this call began (never one that waited in a buffer).
    fn capture(&mut self) -> Result<RgbImage, CaptureError>;
    /// The controls of [`LOCKABLE`] and [`KEPT`] this camera offers, with their values now
    /// (none for a camera without such controls).
    fn controls(&mut self) -> Result<Vec<CameraControl>> {
        Ok(Vec::new())
    }
    /// Sets `settings` in order; the error names the control the camera refused.
    fn set_controls(&mut self, settings: &[ControlSetting]) -> Result<()> {
        if let Some(first) = settings.first() {
            bail!(
                "{} has no controls (asked to set {})",
                self.describe(),
                first.name
            );
        }
        Ok(())
    }
}

/// Why a capture failed: the camera itself (gone, stopped: reopen it) or one frame (corrupt,
/// the wrong size: the next one may well be fine).
#[derive(Debug)]
pub enum CaptureError {
    Device(anyhow::Error),
    BadFrame(anyhow::Error),
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::Device(e) | CaptureError::BadFrame(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for CaptureError {}

/// How many frames a capture tries before a run of bad frames is reported.
pub const FRAME_ATTEMPTS: u32 = 3;

/// A frame from `camera`, taking another when one comes out bad (a corrupt MJPEG frame, the
/// wrong size), up to [`FRAME_ATTEMPTS`]; a lost device is reported at once.
pub fn capture_retrying(camera: &mut dyn Camera) -> Result<RgbImage, CaptureError> {
    let mut attempt = 1;
    loop {
        match camera.capture() {
            Err(CaptureError::BadFrame(e)) if attempt < FRAME_ATTEMPTS => {
                tracing::warn!(
                    "{}: bad frame ({e:#}); taking another ({attempt} of {FRAME_ATTEMPTS})",
                    camera.describe()
                );
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A control a camera offers, with its value now and its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraControl {
    pub id: u32,
    pub name: String,
    pub value: i64,
    pub default: i64,
}

impl CameraControl {
    fn setting(&self, value: i64) -> ControlSetting {
        ControlSetting {
            id: self.id,
            name: self.name.clone(),
            value,
        }
    }
}

/// V4L2 control ids (linux/v4l2-controls.h).
pub mod cid {
    pub const AUTO_WHITE_BALANCE: u32 = 0x0098_090c;
    pub const AUTOGAIN: u32 = 0x0098_0912;
    pub const GAIN: u32 = 0x0098_0913;
    pub const POWER_LINE_FREQUENCY: u32 = 0x0098_0918;
    pub const WHITE_BALANCE_TEMPERATURE: u32 = 0x0098_091a;
    pub const EXPOSURE_AUTO: u32 = 0x009a_0901;
    pub const EXPOSURE_ABSOLUTE: u32 = 0x009a_0902;
    pub const EXPOSURE_AUTO_PRIORITY: u32 = 0x009a_0903;
}

/// What calibration locks: an automatic mode, the value that turns it to manual, and the
/// manual value it then holds at what the automatic mode had settled on.
pub const LOCKABLE: [(u32, i64, u32); 3] = [
    // V4L2_EXPOSURE_MANUAL = 1
    (cid::EXPOSURE_AUTO, 1, cid::EXPOSURE_ABSOLUTE),
    (cid::AUTO_WHITE_BALANCE, 0, cid::WHITE_BALANCE_TEMPERATURE),
    (cid::AUTOGAIN, 0, cid::GAIN),
];
/// What calibration records and restores as it was: the mains frequency against flicker, and
/// whether exposure may lengthen frames.
pub const KEPT: [u32; 2] = [cid::POWER_LINE_FREQUENCY, cid::EXPOSURE_AUTO_PRIORITY];

/// Whether the kiosk calibrates control `id`.
pub fn is_calibrated_control(id: u32) -> bool {
    KEPT.contains(&id)
        || LOCKABLE
            .iter()
            .any(|&(auto, _, value)| id == auto || id == value)
}

/// The settings that hand `offered`'s automatic modes back to the camera (their defaults), so
/// that they settle before being locked.
pub fn automatic(offered: &[CameraControl]) -> Vec<ControlSetting> {
    LOCKABLE
        .iter()
        .filter_map(|&(auto, _, _)| offered.iter().find(|c| c.id == auto))
        .map(|c| c.setting(c.default))
        .collect()
}

/// The settings that hold `offered` where it is now: each automatic mode turned to manual, then
/// its manual value as the automatic mode left it; the kept controls as they are. Applied in
/// this order (a manual value cannot be set while its automatic mode is on).
pub fn locked(offered: &[CameraControl]) -> Vec<ControlSetting> {
    let mut settings = Vec::new();
    for &(auto, manual, value) in &LOCKABLE {
        let Some(auto) = offered.iter().find(|c| c.id == auto) else {
            continue;
        };
        settings.push(auto.setting(manual));
        if let Some(value) = offered.iter().find(|c| c.id == value) {
            settings.push(value.setting(value.value));
        }
    }
    settings.extend(
        KEPT.iter()
            .filter_map(|&id| offered.iter().find(|c| c.id == id))
            .map(|c| c.setting(c.value)),
    );
    settings
}

/// Simulated camera: the images of a folder in name order, cycling; or a single image file.
pub struct FolderCamera {
    path: PathBuf,
    next: usize,
    controls: Option<SimulatedControls>,
}

/// A simulated UVC camera's exposure, white balance and mains-frequency controls: while an
/// automatic mode is on, its manual value wanders from frame to frame, as a real camera's does.
#[derive(Debug, Clone)]
pub struct SimulatedControls {
    controls: Vec<CameraControl>,
}

impl Default for SimulatedControls {
    fn default() -> Self {
        let control = |id, name: &str, value| CameraControl {
            id,
            name: name.into(),
            value,
            default: value,
        };
        SimulatedControls {
            controls: vec![
                // V4L2_EXPOSURE_APERTURE_PRIORITY (3): automatic, as UVC cameras start.
                control(cid::EXPOSURE_AUTO, "Auto Exposure", 3),
                control(cid::EXPOSURE_ABSOLUTE, "Exposure Time, Absolute", 250),
                control(cid::AUTO_WHITE_BALANCE, "White Balance, Automatic", 1),
                control(
                    cid::WHITE_BALANCE_TEMPERATURE,
                    "White Balance Temperature",
                    4600,
                ),
                control(cid::POWER_LINE_FREQUENCY, "Power Line Frequency", 1),
            ],
        }
    }
}

impl SimulatedControls {
    fn value(&self, id: u32) -> Option<i64> {
        self.controls.iter().find(|c| c.id == id).map(|c| c.value)
    }

    /// One frame later: values under an automatic mode move.
    fn advance(&mut self) {
        let exposure_auto = self.value(cid::EXPOSURE_AUTO) != Some(1);
        let white_balance_auto = self.value(cid::AUTO_WHITE_BALANCE) == Some(1);
        for control in &mut self.controls {
            match control.id {
                cid::EXPOSURE_ABSOLUTE if exposure_auto => {
                    control.value = 150 + (control.value - 150 + 7) % 200
                }
                cid::WHITE_BALANCE_TEMPERATURE if white_balance_auto => {
                    control.value = 2800 + (control.value - 2800 + 130) % 3700
                }
                _ => {}
            }
        }
    }
}

impl FolderCamera {
    /// Opens `path` (a folder with at least one image, or an image file), with simulated
    /// controls or none.
    pub fn open(path: &Path, controls: Option<SimulatedControls>) -> Result<Self> {
        let camera = FolderCamera {
            path: path.to_path_buf(),
            next: 0,
            controls,
        };
        camera.frames()?;
        Ok(camera)
    }

    fn frames(&self) -> Result<Vec<PathBuf>> {
        if self.path.is_file() {
            return Ok(vec![self.path.clone()]);
        }
        let frames: Vec<PathBuf> =
            kiosk_vision::preprocess::list_images(&self.path, "camera folder")?
                .images
                .into_iter()
                .map(|(path, _)| path)
                .collect();
        if frames.is_empty() {
            bail!("camera folder {} holds no images", self.path.display());
        }
        Ok(frames)
    }
}

impl Camera for FolderCamera {
    fn describe(&self) -> String {
        format!("folder camera {}", self.path.display())
    }

    fn capture(&mut self) -> Result<RgbImage, CaptureError> {
        let frames = self.frames().map_err(CaptureError::Device)?;
        let path = &frames[self.next % frames.len()];
        self.next += 1;
        if let Some(controls) = &mut self.controls {
            controls.advance();
        }
        kiosk_vision::preprocess::decode_file(path).map_err(CaptureError::BadFrame)
    }

    fn controls(&mut self) -> Result<Vec<CameraControl>> {
        Ok(self
            .controls
            .as_ref()
            .map(|c| c.controls.clone())
            .unwrap_or_default())
    }

    fn set_controls(&mut self, settings: &[ControlSetting]) -> Result<()> {
        let describe = self.describe();
        let Some(simulated) = &mut self.controls else {
            if let Some(first) = settings.first() {
                bail!("{describe} has no controls (asked to set {})", first.name);
            }
            return Ok(());
        };
        for setting in settings {
            let control = simulated
                .controls
                .iter_mut()
                .find(|c| c.id == setting.id)
                .with_context(|| format!("{describe} has no control {}", setting.name))?;
            control.value = setting.value;
        }
        Ok(())
    }
}

/// The pixel formats this camera code decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
}

impl PixelFormat {
    fn fourcc(self) -> v4l::FourCC {
        match self {
            PixelFormat::Mjpeg => v4l::FourCC::new(b"MJPG"),
            PixelFormat::Yuyv => v4l::FourCC::new(b"YUYV"),
        }
    }
}

/// A V4L2 capture device streaming into a few mmap buffers.
pub struct V4l2Camera {
    path: PathBuf,
    device: v4l::Device,
    // The stream holds its own handle on the open device.
    stream: v4l::io::mmap::Stream<'static>,
    format: PixelFormat,
    width: u32,
    height: u32,
    /// Bytes from one row to the next in a YUYV buffer (the driver may pad rows).
    stride: u32,
    buffers: u32,
}

/// One frame from a V4L2 camera with its capture time and sequence number.
pub struct Frame {
    pub image: RgbImage,
    /// CLOCK_MONOTONIC time of the frame (as the driver stamped it), if the driver uses it.
    pub timestamp: Option<Duration>,
    pub sequence: u32,
}

/// CLOCK_MONOTONIC now, the clock V4L2 stamps buffers with.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl V4l2Camera {
    /// Opens `device`, negotiates the pixel format and size, and starts streaming.
    pub fn open(
        device: &Path,
        width: u32,
        height: u32,
        choice: PixelFormatChoice,
        buffers: u32,
    ) -> Result<Self> {
        use v4l::video::Capture;
        let name = device.display();
        let dev =
            v4l::Device::with_path(device).with_context(|| format!("cannot open camera {name}"))?;
        let caps = dev
            .query_caps()
            .with_context(|| format!("{name} is not a V4L2 device"))?;
        if !caps
            .capabilities
            .contains(v4l::capability::Flags::VIDEO_CAPTURE | v4l::capability::Flags::STREAMING)
        {
            bail!("{name} ({}) cannot stream video capture", caps.card);
        }
        let offered: Vec<v4l::FourCC> = dev
            .enum_formats()
            .with_context(|| format!("{name}: cannot list pixel formats"))?
            .into_iter()
            .map(|f| f.fourcc)
            .collect();
        let format = match choice {
            PixelFormatChoice::Mjpeg => PixelFormat::Mjpeg,
            PixelFormatChoice::Yuyv => PixelFormat::Yuyv,
            PixelFormatChoice::Auto if offered.contains(&PixelFormat::Mjpeg.fourcc()) => {
                PixelFormat::Mjpeg
            }
            PixelFormatChoice::Auto => PixelFormat::Yuyv,
        };
        if !offered.contains(&format.fourcc()) {
            let list: Vec<String> = offered.iter().map(|f| f.to_string()).collect();
            bail!(
                "{name} does not offer {} (it offers {})",
                format.fourcc(),
                list.join(", ")
            );
        }
        let wanted = v4l::Format::new(width, height, format.fourcc());
        // The driver may adjust what it was asked for: read back what it really set.
        let set = dev
            .set_format(&wanted)
            .with_context(|| format!("{name}: cannot set {width}×{height} {}", format.fourcc()))?;
        if set.fourcc != format.fourcc() {
            bail!(
                "{name} switched to {} when asked for {}",
                set.fourcc,
                format.fourcc()
            );
        }
        if (set.width, set.height) != (width, height) {
            tracing::warn!(
                "{name}: asked for {width}×{height}, the driver set {}×{}",
                set.width,
                set.height
            );
        }
        let mut stream =
            v4l::io::mmap::Stream::with_buffers(&dev, v4l::buffer::Type::VideoCapture, buffers)
                .with_context(|| format!("{name}: cannot map {buffers} capture buffers"))?;
        stream.set_timeout(Duration::from_secs(3));
        let mut camera = V4l2Camera {
            path: device.to_path_buf(),
            device: dev,
            stream,
            format,
            width: set.width,
            height: set.height,
            stride: set.stride,
            buffers,
        };
        // Start streaming now so that the sensor's exposure settles before the first press.
        camera.next_frame().map_err(|e| anyhow!("{e}"))?;
        Ok(camera)
    }

    /// The name and default of control `id`, if the camera offers it (and it is not disabled)
    /// as an integer, boolean or menu.
    fn describe_control(&self, id: u32) -> Option<(String, i64)> {
        use v4l::v4l_sys::v4l2_query_ext_ctrl;
        // SAFETY: an all-zero v4l2_query_ext_ctrl is a valid request once its id is set; the
        // ioctl fills it in place through a pointer to it that lives for the call.
        let mut query: v4l2_query_ext_ctrl = unsafe { std::mem::zeroed() };
        query.id = id;
        unsafe {
            v4l::v4l2::ioctl(
                self.device.handle().fd(),
                v4l::v4l2::vidioc::VIDIOC_QUERY_EXT_CTRL,
                &mut query as *mut _ as *mut std::os::raw::c_void,
            )
        }
        .ok()?;
        const DISABLED: u32 = 0x0001;
        const INTEGER: u32 = 1;
        const BOOLEAN: u32 = 2;
        const MENU: u32 = 3;
        if query.flags & DISABLED != 0 || ![INTEGER, BOOLEAN, MENU].contains(&query.type_) {
            return None;
        }
        // `c_char` is i8 on x86_64 and u8 on aarch64: the cast is needed on one, a no-op on the other.
        #[allow(clippy::unnecessary_cast)]
        let name: Vec<u8> = query
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Some((
            String::from_utf8_lossy(&name).into_owned(),
            query.default_value,
        ))
    }

    /// The negotiated pixel format and size.
    pub fn format(&self) -> (PixelFormat, u32, u32) {
        (self.format, self.width, self.height)
    }

    /// Dequeues the next filled buffer (waiting for one), with its metadata.
    fn next_frame(&mut self) -> Result<(Vec<u8>, Option<Duration>, u32), CaptureError> {
        use v4l::io::traits::CaptureStream;
        let (bytes, meta) = self.stream.next().map_err(|e| {
            CaptureError::Device(anyhow!(
                "camera {} stopped delivering frames: {e}",
                self.path.display()
            ))
        })?;
        let used = (meta.bytesused as usize).min(bytes.len());
        let monotonic = (meta.flags & v4l::buffer::Flags::TIMESTAMP_MASK)
            == v4l::buffer::Flags::TIMESTAMP_MONOTONIC;
        let timestamp = monotonic.then(|| {
            Duration::new(meta.timestamp.sec.max(0) as u64, 0)
                + Duration::from_micros(meta.timestamp.usec.max(0) as u64)
        });
        Ok((bytes[..used].to_vec(), timestamp, meta.sequence))
    }

    /// A frame captured after this call: buffers filled before it are dropped, by their
    /// timestamp where the driver gives a monotonic one, else by count.
    pub fn fresh_frame(&mut self) -> Result<Frame, CaptureError> {
        let requested = monotonic_now();
        // At most `buffers` frames can have been waiting; one more is the fresh one.
        for dropped in 0..=self.buffers + 2 {
            let (bytes, timestamp, sequence) = self.next_frame()?;
            let fresh = match timestamp {
                Some(t) => t >= requested,
                None => dropped >= self.buffers,
            };
            if fresh {
                let name = self.path.display();
                let image = match self.format {
                    PixelFormat::Mjpeg => decode_mjpeg(&bytes)
                        .with_context(|| format!("{name}: bad MJPEG frame"))
                        .and_then(|image| {
                            ensure!(
                                image.dimensions() == (self.width, self.height),
                                "{name}: a {}×{} MJPEG frame from a {}×{} stream",
                                image.width(),
                                image.height(),
                                self.width,
                                self.height
                            );
                            Ok(image)
                        }),
                    PixelFormat::Yuyv => yuyv_to_rgb(&bytes, self.width, self.height, self.stride)
                        .with_context(|| format!("{name}: bad YUYV frame")),
                }
                .map_err(CaptureError::BadFrame)?;
                return Ok(Frame {
                    image,
                    timestamp,
                    sequence,
                });
            }
        }
        Err(CaptureError::Device(anyhow!(
            "camera {}: no frame newer than the request (are its timestamps broken?)",
            self.path.display()
        )))
    }
}

impl Camera for V4l2Camera {
    fn describe(&self) -> String {
        format!(
            "V4L2 camera {} ({}×{} {:?})",
            self.path.display(),
            self.width,
            self.height,
            self.format
        )
    }

    fn capture(&mut self) -> Result<RgbImage, CaptureError> {
        Ok(self.fresh_frame()?.image)
    }

    fn controls(&mut self) -> Result<Vec<CameraControl>> {
        let name = self.path.display();
        let mut offered = Vec::new();
        // Each known control by its id: listing all of them would meet driver-specific types
        // (v4l's enumeration panics on some), and only these matter here.
        for id in LOCKABLE
            .iter()
            .flat_map(|&(auto, _, value)| [auto, value])
            .chain(KEPT)
        {
            let Some((control_name, default)) = self.describe_control(id) else {
                continue;
            };
            let value = match self
                .device
                .control(id)
                .with_context(|| format!("{name}: cannot read control {control_name:?}"))?
                .value
            {
                v4l::control::Value::Integer(v) => v,
                v4l::control::Value::Boolean(b) => i64::from(b),
                other => bail!("{name}: control {control_name:?} has a {other:?} value"),
            };
            offered.push(CameraControl {
                id,
                name: control_name,
                value,
                default,
            });
        }
        Ok(offered)
    }

    fn set_controls(&mut self, settings: &[ControlSetting]) -> Result<()> {
        for setting in settings {
            self.device
                .set_control(v4l::control::Control {
                    id: setting.id,
                    value: v4l::control::Value::Integer(setting.value),
                })
                .with_context(|| {
                    format!(
                        "camera {} refused {} = {}",
                        self.path.display(),
                        setting.name,
                        setting.value
                    )
                })?;
        }
        Ok(())
    }
}

/// Converts packed YUYV 4:2:2 (BT.601, limited range) to RGB; rows start `stride` bytes apart
/// (at least `width × 2`: drivers may pad each row; 0 means unpadded).
pub fn yuyv_to_rgb(bytes: &[u8], width: u32, height: u32, stride: u32) -> Result<RgbImage> {
    let row = width as usize * 2;
    let stride = if stride == 0 { row } else { stride as usize };
    let expected = stride * (height as usize).saturating_sub(1) + row;
    if !width.is_multiple_of(2) || stride < row || bytes.len() < expected {
        bail!(
            "{} bytes for a {width}×{height} YUYV frame with {stride}-byte rows (need {expected})",
            bytes.len()
        );
    }
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    let rows = bytes.chunks(stride).take(height as usize);
    for quad in rows.flat_map(|r| r[..row].chunks_exact(4)) {
        let (y0, u, y1, v) = (quad[0], quad[1], quad[2], quad[3]);
        for y in [y0, y1] {
            let c = (y as i32 - 16) * 298;
            let d = u as i32 - 128;
            let e = v as i32 - 128;
            let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
            rgb.push(clamp(c + 409 * e));
            rgb.push(clamp(c - 100 * d - 208 * e));
            rgb.push(clamp(c + 516 * d));
        }
    }
    Ok(RgbImage::from_raw(width, height, rgb).expect("buffer sized for width × height × 3"))
}

/// The Huffman tables that USB cameras leave out of MJPEG frames (JPEG standard, Annex K.3), as
/// one DHT segment.
const STANDARD_DHT: [u8; 420] = {
    const SEGMENT: &[&[u8]] = &[
        &[0xff, 0xc4, 0x01, 0xa2],
        // DC luminance
        &[0x00, 0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        // AC luminance
        &[0x10, 0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
        &[
            0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51,
            0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1,
            0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18,
            0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39,
            0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57,
            0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75,
            0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92,
            0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
            0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
            0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8,
            0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
        // DC chrominance
        &[0x01, 0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        // AC chrominance
        &[0x11, 0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
        &[
            0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07,
            0x61, 0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09,
            0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25,
            0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38,
            0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56,
            0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74,
            0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
            0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
            0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
            0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6,
            0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    ];
    let mut out = [0u8; 420];
    let mut n = 0;
    let mut i = 0;
    while i < SEGMENT.len() {
        let mut j = 0;
        while j < SEGMENT[i].len() {
            out[n] = SEGMENT[i][j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(n == 420);
    out
};

/// Decodes an MJPEG frame, inserting the standard Huffman tables when the camera left them out
/// (most USB cameras do).
pub fn decode_mjpeg(bytes: &[u8]) -> Result<RgbImage> {
    if !bytes.starts_with(&[0xff, 0xd8]) {
        bail!("frame does not start with a JPEG marker");
    }
    match find_marker_before_scan(bytes, 0xc4) {
        Ok(true) => decode_bytes(bytes),
        Ok(false) => {
            let sos = find_marker_offset(bytes, 0xda).context("frame has no start of scan")?;
            let mut fixed = Vec::with_capacity(bytes.len() + STANDARD_DHT.len());
            fixed.extend_from_slice(&bytes[..sos]);
            fixed.extend_from_slice(&STANDARD_DHT);
            fixed.extend_from_slice(&bytes[sos..]);
            decode_bytes(&fixed)
        }
        Err(e) => Err(e),
    }
}

/// Walks the JPEG header segments; whether `marker` occurs before the start of scan.
fn find_marker_before_scan(bytes: &[u8], marker: u8) -> Result<bool> {
    Ok(find_marker_offset(bytes, marker)
        .zip(find_marker_offset(bytes, 0xda))
        .is_some_and(|(m, sos)| m < sos))
}

/// Offset of the first header segment with `marker` (segments walked by length up to SOS).
fn find_marker_offset(bytes: &[u8], marker: u8) -> Option<usize> {
    let mut at = 2;
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xff {
            return None;
        }
        let kind = bytes[at + 1];
        if kind == marker {
            return Some(at);
        }
        if kind == 0xda {
            return None;
        }
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        at += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_converts_known_colours() {
        // Black, white, and BT.601 red (Y 81, U 90, V 240) in two YUYV pairs.
        let bytes = [16, 128, 235, 128, 81, 90, 81, 240];
        let rgb = yuyv_to_rgb(&bytes, 2, 2, 0).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
        let red = rgb.get_pixel(0, 1).0;
        assert!(red[0] >= 250 && red[1] <= 5 && red[2] <= 5, "{red:?}");
        assert!(yuyv_to_rgb(&bytes[..6], 2, 2, 0).is_err());
    }

    #[test]
    fn yuyv_rows_padded_by_the_driver_are_not_sheared() {
        // Two rows of 2 pixels (4 bytes each), padded to 8 bytes a row with junk.
        let bytes = [16, 128, 16, 128, 9, 9, 9, 9, 235, 128, 235, 128, 9, 9, 9, 9];
        let rgb = yuyv_to_rgb(&bytes, 2, 2, 8).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(0, 1).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 1).0, [255, 255, 255]);
        // The last row needs no padding after it; a stride under a row is refused.
        assert!(yuyv_to_rgb(&bytes[..12], 2, 2, 8).is_ok());
        assert!(yuyv_to_rgb(&bytes, 2, 2, 3).is_err());
    }

    /// A baseline JPEG with its DHT segment cut out, as MJPEG cameras send them.
    fn jpeg_without_huffman_tables() -> (Vec<u8>, RgbImage) {
        let image = RgbImage::from_fn(32, 16, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 16) as u8, 90])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&image)
            .unwrap();
        let mut stripped = jpeg[..2].to_vec();
        let mut at = 2;
        loop {
            let kind = jpeg[at + 1];
            if kind == 0xda {
                stripped.extend_from_slice(&jpeg[at..]);
                break;
            }
            let len = u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]) as usize;
            if kind != 0xc4 {
                stripped.extend_from_slice(&jpeg[at..at + 2 + len]);
            }
            at += 2 + len;
        }
        (stripped, image)
    }

    #[test]
    fn mjpeg_without_huffman_tables_decodes() {
        let (stripped, original) = jpeg_without_huffman_tables();
        assert!(find_marker_offset(&stripped, 0xc4).is_none());
        let decoded = decode_mjpeg(&stripped).unwrap();
        assert_eq!(decoded.dimensions(), original.dimensions());
        let diff: u64 = decoded
            .as_raw()
            .iter()
            .zip(original.as_raw())
            .map(|(a, b)| (*a as i64 - *b as i64).unsigned_abs())
            .sum();
        assert!(
            diff / (original.as_raw().len() as u64) < 6,
            "mean error {diff}"
        );
        assert!(decode_mjpeg(b"not a jpeg").is_err());
    }

    #[test]
    fn locking_turns_each_automatic_mode_to_manual_at_its_settled_value() {
        let mut camera = FolderCamera {
            path: PathBuf::from("unused"),
            next: 0,
            controls: Some(SimulatedControls::default()),
        };
        let offered = camera.controls().unwrap();
        let plan = locked(&offered);
        let ids: Vec<(u32, i64)> = plan.iter().map(|s| (s.id, s.value)).collect();
        assert_eq!(
            ids,
            [
                (cid::EXPOSURE_AUTO, 1),
                (cid::EXPOSURE_ABSOLUTE, 250),
                (cid::AUTO_WHITE_BALANCE, 0),
                (cid::WHITE_BALANCE_TEMPERATURE, 4600),
                (cid::POWER_LINE_FREQUENCY, 1),
            ]
        );
        // Unlocked, the values wander frame to frame; locked, they hold.
        let mut simulated = SimulatedControls::default();
        simulated.advance();
        assert_ne!(simulated.value(cid::EXPOSURE_ABSOLUTE), Some(250));
        camera.set_controls(&plan).unwrap();
        let mut held = camera.controls.clone().unwrap();
        held.advance();
        assert_eq!(held.value(cid::EXPOSURE_ABSOLUTE), Some(250));
        assert_eq!(held.value(cid::WHITE_BALANCE_TEMPERATURE), Some(4600));
        // Back to automatic: the defaults of the automatic modes.
        let auto: Vec<(u32, i64)> = automatic(&offered)
            .iter()
            .map(|s| (s.id, s.value))
            .collect();
        assert_eq!(
            auto,
            [(cid::EXPOSURE_AUTO, 3), (cid::AUTO_WHITE_BALANCE, 1)]
        );
        // A camera without controls locks nothing, and refuses to be asked.
        assert!(locked(&[]).is_empty());
        let mut plain = FolderCamera {
            controls: None,
            ..camera
        };
        let err = plain.set_controls(&plan).unwrap_err();
        assert!(format!("{err:#}").contains("has no controls"), "{err:#}");
    }

    #[test]
    fn a_bad_frame_is_taken_again_and_a_lost_folder_is_a_device_fault() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"not a jpeg").unwrap();
        std::fs::write(dir.path().join("b.jpg"), b"\xff\xd8 cut short").unwrap();
        RgbImage::from_pixel(4, 4, image::Rgb([9; 3]))
            .save(dir.path().join("c.png"))
            .unwrap();
        let mut camera = FolderCamera::open(dir.path(), None).unwrap();
        let frame = capture_retrying(&mut camera).unwrap();
        assert_eq!(
            frame.get_pixel(0, 0).0,
            [9; 3],
            "the third frame, after two bad ones"
        );
        // Three bad frames in a row: a bad-frame error, not a device fault.
        std::fs::write(dir.path().join("c.png"), b"garbage").unwrap();
        assert!(matches!(
            capture_retrying(&mut camera),
            Err(CaptureError::BadFrame(_))
        ));
        let gone = dir.path().with_extension("gone");
        std::fs::rename(dir.path(), &gone).unwrap();
        assert!(matches!(
            capture_retrying(&mut camera),
            Err(CaptureError::Device(_))
        ));
        std::fs::rename(&gone, dir.path()).unwrap();
    }

    #[test]
    fn folder_camera_cycles_in_name_order_and_reports_loss() {
        let dir = tempfile::tempdir().unwrap();
        for (name, shade) in [("b.png", 200u8), ("a.png", 10)] {
            RgbImage::from_pixel(4, 4, image::Rgb([shade; 3]))
                .save(dir.path().join(name))
                .unwrap();
        }
        let mut camera = FolderCamera::open(dir.path(), None).unwrap();
        let shades: Vec<u8> = (0..3)
            .map(|_| camera.capture().unwrap().get_pixel(0, 0)[0])
            .collect();
        assert_eq!(shades, [10, 200, 10]);
        let gone = dir.path().with_extension("gone");
        std::fs::rename(dir.path(), &gone).unwrap();
        let err = camera.capture().unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read camera folder"),
            "{err:#}"
        );
        std::fs::rename(&gone, dir.path()).unwrap();
        assert!(camera.capture().is_ok());
        assert!(FolderCamera::open(&gone, None).is_err());
    }
}
