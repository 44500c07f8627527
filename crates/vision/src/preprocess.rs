//! Image preprocessing exactly as a model manifest says: decode (JPEG/PNG/WebP) with EXIF
//! orientation, region of interest, centred square, SIMD resize, normalise into an NCHW tensor.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use fast_image_resize::images::Image as ResizeImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::model::{CropRule, InputSpec};

/// Which part of a frame holds the item, before the manifest's centred-square crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Region {
    /// The whole frame.
    #[default]
    Whole,
    /// A rectangle in frame pixels (a fixed camera's configured region of interest).
    Rect {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
}

/// File extensions taken as images (case-insensitive).
const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Whether `path` names an image by its extension (JPEG, PNG or WebP).
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The images of a folder, by the one rule every command and the folder camera follow: regular
/// files with an image extension, hidden files left out, in natural order (`9.jpg` before
/// `10.jpg`).
#[derive(Debug, Default)]
pub struct ImageFiles {
    /// Each image's path and file name.
    pub images: Vec<(PathBuf, String)>,
    /// Other files, not images by their names.
    pub ignored: usize,
    /// Files whose names are not UTF-8 (so no id can be made of them).
    pub bad_names: Vec<PathBuf>,
}

/// Lists the images of `dir` (see [`ImageFiles`]); the error names the folder as `what` (say,
/// "camera folder").
pub fn list_images(dir: &Path, what: &str) -> Result<ImageFiles> {
    let context = || format!("cannot read {what} {}", dir.display());
    let entries = std::fs::read_dir(dir).with_context(context)?;
    let mut listing = ImageFiles::default();
    for entry in entries {
        let entry = entry.with_context(context)?;
        let Ok(file_name) = entry.file_name().into_string() else {
            listing.bad_names.push(entry.path());
            continue;
        };
        if file_name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        if is_image_name(Path::new(&file_name)) {
            listing.images.push((entry.path(), file_name));
        } else {
            listing.ignored += 1;
        }
    }
    listing.images.sort_by(|a, b| natural_order(&a.1, &b.1));
    Ok(listing)
}

/// The order of image file names in listings and tables: `9.jpg` before `10.jpg`.
pub fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    natural_key(a).cmp(&natural_key(b))
}

fn natural_key(name: &str) -> (u64, &str) {
    let stem = Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name);
    (stem.parse().unwrap_or(u64::MAX), name)
}

/// Decodes an image file (JPEG, PNG or WebP; format from content, not name) and applies its EXIF
/// orientation. The error names the file.
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_bytes(&bytes).with_context(|| format!("cannot decode image {}", path.display()))
}

/// The widest or tallest image decoded, pixels.
const MAX_IMAGE_SIDE: u32 = 16_384;
/// How many decoded bytes a byte of image file may claim: deflate's largest expansion is about
/// 1,032 to 1 and baseline JPEG's smaller, so a header that claims more is not the file's.
const MAX_EXPANSION: u64 = 1_100;

/// Decodes an in-memory image (a file's bytes, a camera's MJPEG frame) and applies its EXIF
/// orientation. A JPEG cut short is an error, not a picture with a grey bottom.
pub fn decode_bytes(bytes: &[u8]) -> Result<RgbImage> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    match reader.format() {
        None => bail!("not a JPEG, PNG or WebP image (unrecognised content)"),
        Some(ImageFormat::Jpeg) => ensure!(
            jpeg_is_complete(bytes),
            "truncated JPEG (no end-of-image marker)"
        ),
        Some(_) => {}
    }
    let mut decoder = reader.into_decoder()?;
    let (width, height) = decoder.dimensions();
    let claimed = decoder.total_bytes();
    ensure!(
        width <= MAX_IMAGE_SIDE
            && height <= MAX_IMAGE_SIDE
            && claimed <= MAX_EXPANSION.saturating_mul(bytes.len() as u64),
        "claims {width}x{height} pixels, more than its {} bytes can hold (damaged?)",
        bytes.len()
    );
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Whether a JPEG ends with its end-of-image marker (FF D9), allowing trailing padding.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0 && b != b'\n' && b != b'\r')
        .map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

/// Turns RGB frames into the network's input tensor, reusing its buffers from call to call.
pub struct Preprocessor {
    resizer: Resizer,
    resized: ResizeImage<'static>,
    /// Per channel: tensor value = pixel * scale + offset  (== (pixel / value_scale - mean) / std).
    scale: [f32; 3],
    offset: [f32; 3],
    /// Width ÷ height of the part of the region that is resized (the input's).
    aspect: f64,
}

impl Preprocessor {
    pub fn new(input: &InputSpec) -> Self {
        let scale = std::array::from_fn(|c| 1.0 / (input.value_scale * input.std[c]));
        let offset = std::array::from_fn(|c| -input.mean[c] / input.std[c]);
        Self {
            resizer: Resizer::new(),
            resized: ResizeImage::new(input.width, input.height, PixelType::U8x3),
            scale,
            offset,
            aspect: match input.crop {
                CropRule::CentreSquare => 1.0,
                CropRule::CentreAspect => input.width as f64 / input.height as f64,
            },
        }
    }

    /// Crops `region` of `image`, takes its centred part of the input's shape (a square for a
    /// square input), resizes it to the input size and writes the normalised planes (R, G, B) into
    /// `out`, which holds 3 × width × height values.
    pub fn run(&mut self, image: &RgbImage, region: Region, out: &mut [f32]) -> Result<()> {
        let (left, top, width, height) = self.view(image, region)?;
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(left as f64, top as f64, width as f64, height as f64);
        self.resizer
            .resize(image, &mut self.resized, &options)
            .context("resizing the frame failed")?;

        let plane = (self.resized.width() * self.resized.height()) as usize;
        ensure!(
            out.len() == 3 * plane,
            "input tensor holds {} values, expected {}",
            out.len(),
            3 * plane
        );
        let (red, rest) = out.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        let [sr, sg, sb] = self.scale;
        let [or, og, ob] = self.offset;
        for (i, pixel) in self.resized.buffer().chunks_exact(3).enumerate() {
            red[i] = pixel[0] as f32 * sr + or;
            green[i] = pixel[1] as f32 * sg + og;
            blue[i] = pixel[2] as f32 * sb + ob;
        }
        Ok(())
    }
}

impl Preprocessor {
    /// The part of `region` of `image` that [`Preprocessor::run`] resizes, `(x, y, width,
    /// height)`: the largest centred part with the input's shape.
    pub fn view(&self, image: &RgbImage, region: Region) -> Result<(u32, u32, u32, u32)> {
        let (x, y, w, h) = region_bounds(image, region)?;
        let (width, height) = if w as f64 / h as f64 > self.aspect {
            (((h as f64 * self.aspect).round() as u32).clamp(1, w), h)
        } else {
            (w, ((w as f64 / self.aspect).round() as u32).clamp(1, h))
        };
        Ok((x + (w - width) / 2, y + (h - height) / 2, width, height))
    }
}

/// `region` of `image` as `(x, y, width, height)`, checked to lie inside the image.
pub fn region_bounds(image: &RgbImage, region: Region) -> Result<(u32, u32, u32, u32)> {
    let (width, height) = image.dimensions();
    ensure!(width > 0 && height > 0, "the image is empty");
    match region {
        Region::Whole => Ok((0, 0, width, height)),
        Region::Rect {
            x,
            y,
            width: w,
            height: h,
        } => {
            ensure!(
                w > 0
                    && h > 0
                    && x.checked_add(w).is_some_and(|r| r <= width)
                    && y.checked_add(h).is_some_and(|b| b <= height),
                "region of interest {w}x{h}+{x}+{y} lies outside the {width}x{height} frame"
            );
            Ok((x, y, w, h))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CropRule;

    fn spec(size: u32) -> InputSpec {
        InputSpec {
            name: "image".into(),
            width: size,
            height: size,
            layout: "NCHW".into(),
            colour_order: "RGB".into(),
            value_scale: 255.0,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.25, 0.125],
            crop: CropRule::CentreSquare,
            resize: "bilinear".into(),
        }
    }

    #[test]
    fn normalises_each_channel_into_its_plane() {
        let image = RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 51]));
        let mut out = vec![0.0; 3 * 16];
        Preprocessor::new(&spec(4))
            .run(&image, Region::Whole, &mut out)
            .unwrap();
        assert!(out[..16].iter().all(|v| (v - 1.0).abs() < 1e-5)); // (1 - .5)/.5
        assert!(out[16..32].iter().all(|v| (v + 2.0).abs() < 1e-5)); // (0 - .5)/.25
        assert!(out[32..].iter().all(|v| (v + 2.4).abs() < 1e-5)); // (.2 - .5)/.125
    }

    #[test]
    fn takes_the_centred_square_of_a_wide_frame() {
        // 12x4 frame: left third red, middle third green, right third blue.
        let image = RgbImage::from_fn(12, 4, |x, _| match x / 4 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let mut out = vec![0.0; 3 * 16];
        Preprocessor::new(&spec(4))
            .run(&image, Region::Whole, &mut out)
            .unwrap();
        assert!(out[..16].iter().all(|v| (v + 1.0).abs() < 1e-5), "no red");
        assert!(
            out[16..32].iter().all(|v| (v - 2.0).abs() < 1e-5),
            "all green"
        );
    }

    /// The right-hand 4x4 square of a 12x4 frame.
    const RIGHT_SQUARE: Region = Region::Rect {
        x: 8,
        y: 0,
        width: 4,
        height: 4,
    };

    #[test]
    fn region_of_interest_selects_the_item() {
        let image = RgbImage::from_fn(12, 4, |x, _| {
            if x >= 8 {
                image::Rgb([0, 0, 255])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        let mut out = vec![0.0; 3 * 16];
        Preprocessor::new(&spec(4))
            .run(&image, RIGHT_SQUARE, &mut out)
            .unwrap();
        assert!(out[32..].iter().all(|v| (v - 4.0).abs() < 1e-5), "all blue");
    }

    #[test]
    fn region_outside_the_frame_is_an_error() {
        let image = RgbImage::new(10, 10);
        let mut out = vec![0.0; 3 * 16];
        let err = Preprocessor::new(&spec(4))
            .run(&image, RIGHT_SQUARE, &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("outside the 10x10 frame"), "{err}");
    }

    #[test]
    fn applies_exif_orientation() {
        // A 2x1 JPEG would lose its colours; use a PNG with an eXIf chunk saying "rotate 90° CW".
        let image = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let png = png_with_orientation(&image, 6);
        let decoded = decode_bytes(&png).unwrap();
        assert_eq!(decoded.dimensions(), (1, 2));
        assert_eq!(decoded.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(decoded.get_pixel(0, 1).0, [0, 0, 255]);
    }

    #[test]
    fn rejects_a_truncated_jpeg_and_accepts_the_whole_one() {
        let image = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 90]));
        let mut jpeg = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(decode_bytes(&jpeg).unwrap().dimensions(), (64, 64));
        let err = decode_bytes(&jpeg[..jpeg.len() / 2]).unwrap_err();
        assert!(err.to_string().contains("truncated JPEG"), "{err}");
    }

    #[test]
    fn rejects_bytes_that_are_not_an_image() {
        let err = decode_bytes(b"name,id\n1,2\n").unwrap_err();
        assert!(err.to_string().contains("not a JPEG, PNG or WebP"), "{err}");
    }

    /// Encodes `image` as PNG with an eXIf chunk carrying the given EXIF orientation.
    fn png_with_orientation(image: &RgbImage, orientation: u16) -> Vec<u8> {
        let mut png = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // Minimal little-endian TIFF: header, one IFD with one entry (0x0112 Orientation, SHORT).
        let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&orientation.to_le_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut chunk = Vec::new();
        chunk.extend_from_slice(&(exif.len() as u32).to_be_bytes());
        let body: Vec<u8> = b"eXIf".iter().chain(exif.iter()).copied().collect();
        chunk.extend_from_slice(&body);
        chunk.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        // Insert right after IHDR (8-byte signature + 25-byte IHDR chunk).
        png.splice(33..33, chunk);
        png
    }
}
