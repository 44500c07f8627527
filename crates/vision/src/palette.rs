//! Colour names: a garment's pixels named with the catalogue's `baseColour` words, by the nearest
//! reference colour in CIELAB.

/// The catalogue's common `baseColour` names (those of at least five items that name one hue;
/// "Multi", metallics and "Grey Melange" are left out) with a typical sRGB value for each.
pub const PALETTE: [(&str, [u8; 3]); 29] = [
    ("Black", [25, 25, 28]),
    ("White", [245, 245, 245]),
    ("Off White", [232, 228, 215]),
    ("Cream", [240, 228, 195]),
    ("Grey", [128, 128, 130]),
    ("Charcoal", [62, 64, 68]),
    ("Silver", [192, 192, 196]),
    ("Blue", [45, 90, 175]),
    ("Navy Blue", [30, 40, 80]),
    ("Teal", [20, 120, 125]),
    ("Turquoise Blue", [60, 190, 200]),
    ("Lavender", [180, 160, 215]),
    ("Purple", [105, 50, 130]),
    ("Magenta", [200, 40, 140]),
    ("Pink", [235, 145, 175]),
    ("Peach", [245, 185, 150]),
    ("Red", [195, 30, 40]),
    ("Maroon", [110, 25, 40]),
    ("Burgundy", [125, 30, 55]),
    ("Rust", [170, 75, 35]),
    ("Orange", [240, 130, 40]),
    ("Mustard", [210, 165, 40]),
    ("Yellow", [245, 215, 55]),
    ("Beige", [215, 195, 160]),
    ("Khaki", [175, 160, 110]),
    ("Tan", [190, 145, 95]),
    ("Brown", [110, 70, 40]),
    ("Olive", [105, 105, 45]),
    ("Green", [40, 130, 65]),
];

/// The palette's name nearest to `rgb` (sRGB) in CIELAB.
pub fn name_of(rgb: [u8; 3]) -> &'static str {
    let lab = to_lab(rgb);
    PALETTE
        .iter()
        .map(|(name, reference)| (*name, distance(lab, to_lab(*reference))))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, _)| name)
        .expect("the palette is not empty")
}

/// The per-channel median of `pixels` (a garment's colour, robust to its shadows and seams);
/// `None` for no pixels.
pub fn median_colour(pixels: impl Iterator<Item = [u8; 3]>) -> Option<[u8; 3]> {
    let mut histograms = [[0u32; 256]; 3];
    let mut count = 0u32;
    for pixel in pixels {
        for (histogram, value) in histograms.iter_mut().zip(pixel) {
            histogram[value as usize] += 1;
        }
        count += 1;
    }
    (count > 0).then(|| {
        histograms.map(|histogram| {
            let mut seen = 0;
            histogram
                .iter()
                .position(|&n| {
                    seen += n;
                    2 * seen >= count
                })
                .unwrap_or(255) as u8
        })
    })
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// sRGB (D65) → CIELAB.
fn to_lab(rgb: [u8; 3]) -> [f32; 3] {
    let [r, g, b] = rgb.map(|v| {
        let c = v as f32 / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    });
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f32| {
        if t > 0.008856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_colour_is_named_by_its_own_name() {
        for (name, rgb) in PALETTE {
            assert_eq!(name_of(rgb), name);
        }
    }

    #[test]
    fn near_colours_take_the_nearest_name() {
        assert_eq!(name_of([0, 0, 0]), "Black");
        assert_eq!(name_of([255, 255, 255]), "White");
        assert_eq!(name_of([20, 35, 95]), "Navy Blue");
        assert_eq!(name_of([220, 20, 30]), "Red");
        assert_eq!(name_of([60, 140, 60]), "Green");
    }

    #[test]
    fn the_median_ignores_a_minority_of_outliers() {
        let pixels = [[10, 20, 30]; 5]
            .into_iter()
            .chain([[250, 250, 250]; 2])
            .chain([[12, 22, 28]; 2]);
        assert_eq!(median_colour(pixels), Some([10, 20, 30]));
        assert_eq!(median_colour(std::iter::empty()), None);
    }
}
