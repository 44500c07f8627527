//! Outfits: the garment parser finds each garment on the person in view; each garment is cut out
//! on white like the catalogue's shots, named by its colour, embedded and looked up among the
//! catalogue items of its categories. A frame without a person is looked up whole, as before.

pub mod evaluate;

use std::time::Instant;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::config::OutfitConfig;
use crate::query::{self, ms, FoundBy, Options, QueryResult, Recommendation};
use kiosk_table::catalogue::{Hit, Table};
use kiosk_vision::colour;
use kiosk_vision::foreground::four_neighbours;
use kiosk_vision::model::Session;
use kiosk_vision::palette;
use kiosk_vision::parser::{LabelMap, ParseSession, Parser, BODY_CLASSES};
use kiosk_vision::preprocess::Region;

/// Margin around a garment's box on its white square, as a share of the box (as for held-up
/// items).
const MARGIN: f32 = 0.06;

/// The parser with the settings that turn its classes into look-ups.
pub struct Outfits {
    pub parser: Parser,
    pub settings: OutfitConfig,
}

impl Outfits {
    /// Loads the parser `settings` names (or the bundled one) and checks that every configured
    /// garment is one of its classes.
    pub fn load(settings: &OutfitConfig) -> Result<Self> {
        let path = settings.parser_manifest();
        let parser = Parser::load(&path)?;
        let classes = &parser.manifest().classes;
        for class in settings.garments.keys() {
            anyhow::ensure!(
                classes[BODY_CLASSES.len()..].contains(class),
                "outfit.garments.{class}: the garment parser {} has no class {class:?} (it has {:?})",
                path.display(),
                &classes[BODY_CLASSES.len()..]
            );
        }
        Ok(Self {
            parser,
            settings: settings.clone(),
        })
    }

    /// Names each configured category that no item of `table` has (a likely typo), for a warning.
    pub fn unknown_categories(&self, table: &Table) -> Vec<String> {
        let Some(column) = table.column(&self.settings.category_column) else {
            return vec![format!(
                "column {:?} (outfit.category_column)",
                self.settings.category_column
            )];
        };
        let mut unknown = Vec::new();
        for (class, garment) in &self.settings.garments {
            for category in &garment.categories {
                if !table
                    .items()
                    .iter()
                    .any(|i| i.metadata(column) == Some(category.as_str()))
                {
                    unknown.push(format!("{category:?} (outfit.garments.{class})"));
                }
            }
        }
        unknown
    }
}

/// The parser with its settings and one thread's parsing session: what a scan needs to look up
/// outfits.
pub struct OutfitScanner {
    pub outfits: Outfits,
    pub parse: ParseSession,
}

impl OutfitScanner {
    /// Loads the parser `settings` names and opens a session.
    pub fn load(settings: &OutfitConfig) -> Result<Self> {
        let outfits = Outfits::load(settings)?;
        let parse = outfits.parser.session()?;
        Ok(Self { outfits, parse })
    }

    /// [`query_frame`] with this scanner's parser.
    pub fn query(
        &mut self,
        session: &mut Session,
        table: &Table,
        frame: &RgbImage,
        options: Options,
        top: usize,
    ) -> Result<QueryResult> {
        query_frame(
            &self.outfits,
            &mut self.parse,
            session,
            table,
            frame,
            options,
            top,
        )
    }
}

/// One garment found on the person, and what it was looked up as.
#[derive(Debug, Clone, Serialize)]
pub struct GarmentResult {
    /// The parser's class (`upper`, `footwear`, …) and its screen label.
    pub class: String,
    pub label: String,
    /// Where it is in the frame: `[x, y, width, height]`.
    pub bbox: [u32; 4],
    /// Its share of the parsed view.
    pub share: f32,
    /// It touches the edge of the view: part of it may be out of the frame.
    pub cut_by_edge: bool,
    /// Its colour (median of its pixels after colour correction) and the catalogue colour name
    /// nearest to it.
    pub rgb: [u8; 3],
    pub colour: &'static str,
    pub results: Vec<Recommendation>,
}

/// A garment: the pieces of one class that belong together in the label map.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub class: u8,
    /// Its pieces (connected regions of the class, see [`Person::pieces`]): the largest, and
    /// those at least [`PIECE_SHARE`] of its size (the other shoe), not stray specks.
    pub pieces: Vec<u32>,
    pub pixels: u32,
    /// Its pixels' share of the view.
    pub share: f32,
    /// Its box in the label map's coordinates: `(x, y, width, height)`.
    pub bbox: (u32, u32, u32, u32),
    pub cut_by_edge: bool,
}

/// Who the parser sees: the share of the view that is a person (skin, hair, garments), and each
/// garment class of at least `min_share` of the view, top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub share: f32,
    pub skin_and_hair: f32,
    pub garments: Vec<Found>,
    /// Per pixel of the label map, the connected piece of a wanted class it is in (`NO_PIECE`
    /// for the others).
    pub pieces: Vec<u32>,
}

/// The piece of pixels of no wanted class.
pub const NO_PIECE: u32 = u32::MAX;
/// A piece of a garment class joins its largest piece when at least this share of its size.
pub const PIECE_SHARE: f32 = 0.3;

impl Person {
    /// Whether this looks like a person rather than a held-up item or an empty store.
    pub fn in_view(&self, settings: &OutfitConfig) -> bool {
        self.share >= settings.person_share && self.skin_and_hair >= settings.person_share / 10.0
    }
}

/// One connected region of a class.
struct Piece {
    class: u8,
    pixels: u32,
    bbox: [u32; 4],
}

/// Reads the person and the garments of the classes `wanted` (by class index) off `map`: at
/// most `max_garments`, the largest, each at least `min_share` of the view.
pub fn find_person(map: &LabelMap, wanted: &[bool], min_share: f32, max_garments: usize) -> Person {
    let (width, height) = (map.width as usize, map.height as usize);
    let total = (width * height).max(1) as f32;
    let mut counts = vec![0u32; wanted.len()];
    for &class in &map.labels {
        if let Some(count) = counts.get_mut(class as usize) {
            *count += 1;
        }
    }
    // Connected pieces (4-neighbours) of each wanted class.
    let mut pieces_map = vec![NO_PIECE; map.labels.len()];
    let mut pieces: Vec<Piece> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..map.labels.len() {
        let class = map.labels[start];
        if pieces_map[start] != NO_PIECE || !wanted.get(class as usize).copied().unwrap_or(false) {
            continue;
        }
        let id = pieces.len() as u32;
        let mut piece = Piece {
            class,
            pixels: 0,
            bbox: [u32::MAX, u32::MAX, 0, 0],
        };
        pieces_map[start] = id;
        stack.push(start);
        while let Some(at) = stack.pop() {
            let (x, y) = (at % width, at / width);
            piece.pixels += 1;
            let b = &mut piece.bbox;
            *b = [
                b[0].min(x as u32),
                b[1].min(y as u32),
                b[2].max(x as u32 + 1),
                b[3].max(y as u32 + 1),
            ];
            for next in four_neighbours(at, width, height).into_iter().flatten() {
                if pieces_map[next] == NO_PIECE && map.labels[next] == class {
                    pieces_map[next] = id;
                    stack.push(next);
                }
            }
        }
        pieces.push(piece);
    }
    let mut garments: Vec<Found> = (BODY_CLASSES.len()..wanted.len())
        .filter(|&c| wanted[c])
        .filter_map(|c| {
            let of_class = || {
                pieces
                    .iter()
                    .enumerate()
                    .filter(move |(_, p)| p.class as usize == c)
            };
            let largest = of_class().map(|(_, p)| p.pixels).max()?;
            let kept: Vec<(usize, &Piece)> = of_class()
                .filter(|(_, p)| p.pixels as f32 >= PIECE_SHARE * largest as f32)
                .collect();
            let pixels: u32 = kept.iter().map(|(_, p)| p.pixels).sum();
            let b = kept.iter().fold([u32::MAX, u32::MAX, 0, 0], |b, (_, p)| {
                [
                    b[0].min(p.bbox[0]),
                    b[1].min(p.bbox[1]),
                    b[2].max(p.bbox[2]),
                    b[3].max(p.bbox[3]),
                ]
            });
            (pixels as f32 >= min_share * total).then(|| Found {
                class: c as u8,
                pieces: kept.iter().map(|(id, _)| *id as u32).collect(),
                pixels,
                share: pixels as f32 / total,
                bbox: (b[0], b[1], b[2] - b[0], b[3] - b[1]),
                cut_by_edge: b[0] == 0 || b[1] == 0 || b[2] == map.width || b[3] == map.height,
            })
        })
        .collect();
    garments.sort_by_key(|g| std::cmp::Reverse(g.pixels));
    garments.truncate(max_garments);
    garments.sort_by_key(|g| g.bbox.1 + g.bbox.3 / 2);
    Person {
        share: counts[1..].iter().sum::<u32>() as f32 / total,
        skin_and_hair: (counts[1] + counts.get(2).copied().unwrap_or(0)) as f32 / total,
        garments,
        pieces: pieces_map,
    }
}

/// The garment's pixels of `frame` on a white square (its box and a margin; every other pixel
/// white), and its median colour.
pub fn cut_out(
    frame: &RgbImage,
    map: &LabelMap,
    person: &Person,
    garment: &Found,
) -> (RgbImage, [u8; 3]) {
    let (bx, by, bw, bh) = garment.bbox;
    let margin_x = (bw as f32 * MARGIN) as u32;
    let margin_y = (bh as f32 * MARGIN) as u32;
    let (cw, ch) = (bw + 2 * margin_x, bh + 2 * margin_y);
    let side = cw.max(ch);
    let (ox, oy) = ((side - bw) / 2, (side - bh) / 2);
    let mut square = RgbImage::from_pixel(side, side, Rgb([255, 255, 255]));
    let (fx, fy) = map.origin;
    let mut pixels = Vec::with_capacity(garment.pixels as usize);
    for y in by..by + bh {
        for x in bx..bx + bw {
            let piece = person.pieces[(y * map.width + x) as usize];
            if piece != NO_PIECE && garment.pieces.contains(&piece) {
                let pixel = *frame.get_pixel(fx + x, fy + y);
                square.put_pixel(ox + x - bx, oy + y - by, pixel);
                pixels.push(pixel.0);
            }
        }
    }
    let rgb = palette::median_colour(pixels.into_iter()).unwrap_or([255; 3]);
    (square, rgb)
}

/// Looks up `frame` as a kiosk scan does with outfits on: parsed into garments when a person is
/// in view (each garment looked up among its categories), else whole as [`query::query_image`]
/// does; a person without any garment found falls back to the whole frame with a note.
pub fn query_frame(
    outfits: &Outfits,
    parse: &mut ParseSession,
    session: &mut Session,
    table: &Table,
    frame: &RgbImage,
    options: Options,
    top: usize,
) -> Result<QueryResult> {
    let start = Instant::now();
    let map = parse_frame(parse, frame)?;
    let classes = &outfits.parser.manifest().classes;
    query_parsed(
        &outfits.settings,
        &map,
        classes,
        session,
        table,
        frame,
        options,
        top,
        start,
    )
}

/// The class of every pixel of `frame`'s view: parsed whole, then, where the person fills less
/// than [`SECOND_PASS_BELOW`] of the view, parsed again around the person (a closer look, as the
/// parser was trained on both) and pasted over the first pass.
pub fn parse_frame(parse: &mut ParseSession, frame: &RgbImage) -> Result<LabelMap> {
    let first = parse.parse(frame, Region::Whole)?.label_map();
    let (vx, vy) = first.origin;
    let aspect = first.width as f64 / first.height as f64;
    match person_region(&first, aspect) {
        Some([x, y, width, height])
            if ((width * height) as f64)
                < SECOND_PASS_BELOW * (first.width * first.height) as f64 =>
        {
            let region = Region::Rect {
                x: vx + x,
                y: vy + y,
                width,
                height,
            };
            let second = parse.parse(frame, region)?.label_map();
            let mut map = first;
            map.paste(&second);
            Ok(map)
        }
        _ => Ok(first),
    }
}

/// A person's region smaller than this share of the view is parsed again on its own.
pub const SECOND_PASS_BELOW: f64 = 0.5;
/// The second pass's region around the person grows by this share of their height each way.
const PERSON_MARGIN: f64 = 0.05;

/// The region (x, y, width, height in `map`'s coordinates) around the person in `map`: the box of
/// every pixel not background, 1% trimmed off each side, grown by [`PERSON_MARGIN`] of its
/// height each way and to `aspect` (width ÷ height), clamped to the map. `None` without a person
/// pixel. (`models/garment_parser.py` crops its training regions the same way.)
pub fn person_region(map: &LabelMap, aspect: f64) -> Option<[u32; 4]> {
    let (width, height) = (map.width as usize, map.height as usize);
    let mut columns = vec![0u32; width];
    let mut rows = vec![0u32; height];
    let mut count = 0u32;
    for (y, row) in map.labels.chunks_exact(width).enumerate() {
        for (x, &class) in row.iter().enumerate() {
            if class != 0 {
                columns[x] += 1;
                rows[y] += 1;
                count += 1;
            }
        }
    }
    if count == 0 {
        return None;
    }
    let trim = if count > 100 { count / 100 } else { 0 };
    let (x0, x1) = span(&columns, trim);
    let (y0, y1) = span(&rows, trim);
    let pad = PERSON_MARGIN * (y1 - y0) as f64;
    let (mut x0, mut x1) = (x0 as f64 - pad, x1 as f64 + pad);
    let (mut y0, mut y1) = (y0 as f64 - pad, y1 as f64 + pad);
    let (w, h) = (x1 - x0, y1 - y0);
    if w / h < aspect {
        let grow = (h * aspect - w) / 2.0;
        (x0, x1) = (x0 - grow, x1 + grow);
    } else {
        let grow = (w / aspect - h) / 2.0;
        (y0, y1) = (y0 - grow, y1 + grow);
    }
    let (x0, y0) = (x0.floor().max(0.0) as u32, y0.floor().max(0.0) as u32);
    let (x1, y1) = (
        x1.ceil().min(width as f64) as u32,
        y1.ceil().min(height as f64) as u32,
    );
    Some([x0, y0, x1 - x0, y1 - y0])
}

/// The span `[first, end)` of a histogram with `trim` of its counts cut off each side.
fn span(histogram: &[u32], trim: u32) -> (usize, usize) {
    let mut seen = 0;
    let first = histogram
        .iter()
        .position(|&n| {
            seen += n;
            seen > trim
        })
        .unwrap_or(0);
    seen = 0;
    let last = histogram
        .iter()
        .rposition(|&n| {
            seen += n;
            seen > trim
        })
        .unwrap_or(histogram.len() - 1);
    (first, (last + 1).max(first + 1))
}

/// [`query_frame`] with the frame already parsed into `map` (at `start`), whose labels index
/// `classes`, under `settings`.
#[allow(clippy::too_many_arguments)]
pub fn query_parsed(
    settings: &OutfitConfig,
    map: &LabelMap,
    classes: &[String],
    session: &mut Session,
    table: &Table,
    frame: &RgbImage,
    options: Options,
    top: usize,
    start: Instant,
) -> Result<QueryResult> {
    let wanted: Vec<bool> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| i >= BODY_CLASSES.len() && settings.garments.contains_key(c))
        .collect();
    let person = find_person(map, &wanted, settings.min_share, settings.max_garments);
    let parsed = ms(start, Instant::now());
    if !person.in_view(settings) || person.garments.is_empty() {
        let mut result = query::query_image(session, table, frame, options, top)?;
        if person.in_view(settings) {
            result.note = Some(format!(
                "a person in view ({:.0}% of it) but no garment of at least {:.1}% of it: looked up whole",
                100.0 * person.share,
                100.0 * settings.min_share
            ));
        }
        result.latency_ms.parse = parsed;
        result.latency_ms.total = ms(start, Instant::now());
        return Ok(result);
    }
    let category = category_column(table, settings)?;
    let colour_column = table.column(&settings.colour_column);
    let applied = options.colour.gains_for(frame, [1.0; 3]);
    let mut latency = query::Latency {
        parse: parsed,
        ..query::Latency::default()
    };
    let mut garments = Vec::new();
    for found in &person.garments {
        let class = &classes[found.class as usize];
        let garment = &settings.garments[class];
        let (image, rgb) = corrected_cut_out(frame, map, &person, found, &applied);
        let colour = palette::name_of(rgb);
        let (vector, times) = query::embed(session, table.dim(), &image, Region::Whole, options)?;
        latency.preprocess += times.preprocess;
        latency.embed += times.embed;
        let searched = Instant::now();
        let among = Categories {
            column: category,
            names: &garment.categories,
        };
        let colour_first = (colour_column.filter(|_| settings.colour_first)).map(|c| (c, colour));
        let wanted = settings.candidates.max(top);
        let hits = search_garment(table, &vector, among, colour_first, wanted, top)?;
        latency.search += ms(searched, Instant::now());
        let (x, y) = map.origin;
        let (bx, by, bw, bh) = found.bbox;
        garments.push(GarmentResult {
            class: class.clone(),
            label: garment.label.clone(),
            bbox: [x + bx, y + by, bw, bh],
            share: found.share,
            cut_by_edge: found.cut_by_edge,
            rgb,
            colour,
            results: query::recommendations(table, &hits),
        });
    }
    latency.total = ms(start, Instant::now());
    Ok(QueryResult {
        region: FoundBy::Outfit,
        colour: applied,
        results: Vec::new(),
        garments,
        note: None,
        latency_ms: latency,
        vector: Vec::new(),
    })
}

/// The catalogue column a garment's categories are in (`outfit.category_column`).
fn category_column(table: &Table, settings: &OutfitConfig) -> Result<usize> {
    table.column(&settings.category_column).with_context(|| {
        format!(
            "table {} has no column {:?} (outfit.category_column)",
            table.path().display(),
            settings.category_column
        )
    })
}

/// The garment cut out on white and its median colour, both corrected as `applied` says.
fn corrected_cut_out(
    frame: &RgbImage,
    map: &LabelMap,
    person: &Person,
    found: &Found,
    applied: &colour::Applied,
) -> (RgbImage, [u8; 3]) {
    let (mut image, mut rgb) = cut_out(frame, map, person, found);
    if applied.source != colour::Source::None {
        colour::correct(&mut image, applied.gains);
        // Per-channel gains keep each channel's order: the median moves with them.
        rgb = colour::gained(rgb, applied.gains);
    }
    (image, rgb)
}

/// A metadata column and the values of it a garment's items may have.
#[derive(Clone, Copy)]
struct Categories<'a> {
    column: usize,
    names: &'a [String],
}

/// The `wanted` nearest items to `vector` among `among`, the first `top` kept; with
/// `colour_first` (a column and the garment's colour name), items of that colour first, each group
/// in visual order.
fn search_garment(
    table: &Table,
    vector: &[f32],
    among: Categories,
    colour_first: Option<(usize, &str)>,
    wanted: usize,
    top: usize,
) -> Result<Vec<Hit>> {
    let items = table.items();
    let mut hits = table.nearest_where(vector, wanted, |i| {
        let value = items.get(i).metadata(among.column).unwrap_or_default();
        among.names.iter().any(|c| c == value)
    })?;
    if let Some((column, colour)) = colour_first {
        hits.sort_by_key(|h| items.get(h.index).metadata(column) != Some(colour));
    }
    hits.truncate(top);
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A label map `width` × `height` filled with `fill`, then each `(class, x0, y0, x1, y1)`.
    fn map(width: u32, height: u32, fill: u8, boxes: &[(u8, u32, u32, u32, u32)]) -> LabelMap {
        let mut labels = vec![fill; (width * height) as usize];
        for &(class, x0, y0, x1, y1) in boxes {
            for y in y0..y1 {
                for x in x0..x1 {
                    labels[(y * width + x) as usize] = class;
                }
            }
        }
        LabelMap {
            width,
            height,
            labels,
            origin: (5, 7),
        }
    }

    const ALL: [bool; 6] = [false, false, false, true, true, true];

    #[test]
    fn a_person_is_skin_hair_and_garments_and_each_garment_has_its_box() {
        // Background 0, skin 1, hair 2; garments 3 (top) and 4 (trousers) on a 100 × 200 view.
        let m = map(
            100,
            200,
            0,
            &[
                (2, 40, 0, 60, 20),
                (1, 40, 20, 60, 40),
                (3, 30, 40, 70, 100),
                (4, 35, 100, 65, 180),
            ],
        );
        let person = find_person(&m, &ALL, 0.01, 4);
        assert!((person.share - (400.0 + 400.0 + 2400.0 + 2400.0) / 20000.0).abs() < 1e-6);
        assert!((person.skin_and_hair - 0.04).abs() < 1e-6);
        let boxes: Vec<_> = person.garments.iter().map(|g| (g.class, g.bbox)).collect();
        assert_eq!(boxes, [(3, (30, 40, 40, 60)), (4, (35, 100, 30, 80))]);
        assert!(person.garments.iter().all(|g| !g.cut_by_edge));
        let settings = OutfitConfig::default();
        assert!(person.in_view(&settings));
    }

    #[test]
    fn the_second_pass_looks_at_the_person_grown_to_the_parsers_shape() {
        let m = map(100, 150, 0, &[(1, 40, 50, 60, 100)]);
        // Box 40..60 × 50..100, grown by 2.5 px (5% of 50) each way, then to 2:3 about its centre.
        assert_eq!(person_region(&m, 2.0 / 3.0), Some([31, 47, 38, 56]));
        // Against the edge: clamped.
        let edge = map(100, 150, 0, &[(1, 0, 0, 20, 150)]);
        assert_eq!(person_region(&edge, 2.0 / 3.0), Some([0, 0, 65, 150]));
        assert_eq!(person_region(&map(10, 10, 0, &[]), 1.0), None);
    }

    #[test]
    fn a_second_pass_is_pasted_where_it_looked() {
        let mut first = map(10, 10, 0, &[]);
        first.origin = (5, 5);
        let mut second = map(4, 3, 3, &[]);
        second.origin = (7, 9);
        first.paste(&second);
        let lit: Vec<(u32, u32)> = (0..10)
            .flat_map(|y| (0..10).map(move |x| (x, y)))
            .filter(|&(x, y)| first.at(x, y) == 3)
            .collect();
        assert_eq!(lit.len(), 12);
        assert!(lit
            .iter()
            .all(|&(x, y)| (2..6).contains(&x) && (4..7).contains(&y)));
    }

    #[test]
    fn two_shoes_make_one_garment_and_only_the_largest_garments_are_kept() {
        // Two shoes (class 5) of 100 and 80 pixels, a speck of 10 far away; a top (3) of 400
        // and trousers (4) of 200.
        let m = map(
            100,
            100,
            0,
            &[
                (5, 10, 90, 20, 100),
                (5, 30, 92, 40, 100),
                (5, 90, 0, 92, 5),
                (3, 10, 10, 30, 30),
                (4, 50, 50, 70, 60),
            ],
        );
        let person = find_person(&m, &ALL, 0.001, 3);
        let shoes = person.garments.iter().find(|g| g.class == 5).unwrap();
        assert_eq!((shoes.pixels, shoes.bbox), (180, (10, 90, 30, 10)));
        // Top to bottom.
        let order: Vec<u8> = person.garments.iter().map(|g| g.class).collect();
        assert_eq!(order, [3, 4, 5]);
        // Two at most: the shoes (180) are smaller than the trousers (200).
        let two = find_person(&m, &ALL, 0.001, 2);
        assert_eq!(
            two.garments.iter().map(|g| g.class).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn small_garments_are_left_out_and_stray_pixels_do_not_stretch_a_box() {
        let m = map(
            100,
            100,
            0,
            &[
                (3, 20, 20, 80, 80),
                // Ten stray top pixels far below: under 1% of the top's 3,600.
                (3, 0, 99, 10, 100),
                // A 2 × 2 scrap of class 5: 0.04% of the view.
                (5, 90, 0, 92, 2),
            ],
        );
        let person = find_person(&m, &ALL, 0.001, 4);
        assert_eq!(person.garments.len(), 1);
        assert_eq!(person.garments[0].bbox, (20, 20, 60, 60));
        assert!(!person.garments[0].cut_by_edge);
    }

    #[test]
    fn a_garment_at_the_edge_is_marked_cut_and_a_held_up_shirt_is_no_person() {
        // Shoes at the bottom edge.
        let m = map(100, 100, 0, &[(1, 40, 0, 60, 10), (5, 30, 90, 70, 100)]);
        let person = find_person(&m, &ALL, 0.01, 4);
        assert!(person.garments[0].cut_by_edge);
        // A shirt filling the middle of the view, no skin or hair: not a person.
        let shirt = find_person(&map(100, 100, 0, &[(3, 20, 20, 80, 80)]), &ALL, 0.01, 4);
        assert!(!shirt.in_view(&OutfitConfig::default()));
        // Only unwanted classes: no garments.
        let none = find_person(&m, &[false; 6], 0.01, 4);
        assert!(none.garments.is_empty());
    }

    #[test]
    fn a_cut_out_keeps_only_the_garments_pixels_centred_on_white() {
        let m = map(20, 20, 0, &[(3, 5, 2, 15, 18), (1, 8, 8, 12, 12)]);
        let frame = RgbImage::from_fn(30, 30, |x, y| {
            if (10..20).contains(&x) && (9..25).contains(&y) {
                Rgb([200, 10, 10])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let person = find_person(&m, &ALL, 0.01, 4);
        let top = &person.garments[0];
        assert_eq!(top.bbox, (5, 2, 10, 16));
        let (square, rgb) = cut_out(&frame, &m, &person, top);
        // 16 tall + 2 × 6% margin (0 px when under one) → a 16 × 16 square, box centred.
        assert_eq!(square.dimensions(), (16, 16));
        assert_eq!(rgb, [200, 10, 10]);
        // The skin patch inside the box (map 8..12 → square 6..10 each way) is white.
        assert_eq!(square.get_pixel(8, 8).0, [255; 3]);
        // A top pixel: map (5, 2) → frame (10, 9) → square (3, 0).
        assert_eq!(square.get_pixel(3, 0).0, [200, 10, 10]);
        // Left of the box: white.
        assert_eq!(square.get_pixel(0, 5).0, [255; 3]);
    }
}
