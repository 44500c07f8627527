//! The catalogue embedding table: a versioned binary file of item ids, metadata and L2-normalised
//! vectors, written atomically, read into memory and validated on load, searched exactly for the
//! top k (an i8 table through its [`prefilter`](crate::prefilter) first stage, with the same
//! results as scoring every row) or, in a large table built with [`cells`](crate::cells),
//! approximately.
//!
//! A loaded table owns its bytes: overwriting or truncating the file afterwards (an installer's `cp`
//! onto the live path) cannot change or break the table in memory. The vectors are read in place
//! from that buffer, with no copy per search. The exception is a table with cells: its full rows
//! stay on disk and are read as searches need them, each checked against its checksum, so a file
//! changed under it gives an error naming it, never a wrong answer.
//!
//! # File format, version 1 (all integers little-endian)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `FKTABLE\0` |
//! | 8 | 4 | format version (3; versions 1 and 2 are read too) |
//! | 12 | 4 | element type: 1 = f16, 2 = i8 with one f32 scale per vector, 3 = f32 |
//! | 16 | 4 | dim |
//! | 20 | 4 | count |
//! | 24 | 32 | model fingerprint: SHA-256 of the model file that made the vectors |
//! | 56 | 8 | records offset |
//! | 64 | 8 | records length |
//! | 72 | 8 | vectors offset (a multiple of 64) |
//! | 80 | 8 | vectors length |
//! | 88 | 4 | CRC-32 of every byte from the records offset to the end of the file (version 3, i8: to the rows) |
//! | 92 | 4 | CRC-32 of bytes 0..92 |
//! | 96 | 4 | cells (version 3, i8; 0: none) |
//! | 100 | 28 | reserved, zero |
//!
//! Records (UTF-8 JSON): `{"columns":[names],"items":[{"id","source","digest","metadata":[values]}]}`
//! where `source` is the image file the vector came from and `digest` the SHA-256 of its bytes
//! (used to re-embed only new or changed images).
//!
//! Vectors: for f16 and f32, `count × dim` values, row-major. For i8, `count` f32 scales, zero
//! padding to a multiple of 64 bytes, then `count × dim` signed bytes; value = byte × scale. From
//! version 2, an i8 section goes on with the first stage of its search, each part starting at a
//! multiple of 64 bytes: `d × dim` f32 directions (`d` = dim / 8, 1 to 256), `count × 4` f32 row
//! terms (code scale, code error, remainder norm, decoded norm), `count × d` i8 codes.
//!
//! Version 3 moves an i8 section's rows to its end, after the first stage, and adds before them
//! (each part at a multiple of 64 bytes) `count` u32 CRC-32s, one per row, then with `c` cells
//! `c × d` f32 centroids, `c + 1` u32 offsets, `count` u32 members, `count` f32 code scales and
//! `count × s` i8 leading codes (`s` = min(d, 64)), the last two in member order (see [`Cells`]).
//! The data checksum covers everything before the rows; each row is covered by its own checksum.

use std::borrow::Cow;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use crate::cells::{self, Cells};
use crate::items::{ItemRef, Items};
use crate::prefilter::{self, Prefilter, SearchCounts};
use kiosk_util::digest::Fingerprint;
use kiosk_util::files::write_atomically;

const MAGIC: &[u8; 8] = b"FKTABLE\0";
/// The table format version this build writes (it reads this one and versions 1 and 2).
pub const FORMAT_VERSION: u32 = 3;
const HEADER_LEN: usize = 128;
const ALIGN: usize = 64;
// Vectors are read in place as native f16 / f32 values.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "tables are little-endian and read in place"
);

/// How vectors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Element {
    /// Half precision: 2 bytes a value.
    F16,
    /// Signed bytes with one f32 scale per vector: 1 byte a value.
    I8,
    /// Single precision: 4 bytes a value (reference tables for measuring the others).
    F32,
}

impl Element {
    fn code(self) -> u32 {
        match self {
            Element::F16 => 1,
            Element::I8 => 2,
            Element::F32 => 3,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Element::F16),
            2 => Some(Element::I8),
            3 => Some(Element::F32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Element::F16 => "f16",
            Element::I8 => "i8",
            Element::F32 => "f32",
        }
    }
}

/// One catalogue item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    /// The image file (relative to the catalogue folder) the vector was made from.
    pub source: String,
    /// SHA-256 (hex) of that file's bytes when it was embedded.
    pub digest: String,
    /// One value per table column.
    pub metadata: Vec<String>,
}

#[derive(Serialize)]
struct Records<'a> {
    columns: &'a [String],
    items: &'a [Item],
}

/// [`Records`] as a table is loaded: the items packed as they are read.
#[derive(Deserialize)]
struct LoadedRecords {
    columns: Vec<String>,
    items: Items,
}

/// Vectors in an i8 table's form: per row an f32 scale and `dim` codes, value = code × scale.
#[derive(Debug, Default)]
pub struct I8Rows {
    dim: usize,
    scales: Vec<f32>,
    codes: Vec<i8>,
}

impl I8Rows {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            ..Self::default()
        }
    }

    /// `vectors` (rows of `dim` values) in i8 form.
    pub fn quantize(vectors: &[f32], dim: usize) -> Self {
        let mut rows = Self::new(dim);
        rows.scales.reserve(vectors.len() / dim.max(1));
        rows.codes.reserve(vectors.len());
        for row in vectors.chunks_exact(dim) {
            rows.push_vector(row);
        }
        rows
    }

    /// Appends `vector` (`dim` values), quantised: the scale maps its largest magnitude to 127.
    pub fn push_vector(&mut self, vector: &[f32]) {
        let max = vector.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        self.scales.push(scale);
        self.codes.extend(
            vector
                .iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
        );
    }

    /// Appends a row already in i8 form.
    pub fn push_row(&mut self, scale: f32, codes: &[i8]) {
        self.scales.push(scale);
        self.codes.extend_from_slice(codes);
    }

    /// Row `index`'s scale and codes.
    pub fn row(&self, index: usize) -> (f32, &[i8]) {
        (
            self.scales[index],
            &self.codes[index * self.dim..(index + 1) * self.dim],
        )
    }

    pub fn len(&self) -> usize {
        self.scales.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }
}

/// How a builder holds its vectors: as given, or already in i8 form (a quarter of the memory).
enum Stored {
    F32(Vec<f32>),
    I8(I8Rows),
}

/// A table being built in memory: items plus their (already L2-normalised) vectors.
pub struct TableBuilder {
    pub fingerprint: Fingerprint,
    pub dim: usize,
    pub columns: Vec<String>,
    items: Vec<Item>,
    vectors: Stored,
    approximate_from: usize,
}

impl TableBuilder {
    pub fn new(fingerprint: Fingerprint, dim: usize, columns: Vec<String>) -> Self {
        Self {
            fingerprint,
            dim,
            columns,
            items: Vec::new(),
            vectors: Stored::F32(Vec::new()),
            approximate_from: cells::DEFAULT_FROM,
        }
    }

    /// A builder that quantises each vector as it is pushed and can write only an i8 table: the
    /// same table as [`TableBuilder::new`]'s, in a quarter of the memory.
    pub fn new_i8(fingerprint: Fingerprint, dim: usize, columns: Vec<String>) -> Self {
        Self {
            vectors: Stored::I8(I8Rows::new(dim)),
            ..Self::new(fingerprint, dim, columns)
        }
    }

    /// An i8 table of at least `items` items gets cells and is searched approximately (default
    /// [`cells::DEFAULT_FROM`]); smaller ones are searched exactly.
    pub fn approximate_from(&mut self, items: usize) {
        self.approximate_from = items;
    }

    pub fn push(&mut self, item: Item, vector: &[f32]) -> Result<()> {
        ensure!(
            vector.len() == self.dim,
            "vector for item {} has {} values, the table holds {}",
            item.id,
            vector.len(),
            self.dim
        );
        self.check_metadata(&item)?;
        self.items.push(item);
        match &mut self.vectors {
            Stored::F32(vectors) => vectors.extend_from_slice(vector),
            Stored::I8(rows) => rows.push_vector(vector),
        }
        Ok(())
    }

    /// Adds an item whose vector is already in i8 form (row `index` of `rows`), to a builder made
    /// by [`TableBuilder::new_i8`].
    pub fn push_i8(&mut self, item: Item, rows: &I8Rows, index: usize) -> Result<()> {
        ensure!(
            rows.dim == self.dim,
            "vector for item {} has {} values, the table holds {}",
            item.id,
            rows.dim,
            self.dim
        );
        self.check_metadata(&item)?;
        let Stored::I8(stored) = &mut self.vectors else {
            bail!("a builder of f32 vectors was given an i8 row");
        };
        let (scale, codes) = rows.row(index);
        stored.push_row(scale, codes);
        self.items.push(item);
        Ok(())
    }

    fn check_metadata(&self, item: &Item) -> Result<()> {
        ensure!(
            item.metadata.len() == self.columns.len(),
            "item {} has {} metadata values for {} columns",
            item.id,
            item.metadata.len(),
            self.columns.len()
        );
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Encodes the table in `element` form and writes it atomically: a temporary file in the same
    /// folder, fsync, rename over `path`, fsync of the folder. A failure leaves `path` untouched.
    pub fn write(&self, path: &Path, element: Element) -> Result<()> {
        ensure!(
            element != Element::I8 || self.dim <= prefilter::MAX_DIM,
            "cannot store {}-d vectors as i8: at most {}",
            self.dim,
            prefilter::MAX_DIM
        );
        let bytes = self
            .encode(element)
            .with_context(|| format!("cannot encode table {}", path.display()))?;
        write_atomically(path, &bytes)
    }

    fn encode(&self, element: Element) -> Result<Vec<u8>> {
        let count = self.items.len();
        let records = serde_json::to_vec(&Records {
            columns: &self.columns,
            items: &self.items,
        })?;
        let cells = if element == Element::I8 && count >= self.approximate_from.max(1) {
            cells::cells_for(count)
        } else {
            0
        };
        let (vectors, checked) = match (&self.vectors, element) {
            (Stored::I8(rows), Element::I8) => encode_i8(rows, cells),
            (Stored::I8(_), _) => bail!(
                "this builder holds i8 vectors and cannot write {} ones",
                element.name()
            ),
            (Stored::F32(vectors), _) => encode_vectors(vectors, self.dim, element, cells),
        };
        let records_offset = HEADER_LEN;
        let vectors_offset = align(records_offset + records.len());
        let mut out = vec![0u8; vectors_offset];
        out[records_offset..records_offset + records.len()].copy_from_slice(&records);
        out.extend_from_slice(&vectors);

        let header = &mut out[..HEADER_LEN];
        header[0..8].copy_from_slice(MAGIC);
        put_u32(header, 8, FORMAT_VERSION);
        put_u32(header, 12, element.code());
        put_u32(header, 16, u32::try_from(self.dim)?);
        put_u32(header, 20, u32::try_from(count)?);
        header[24..56].copy_from_slice(&self.fingerprint.0);
        put_u64(header, 56, records_offset as u64);
        put_u64(header, 64, records.len() as u64);
        put_u64(header, 72, vectors_offset as u64);
        put_u64(header, 80, vectors.len() as u64);
        put_u32(header, 96, u32::try_from(cells)?);
        let body_crc = crc32fast::hash(&out[records_offset..vectors_offset + checked]);
        put_u32(&mut out, 88, body_crc);
        let header_crc = crc32fast::hash(&out[..92]);
        put_u32(&mut out, 92, header_crc);
        Ok(out)
    }
}

/// The vector section of `vectors` in `element` form, and how many of its bytes the data checksum
/// covers (all but an i8 section's rows). An i8 section gets `cells` cells if that is not 0.
fn encode_vectors(vectors: &[f32], dim: usize, element: Element, cells: usize) -> (Vec<u8>, usize) {
    let bytes: Vec<u8> = match element {
        Element::F32 => vectors.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Element::F16 => vectors
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Element::I8 => return encode_i8(&I8Rows::quantize(vectors, dim), cells),
    };
    let len = bytes.len();
    (bytes, len)
}

fn encode_i8(rows: &I8Rows, cells: usize) -> (Vec<u8>, usize) {
    let (dim, count, scales, codes) = (rows.dim, rows.len(), &rows.scales, &rows.codes);
    let layout = I8Layout::of(count, dim, FORMAT_VERSION, cells).expect("the table fits in memory");
    let first_stage = prefilter::build(count, dim, |index, out| {
        let row = &codes[index * dim..(index + 1) * dim];
        for (o, c) in out.iter_mut().zip(row) {
            *o = f32::from(*c) * scales[index];
        }
    });
    let checksums: Vec<u32> = codes
        .chunks_exact(dim)
        .map(|row| crc32fast::hash(bytemuck::cast_slice(row)))
        .collect();
    // Each part as its bytes (this build is little-endian, as tables are) at its aligned offset.
    let mut out = Vec::with_capacity(layout.end);
    let mut put = |at: usize, bytes: &[u8]| {
        out.resize(at, 0);
        out.extend_from_slice(bytes);
    };
    put(0, bytemuck::cast_slice(scales));
    put(layout.basis, bytemuck::cast_slice(&first_stage.basis));
    put(layout.terms, bytemuck::cast_slice(&first_stage.terms));
    put(layout.codes, bytemuck::cast_slice(&first_stage.codes));
    put(layout.row_checksums, bytemuck::cast_slice(&checksums));
    if cells > 0 {
        let started = std::time::Instant::now();
        let built = cells::build(&first_stage.view(), cells);
        tracing::info!(
            "approximate search: {count} items in {} cells, built in {:.1} s",
            built.offsets.len() - 1,
            started.elapsed().as_secs_f64()
        );
        put(layout.centroids, bytemuck::cast_slice(&built.centroids));
        put(layout.offsets, bytemuck::cast_slice(&built.offsets));
        put(layout.members, bytemuck::cast_slice(&built.members));
        put(
            layout.short_scales,
            bytemuck::cast_slice(&built.short_scales),
        );
        put(layout.short_codes, bytemuck::cast_slice(&built.short_codes));
    }
    drop(first_stage);
    put(layout.rows, bytemuck::cast_slice(codes));
    debug_assert_eq!(out.len(), layout.end);
    (out, layout.rows)
}

/// Where the parts of an i8 vector section of `count` rows of `dim` values start, and its end.
/// Version 1 holds the scales and rows; version 2 adds the prefilter after the rows; version 3
/// puts the rows last, after the prefilter, the row checksums and the cells.
struct I8Layout {
    rows: usize,
    basis: usize,
    terms: usize,
    codes: usize,
    /// Versions 1 and 2 have no row checksums or cells: these all equal the prefilter's end.
    row_checksums: usize,
    centroids: usize,
    offsets: usize,
    members: usize,
    short_scales: usize,
    short_codes: usize,
    end: usize,
    cells: usize,
}

impl I8Layout {
    fn of(count: usize, dim: usize, version: u32, cells: usize) -> Option<Self> {
        let scales_end = count.checked_mul(4)?.checked_next_multiple_of(ALIGN)?;
        let row_bytes = count.checked_mul(dim)?;
        let dims = prefilter::dims_for(dim);
        let first_stage = |basis: usize| -> Option<(usize, usize, usize)> {
            let terms = basis
                .checked_add(dims.checked_mul(dim)?.checked_mul(4)?)?
                .checked_next_multiple_of(ALIGN)?;
            let codes = terms
                .checked_add(count.checked_mul(prefilter::ROW_TERMS * 4)?)?
                .checked_next_multiple_of(ALIGN)?;
            Some((terms, codes, codes.checked_add(count.checked_mul(dims)?)?))
        };
        if version < 3 {
            let rows_end = scales_end.checked_add(row_bytes)?;
            let (basis, terms, codes, end) = if version < 2 {
                (rows_end, rows_end, rows_end, rows_end)
            } else {
                let basis = rows_end.checked_next_multiple_of(ALIGN)?;
                let (terms, codes, end) = first_stage(basis)?;
                (basis, terms, codes, end)
            };
            return Some(Self {
                rows: scales_end,
                basis,
                terms,
                codes,
                row_checksums: end,
                centroids: end,
                offsets: end,
                members: end,
                short_scales: end,
                short_codes: end,
                end,
                cells: 0,
            });
        }
        let basis = scales_end;
        let (terms, codes, codes_end) = first_stage(basis)?;
        let after =
            |start: usize, len: usize| start.checked_add(len)?.checked_next_multiple_of(ALIGN);
        let row_checksums = codes_end.checked_next_multiple_of(ALIGN)?;
        let centroids = after(row_checksums, count.checked_mul(4)?)?;
        let offsets = after(centroids, cells.checked_mul(dims)?.checked_mul(4)?)?;
        let offsets_len = if cells > 0 {
            cells.checked_add(1)?.checked_mul(4)?
        } else {
            0
        };
        let members = after(offsets, offsets_len)?;
        let per_item = |bytes: usize| {
            if cells > 0 {
                count.checked_mul(bytes)
            } else {
                Some(0)
            }
        };
        let short_scales = after(members, per_item(4)?)?;
        let short_codes = after(short_scales, per_item(4)?)?;
        let rows = after(short_codes, per_item(cells::short_dims(dims))?)?;
        Some(Self {
            rows,
            basis,
            terms,
            codes,
            row_checksums,
            centroids,
            offsets,
            members,
            short_scales,
            short_codes,
            end: rows.checked_add(row_bytes)?,
            cells,
        })
    }
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Bytes of the vector section of `count` vectors of `dim` values, or `None` if that does not fit
/// in a `usize`.
fn vector_section_len(
    element: Element,
    count: usize,
    dim: usize,
    version: u32,
    cells: usize,
) -> Option<usize> {
    let values = count.checked_mul(dim)?;
    match element {
        Element::F16 => values.checked_mul(2),
        Element::F32 => values.checked_mul(4),
        Element::I8 => Some(I8Layout::of(count, dim, version, cells)?.end),
    }
}

/// A size read from a table's header as a `usize`, or an error naming the field if this machine
/// cannot address it (a 32-bit Pi).
fn size_field(value: u64, name: &str) -> Result<usize> {
    usize::try_from(value).with_context(|| format!("{name} {value} is too large for this machine"))
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Scales `vector` to unit L2 norm (a zero vector stays zero).
pub fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
}

/// A file's bytes held in `u64` words, so that every offset that is a multiple of 8 (the vectors
/// start at a multiple of 64) is aligned for `f32`, `f16` and `i8` views of them.
struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    /// Reads `file` to its end, or to `limit` bytes if it is longer. Its size on disk is only the
    /// first guess of how much to allocate.
    fn read(file: &mut File, limit: Option<usize>) -> Result<Self> {
        let size = usize::try_from(file.metadata()?.len())
            .context("file is too large for this machine's memory")?;
        let limit = limit.unwrap_or(usize::MAX);
        let mut buffer = Self {
            words: Vec::new(),
            len: 0,
        };
        // One word more than the size, so that reading the end needs no second allocation.
        buffer.grow(size.min(limit) / 8 + 1)?;
        while buffer.len < limit {
            if buffer.len == buffer.words.len() * 8 {
                buffer.grow(buffer.words.len() * 2)?;
            }
            let free = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buffer.words)[buffer.len..];
            let wanted = free.len().min(limit - buffer.len);
            match file.read(&mut free[..wanted]) {
                Ok(0) => break,
                Ok(n) => buffer.len += n,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(buffer)
    }

    /// Grows the buffer to `words` zeroed words, or fails if memory runs out.
    fn grow(&mut self, words: usize) -> Result<()> {
        self.words
            .try_reserve_exact(words - self.words.len())
            .context("file is too large for this machine's memory")?;
        self.words.resize(words, 0);
        Ok(())
    }

    fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

/// A loaded, validated table. It owns the file's bytes; the vectors are read in place from them,
/// except the rows of a table with cells, which are read from the file as needed.
pub struct Table {
    path: PathBuf,
    fingerprint: Fingerprint,
    element: Element,
    dim: usize,
    columns: Vec<String>,
    items: Items,
    /// The vector section (a table with cells: up to its rows).
    bytes: AlignedBytes,
    vectors_offset: usize,
    header_checksum: u32,
    /// The file's format version: an i8 table of version 2 or later has a prefilter.
    version: u32,
    /// Where an i8 section's parts are, relative to the vectors offset.
    layout: Option<I8Layout>,
    /// The open file of a table whose rows stay on disk (one with cells).
    rows_file: Option<File>,
}

/// A table file's header, checked against itself and the file's length.
struct Header {
    version: u32,
    element: Element,
    dim: usize,
    count: usize,
    cells: usize,
    fingerprint: Fingerprint,
    records_offset: usize,
    records_len: usize,
    vectors_offset: usize,
    /// The file's length: where the vector section ends.
    end: usize,
    /// The checksum of the records and the vector section (up to a version-3 i8 table's rows).
    body_crc: u32,
    /// The header's own checksum (the table's content id).
    checksum: u32,
}

impl Header {
    fn parse(head: &[u8], file_len: u64) -> Result<Self> {
        ensure!(
            head.len() >= HEADER_LEN,
            "file is {} bytes, shorter than the {HEADER_LEN}-byte header (truncated or not a table)",
            head.len()
        );
        ensure!(
            &head[0..8] == MAGIC,
            "not a fashion-kiosk table (bad magic)"
        );
        let version = get_u32(head, 8);
        ensure!(
            (1..=FORMAT_VERSION).contains(&version),
            "table format version {version}, this build reads versions 1 to {FORMAT_VERSION}: rebuild it with `fashion-kiosk index`"
        );
        let checksum = get_u32(head, 92);
        ensure!(
            crc32fast::hash(&head[..92]) == checksum,
            "header checksum mismatch (corrupt file)"
        );
        let element = Element::from_code(get_u32(head, 12))
            .with_context(|| format!("unknown element type {}", get_u32(head, 12)))?;
        let dim = size_field(get_u32(head, 16).into(), "dim")?;
        let count = size_field(get_u32(head, 20).into(), "count")?;
        let cells = if version >= 3 && element == Element::I8 {
            size_field(get_u32(head, 96).into(), "cells")?
        } else {
            0
        };
        ensure!(dim > 0, "dim is 0");
        ensure!(
            element != Element::I8 || version < 2 || dim <= prefilter::MAX_DIM,
            "dim {dim} is over the {} an i8 table can hold",
            prefilter::MAX_DIM
        );
        ensure!(count > 0, "the table holds no items");
        ensure!(cells <= count, "{cells} cells for {count} items");
        let fingerprint = Fingerprint(head[24..56].try_into().expect("32 bytes"));
        let records_offset = size_field(get_u64(head, 56), "records offset")?;
        let records_len = size_field(get_u64(head, 64), "records length")?;
        let vectors_offset = size_field(get_u64(head, 72), "vectors offset")?;
        let vectors_len = size_field(get_u64(head, 80), "vectors length")?;
        let misfit = || {
            format!(
                "section sizes do not fit {count} vectors of {dim} {} values",
                element.name()
            )
        };
        let records_end = records_offset
            .checked_add(records_len)
            .with_context(misfit)?;
        ensure!(
            records_offset == HEADER_LEN
                && records_end.checked_next_multiple_of(ALIGN) == Some(vectors_offset)
                && Some(vectors_len) == vector_section_len(element, count, dim, version, cells),
            misfit()
        );
        let end = vectors_offset
            .checked_add(vectors_len)
            .with_context(misfit)?;
        ensure!(
            file_len == end as u64,
            "file is {file_len} bytes, expected {end} (truncated or padded)"
        );
        Ok(Self {
            version,
            element,
            dim,
            count,
            cells,
            fingerprint,
            records_offset,
            records_len,
            vectors_offset,
            end,
            body_crc: get_u32(head, 88),
            checksum,
        })
    }
}

/// The item records' JSON, checked against the header's count and the columns.
fn parse_records(json: &[u8], count: usize) -> Result<LoadedRecords> {
    let records: LoadedRecords =
        serde_json::from_slice(json).context("item records are not valid")?;
    ensure!(
        records.items.len() == count,
        "header says {count} items, records hold {}",
        records.items.len()
    );
    ensure!(
        records.items.width() == records.columns.len(),
        "item {} has {} metadata values for {} columns",
        records.items.get(0).id,
        records.items.width(),
        records.columns.len()
    );
    Ok(records)
}

/// One search result: the item's index in the table and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub score: f32,
}

impl Table {
    /// Reads and validates a table file. Every error names the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_inner(path).with_context(|| format!("cannot load table {}", path.display()))
    }

    fn load_inner(path: &Path) -> Result<Self> {
        let mut file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let head = AlignedBytes::read(&mut file, Some(HEADER_LEN))?;
        let header = Header::parse(head.as_bytes(), file_len)?;
        let Header {
            version,
            element,
            dim,
            count,
            cells,
            records_offset,
            records_len,
            vectors_offset,
            end,
            ..
        } = header;
        let layout = (element == Element::I8)
            .then(|| I8Layout::of(count, dim, version, cells))
            .flatten();
        // Everything up to the rows of a version-3 i8 section is checksummed as a whole; the rows
        // are checked one by one. A table with cells leaves its rows on disk.
        let checked_end = match &layout {
            Some(layout) if version >= 3 => vectors_offset + layout.rows,
            _ => end,
        };
        let rows_on_disk = cells > 0;
        // The records are read, checksummed and parsed on their own, so that only the packed
        // items stay in memory, not their JSON.
        let mut records = vec![0u8; vectors_offset - records_offset];
        file.read_exact(&mut records)
            .context("file ends inside the item records")?;
        let mut checksum = crc32fast::Hasher::new();
        checksum.update(&records);
        let bytes = AlignedBytes::read(
            &mut file,
            rows_on_disk.then_some(checked_end - vectors_offset),
        )?;
        let data = bytes.as_bytes();
        let expected = if rows_on_disk { checked_end } else { end } - vectors_offset;
        ensure!(
            data.len() == expected,
            "file is {} bytes, expected {end} (truncated or padded)",
            vectors_offset + data.len()
        );
        checksum.update(&data[..checked_end - vectors_offset]);
        ensure!(
            checksum.finalize() == header.body_crc,
            "data checksum mismatch (corrupt file)"
        );
        let records = parse_records(&records[..records_len], count)?;
        let table = Self {
            path: path.to_path_buf(),
            fingerprint: header.fingerprint,
            element,
            dim,
            columns: records.columns,
            items: records.items,
            bytes,
            vectors_offset,
            header_checksum: header.checksum,
            version,
            layout,
            rows_file: rows_on_disk.then_some(file),
        };
        if let Some(cells) = table.cells() {
            cells.validate(count)?;
        }
        if version >= 3 && element == Element::I8 && !rows_on_disk {
            for index in 0..count {
                table.i8_row(index)?;
            }
        }
        Ok(table)
    }

    /// The table's content id: its header checksum (which covers the data checksum), as 8 hex
    /// digits. Two tables with the same id hold the same items and vectors.
    pub fn content_id(&self) -> String {
        format!("{:08x}", self.header_checksum)
    }

    /// Refuses the table unless it was made by a model of `accepted` (the model, then its twin);
    /// the message names both files.
    pub fn ensure_model(&self, accepted: &[Fingerprint], manifest: &Path) -> Result<()> {
        if !accepted.contains(&self.fingerprint) {
            bail!(
                "table {} was built by model {}, but the loaded model {} is {}: rebuild the table with `fashion-kiosk index --model {}`",
                self.path.display(),
                self.fingerprint.short(),
                manifest.display(),
                accepted[0].short(),
                manifest.display()
            );
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
    pub fn element(&self) -> Element {
        self.element
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn columns(&self) -> &[String] {
        &self.columns
    }
    pub fn items(&self) -> &Items {
        &self.items
    }
    /// Item `index` (panics past the end, as indexing does).
    pub fn item(&self, index: usize) -> ItemRef<'_> {
        self.items.get(index)
    }
    /// Bytes of vector storage in memory (a table with cells: all but the rows).
    pub fn vector_bytes(&self) -> usize {
        self.bytes.len
    }

    /// The vector section: scales (i8 only), then the rows.
    fn vector_data(&self) -> &[u8] {
        self.bytes.as_bytes()
    }

    /// Each item's position in the table, by id.
    pub fn positions(&self) -> std::collections::HashMap<&str, usize> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.id, i))
            .collect()
    }

    /// The position of metadata column `name`, if the table has it.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Cosine similarity of `query` (unit norm) to the stored vector of item `index`.
    pub fn score(&self, query: &[f32], index: usize) -> Result<f32> {
        Ok(match self.element {
            Element::I8 => self.i8_score(query, index)?,
            Element::F16 => dot(query, &self.vector(index)?),
            Element::F32 => dot(query, self.f32_row(index)),
        })
    }

    /// The stored vector of item `index`, decoded to f32.
    pub fn vector(&self, index: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.dim];
        match self.element {
            Element::F32 => out.copy_from_slice(self.f32_row(index)),
            Element::F16 => self.f16_row(index).convert_to_f32_slice(&mut out),
            Element::I8 => {
                let (scale, codes) = self.i8_row(index)?;
                for (o, c) in out.iter_mut().zip(codes.iter()) {
                    *o = f32::from(*c) * scale;
                }
            }
        }
        Ok(out)
    }

    // The buffer is 8-aligned and the vectors offset a multiple of 64, so the casts are aligned.
    fn f32_row(&self, index: usize) -> &[f32] {
        let data = self.vector_data();
        bytemuck::cast_slice(&data[index * self.dim * 4..(index + 1) * self.dim * 4])
    }

    fn f16_row(&self, index: usize) -> &[f16] {
        let data = self.vector_data();
        bytemuck::cast_slice(&data[index * self.dim * 2..(index + 1) * self.dim * 2])
    }

    /// The scale and codes of item `index` in an i8 table: in place, or read from the file and
    /// checked against the row's checksum when the rows stay on disk.
    fn i8_row(&self, index: usize) -> Result<(f32, Cow<'_, [i8]>)> {
        let data = self.vector_data();
        let layout = self.layout.as_ref().context("not an i8 table")?;
        let scale = f32::from_le_bytes(data[index * 4..index * 4 + 4].try_into().expect("4 bytes"));
        let start = layout.rows + index * self.dim;
        let codes: Cow<'_, [u8]> = match &self.rows_file {
            None => Cow::Borrowed(&data[start..start + self.dim]),
            Some(file) => {
                let mut row = vec![0u8; self.dim];
                file.read_exact_at(&mut row, (self.vectors_offset + start) as u64)
                    .with_context(|| {
                        format!("cannot read row {index} of table {}", self.path.display())
                    })?;
                Cow::Owned(row)
            }
        };
        if self.version >= 3 {
            let at = layout.row_checksums + index * 4;
            let expected = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
            ensure!(
                crc32fast::hash(&codes) == expected,
                "row {index} (item {}) of table {} does not match its checksum: the file is damaged or was changed after loading",
                self.items.get(index).id,
                self.path.display()
            );
        }
        Ok(match codes {
            Cow::Borrowed(codes) => (scale, Cow::Borrowed(bytemuck::cast_slice(codes))),
            Cow::Owned(codes) => (scale, Cow::Owned(bytemuck::allocation::cast_vec(codes))),
        })
    }

    /// The exact score of item `index` in an i8 table.
    fn i8_score(&self, query: &[f32], index: usize) -> Result<f32> {
        let (scale, codes) = self.i8_row(index)?;
        Ok(dot_i8(query, &codes) * scale)
    }

    /// The first stage of an i8 table's search (format version 2 or later).
    fn prefilter(&self) -> Option<Prefilter<'_>> {
        if self.version < 2 {
            return None;
        }
        let layout = self.layout.as_ref()?;
        let data = self.vector_data();
        let dims = prefilter::dims_for(self.dim);
        let count = self.items.len();
        Some(Prefilter {
            dims,
            basis: bytemuck::cast_slice(&data[layout.basis..layout.basis + dims * self.dim * 4]),
            terms: bytemuck::cast_slice(
                &data[layout.terms..layout.terms + count * prefilter::ROW_TERMS * 4],
            ),
            codes: bytemuck::cast_slice(&data[layout.codes..layout.codes + count * dims]),
        })
    }

    /// The cells of a large i8 table (format version 3 or later), if it was built with them.
    fn cells(&self) -> Option<Cells<'_>> {
        let layout = self.layout.as_ref().filter(|layout| layout.cells > 0)?;
        let data = self.vector_data();
        let dims = prefilter::dims_for(self.dim);
        let count = self.items.len();
        let cells = layout.cells;
        Some(Cells {
            centroids: bytemuck::cast_slice(
                &data[layout.centroids..layout.centroids + cells * dims * 4],
            ),
            offsets: bytemuck::cast_slice(&data[layout.offsets..layout.offsets + (cells + 1) * 4]),
            members: bytemuck::cast_slice(&data[layout.members..layout.members + count * 4]),
            short_scales: bytemuck::cast_slice(
                &data[layout.short_scales..layout.short_scales + count * 4],
            ),
            short_codes: bytemuck::cast_slice(
                &data[layout.short_codes..layout.short_codes + count * cells::short_dims(dims)],
            ),
        })
    }

    /// Whether searches are approximate (the table has cells) and, if so, over how many cells.
    pub fn cell_count(&self) -> Option<usize> {
        self.cells().map(|cells| cells.len())
    }

    /// Bytes of memory each item's vector takes in the loaded table (row, scale and, for i8
    /// tables with one, the prefilter's share).
    pub fn bytes_per_item(&self) -> f64 {
        self.vector_bytes() as f64 / self.items.len() as f64
    }

    /// Exact top-`k` by cosine similarity (vectors are unit length, so the dot product) between
    /// `query` and every item, best first. `skip` excludes one item (leave-one-out evaluation).
    pub fn nearest(&self, query: &[f32], k: usize, skip: Option<usize>) -> Result<Vec<Hit>> {
        self.nearest_where(query, k, |index| Some(index) != skip)
    }

    /// Exact top-`k` among the items (by position) that `allowed` accepts, best first.
    pub fn nearest_where(
        &self,
        query: &[f32],
        k: usize,
        allowed: impl Fn(usize) -> bool,
    ) -> Result<Vec<Hit>> {
        Ok(self.nearest_counted(query, k, allowed)?.0)
    }

    /// [`Table::nearest_where`], and how many items the prefilter bounded (or the cells
    /// estimated) and how many were scored exactly (`None`: the table has no prefilter and every
    /// allowed item was scored). A table with cells answers approximately: see
    /// [`Table::nearest_exact`].
    pub fn nearest_counted(
        &self,
        query: &[f32],
        k: usize,
        allowed: impl Fn(usize) -> bool,
    ) -> Result<(Vec<Hit>, Option<SearchCounts>)> {
        self.check_query(query)?;
        match (self.prefilter(), self.cells()) {
            (Some(first_stage), Some(cells)) => {
                let (hits, counts) = cells.nearest(&first_stage, query, k, allowed, |index| {
                    self.i8_score(query, index)
                })?;
                Ok((hits, Some(counts)))
            }
            _ => self.nearest_exact(query, k, allowed),
        }
    }

    /// The exact top `k` among the items `allowed` accepts, whether or not the table has cells,
    /// and the prefilter's counts as [`Table::nearest_counted`] gives them.
    pub fn nearest_exact(
        &self,
        query: &[f32],
        k: usize,
        allowed: impl Fn(usize) -> bool,
    ) -> Result<(Vec<Hit>, Option<SearchCounts>)> {
        self.check_query(query)?;
        Ok(match self.prefilter() {
            Some(first_stage) => {
                let (hits, counts) = first_stage.nearest(
                    query,
                    k,
                    allowed,
                    |index| self.i8_row(index),
                    |index| self.i8_score(query, index),
                )?;
                (hits, Some(counts))
            }
            None => (self.scan(query, k, allowed)?, None),
        })
    }

    /// Exact top-`k` by scoring every allowed item: what the prefilter must agree with.
    pub fn nearest_by_scan(
        &self,
        query: &[f32],
        k: usize,
        allowed: impl Fn(usize) -> bool,
    ) -> Result<Vec<Hit>> {
        self.check_query(query)?;
        self.scan(query, k, allowed)
    }

    fn check_query(&self, query: &[f32]) -> Result<()> {
        ensure!(
            query.len() == self.dim,
            "query has {} values, table {} holds {}-d vectors",
            query.len(),
            self.path.display(),
            self.dim
        );
        Ok(())
    }

    fn scan(&self, query: &[f32], k: usize, allowed: impl Fn(usize) -> bool) -> Result<Vec<Hit>> {
        let mut top = TopK::new(k);
        let mut scratch = vec![0f32; self.dim];
        for index in 0..self.items.len() {
            if !allowed(index) {
                continue;
            }
            let score = match self.element {
                Element::I8 => self.i8_score(query, index)?,
                Element::F16 => {
                    self.f16_row(index).convert_to_f32_slice(&mut scratch);
                    dot(query, &scratch)
                }
                Element::F32 => dot(query, self.f32_row(index)),
            };
            top.offer(Hit { index, score });
        }
        Ok(top.into_sorted())
    }
}

/// Dot product of two f32 vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, |y| y)
}

/// Dot product of an f32 query with a row of i8 codes (the row's scale is applied by the caller).
fn dot_i8(a: &[f32], codes: &[i8]) -> f32 {
    dot_with(a, codes, |c| c as f32)
}

/// `Σ a[i] · to_f32(b[i])`, written with independent lanes so the compiler vectorises it.
#[inline(always)]
fn dot_with<T: Copy>(a: &[f32], b: &[T], to_f32: impl Fn(T) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * to_f32(*y))
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += x[i] * to_f32(y[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Keeps the best `k` hits seen so far (a small sorted buffer: k is tiny).
pub(crate) struct TopK {
    k: usize,
    hits: Vec<Hit>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            hits: Vec::with_capacity(k + 1),
        }
    }

    pub(crate) fn offer(&mut self, hit: Hit) {
        if self.k == 0 || (self.hits.len() == self.k && hit.score <= self.hits[self.k - 1].score) {
            return;
        }
        let at = self.hits.partition_point(|h| h.score >= hit.score);
        self.hits.insert(at, hit);
        self.hits.truncate(self.k);
    }

    /// The k-th best score, once k hits are kept.
    pub(crate) fn kth_score(&self) -> Option<f32> {
        (self.k > 0 && self.hits.len() == self.k).then(|| self.hits[self.k - 1].score)
    }

    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn normalise_gives_unit_norm_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        normalise(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0; 4];
        normalise(&mut zero);
        assert_eq!(zero, vec![0.0; 4]);
    }

    fn unit(values: &[f32]) -> Vec<f32> {
        let mut v = values.to_vec();
        normalise(&mut v);
        v
    }

    fn item(id: &str, meta: &[&str]) -> Item {
        Item {
            id: id.into(),
            source: format!("{id}.jpg"),
            digest: "00".repeat(32),
            metadata: meta.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sample(dir: &Path, element: Element) -> PathBuf {
        let mut builder = TableBuilder::new(Fingerprint([7; 32]), 4, vec!["colour".into()]);
        builder
            .push(item("a", &["red"]), &unit(&[1.0, 0.0, 0.0, 0.0]))
            .unwrap();
        builder
            .push(item("b", &["blue"]), &unit(&[0.9, 0.1, 0.0, 0.0]))
            .unwrap();
        builder
            .push(item("c", &["green"]), &unit(&[0.0, 0.0, 1.0, 0.2]))
            .unwrap();
        let path = dir.join(format!("t-{}.fkt", element.name()));
        builder.write(&path, element).unwrap();
        path
    }

    #[test]
    fn round_trips_and_finds_nearest_in_every_element_type() {
        let dir = tempfile::tempdir().unwrap();
        for element in [Element::F16, Element::I8, Element::F32] {
            let table = Table::load(&sample(dir.path(), element)).unwrap();
            assert_eq!(table.len(), 3);
            assert_eq!(table.element(), element);
            assert_eq!(table.item(1).to_item().metadata, vec!["blue".to_string()]);
            let hits = table
                .nearest(&unit(&[1.0, 0.05, 0.0, 0.0]), 2, None)
                .unwrap();
            assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), vec![0, 1]);
            assert!(
                (hits[0].score - 0.9988).abs() < 0.01,
                "{element:?} {hits:?}"
            );
            let skipped = table
                .nearest(&unit(&[1.0, 0.0, 0.0, 0.0]), 1, Some(0))
                .unwrap();
            assert_eq!(skipped[0].index, 1);
        }
    }

    #[test]
    fn a_loaded_table_survives_its_file_being_overwritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        for element in [Element::F16, Element::I8, Element::F32] {
            // Several pages of vectors, so a mapped file would be read past its new end.
            let dim = 256;
            let mut builder = TableBuilder::new(Fingerprint([7; 32]), dim, Vec::new());
            for i in 0..24 {
                let values: Vec<f32> = (0..dim).map(|d| ((i * 7 + d * 3) % 11) as f32).collect();
                builder
                    .push(item(&format!("item{i}"), &[]), &unit(&values))
                    .unwrap();
            }
            let path = dir.path().join(format!("live-{}.fkt", element.name()));
            builder.write(&path, element).unwrap();
            let table = Table::load(&path).unwrap();
            let query = table.vector(5).unwrap();
            let before = table.nearest(&query, 3, None).unwrap();

            // What `cp new.fkt live.fkt` does: the same inode, truncated, then fewer bytes.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            file.write_all(b"FKTABLE\0 being replaced").unwrap();
            file.sync_all().unwrap();

            assert_eq!(
                table.nearest(&query, 3, None).unwrap(),
                before,
                "{element:?}"
            );
            assert_eq!(table.vector(5).unwrap(), query, "{element:?}");
        }
    }

    #[test]
    fn refuses_a_table_from_another_model() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::load(&sample(dir.path(), Element::F16)).unwrap();
        let err = table
            .ensure_model(&[Fingerprint([8; 32])], Path::new("other.manifest.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t-f16.fkt") && err.contains("other.manifest.json"),
            "{err}"
        );
        assert!(table
            .ensure_model(&[Fingerprint([7; 32])], Path::new("m"))
            .is_ok());
    }

    #[test]
    fn rejects_truncated_corrupt_and_foreign_files_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path(), Element::I8);
        let good = std::fs::read(&path).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("truncated", good[..good.len() - 10].to_vec(), "truncated"),
            ("short", good[..40].to_vec(), "shorter than"),
            ("foreign", b"id,score\n".repeat(20), "bad magic"),
            (
                "flipped",
                {
                    let mut b = good.clone();
                    let last = b.len() - 1;
                    b[last] ^= 0x55;
                    b
                },
                "checksum",
            ),
            (
                "version",
                {
                    let mut b = good.clone();
                    put_u32(&mut b, 8, 99);
                    b
                },
                "version 99",
            ),
        ];
        for (name, bytes, expected) in cases {
            let bad = dir.path().join(format!("{name}.fkt"));
            std::fs::write(&bad, bytes).unwrap();
            let err = format!("{:#}", Table::load(&bad).err().unwrap());
            assert!(err.contains(&format!("{name}.fkt")), "{err}");
            assert!(err.contains(expected), "{name}: {err}");
        }
    }

    #[test]
    fn refuses_a_table_with_no_items_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.fkt");
        TableBuilder::new(Fingerprint([7; 32]), 4, Vec::new())
            .write(&path, Element::I8)
            .unwrap();
        let err = format!("{:#}", Table::load(&path).err().unwrap());
        assert!(
            err.contains("empty.fkt") && err.contains("holds no items"),
            "{err}"
        );
    }

    /// splitmix64: a small seeded generator, so that a failing case can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A value for a size field whose largest value is `max`: near the real one, small, a power
    /// of two, near the largest, or anything.
    fn size_value(rng: &mut Rng, real: u64, max: u64) -> u64 {
        match rng.below(5) {
            0 => real.wrapping_add(rng.below(5) as u64).wrapping_sub(2) & max,
            1 => rng.below(300) as u64,
            2 => (1u64 << rng.below(64)) & max,
            3 => max - rng.below(3) as u64,
            _ => rng.next() & max,
        }
    }

    /// Applies one random mutation to a table's bytes and says what it did.
    fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
        const FIELDS: [(usize, usize, &str); 7] = [
            (12, 4, "element"),
            (16, 4, "dim"),
            (20, 4, "count"),
            (56, 8, "records offset"),
            (64, 8, "records length"),
            (72, 8, "vectors offset"),
            (80, 8, "vectors length"),
        ];
        match rng.below(5) {
            0 if bytes.len() >= HEADER_LEN => {
                // Both factors of the vector section's size at once.
                let dim = size_value(rng, get_u32(bytes, 16).into(), u32::MAX.into());
                let count = size_value(rng, get_u32(bytes, 20).into(), u32::MAX.into());
                put_u32(bytes, 16, dim as u32);
                put_u32(bytes, 20, count as u32);
                format!("dim = {dim}, count = {count}")
            }
            1 | 2 if bytes.len() >= HEADER_LEN => {
                let (at, width, name) = FIELDS[rng.below(FIELDS.len())];
                if width == 4 {
                    let value = size_value(rng, get_u32(bytes, at).into(), u32::MAX.into());
                    put_u32(bytes, at, value as u32);
                    format!("{name} = {value}")
                } else {
                    let value = size_value(rng, get_u64(bytes, at), u64::MAX);
                    put_u64(bytes, at, value);
                    format!("{name} = {value}")
                }
            }
            3 if bytes.len() > HEADER_LEN => {
                let at = HEADER_LEN + rng.below(bytes.len() - HEADER_LEN);
                let value = rng.next() as u8;
                bytes[at] = value;
                format!("byte {at} = {value}")
            }
            _ if rng.below(2) == 0 => {
                let len = rng.below(bytes.len() + 1);
                bytes.truncate(len);
                format!("truncated to {len}")
            }
            _ => {
                let extra = 1 + rng.below(200);
                bytes.extend((0..extra).map(|_| rng.next() as u8));
                format!("{extra} bytes appended")
            }
        }
    }

    /// Recomputes the data checksum (when `data` is set) and the header checksum, so that a
    /// mutation gets past them.
    fn reseal(bytes: &mut [u8], data: bool) {
        if bytes.len() < HEADER_LEN {
            return;
        }
        if data {
            let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
            put_u32(bytes, 88, crc);
        }
        let crc = crc32fast::hash(&bytes[..92]);
        put_u32(bytes, 92, crc);
    }

    #[test]
    fn a_mutated_table_is_loaded_or_refused_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.fkt");
        let mut rng = Rng(0x5eed);
        let with_cells = {
            let path = sample(dir.path(), Element::I8);
            let mut builder = TableBuilder::new(Fingerprint([7; 32]), 4, vec!["colour".into()]);
            let table = Table::load(&path).unwrap();
            for (index, item) in table.items().iter().enumerate() {
                builder
                    .push(item.to_item(), &table.vector(index).unwrap())
                    .unwrap();
            }
            builder.approximate_from(1);
            let path = dir.path().join("t-cells.fkt");
            builder.write(&path, Element::I8).unwrap();
            assert!(Table::load(&path).unwrap().cell_count().is_some());
            std::fs::read(&path).unwrap()
        };
        for (element, good) in [
            (
                Element::F16,
                std::fs::read(sample(dir.path(), Element::F16)).unwrap(),
            ),
            (
                Element::I8,
                std::fs::read(sample(dir.path(), Element::I8)).unwrap(),
            ),
            (
                Element::F32,
                std::fs::read(sample(dir.path(), Element::F32)).unwrap(),
            ),
            (Element::I8, with_cells),
        ] {
            for case in 0..1500 {
                let mut bytes = good.clone();
                let mutations: Vec<String> = (0..1 + rng.below(3))
                    .map(|_| mutate(&mut rng, &mut bytes))
                    .collect();
                reseal(&mut bytes, rng.below(4) != 0);
                std::fs::write(&path, &bytes).unwrap();
                let outcome = std::panic::catch_unwind(|| {
                    if let Ok(table) = Table::load(&path) {
                        // A table that loads must be searchable; one whose rows stay on disk
                        // finds a damaged row when it reads it.
                        let query = vec![0.5; table.dim()];
                        let searched = table.nearest(&query, 3, Some(0));
                        let read = (0..table.len()).map(|index| table.vector(index));
                        if table.rows_file.is_none() {
                            searched.unwrap();
                            read.for_each(|vector| drop(vector.unwrap()));
                        } else {
                            read.for_each(drop);
                        }
                    }
                });
                assert!(
                    outcome.is_ok(),
                    "{element:?} case {case} panicked: {}",
                    mutations.join(", ")
                );
            }
        }
    }

    #[test]
    fn a_builder_that_quantises_on_push_writes_the_same_i8_table_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let vectors: Vec<Vec<f32>> = (0..40)
            .map(|i| unit(&[i as f32, 1.0, -0.5 * i as f32, 3.0]))
            .collect();
        let mut plain = TableBuilder::new(Fingerprint([7; 32]), 4, vec!["n".into()]);
        let mut early = TableBuilder::new_i8(Fingerprint([7; 32]), 4, vec!["n".into()]);
        let mut from_rows = TableBuilder::new_i8(Fingerprint([7; 32]), 4, vec!["n".into()]);
        let flat: Vec<f32> = vectors.concat();
        let rows = I8Rows::quantize(&flat, 4);
        for (i, vector) in vectors.iter().enumerate() {
            let n = i.to_string();
            plain.push(item(&n, &[n.as_str()]), vector).unwrap();
            early.push(item(&n, &[n.as_str()]), vector).unwrap();
            from_rows
                .push_i8(item(&n, &[n.as_str()]), &rows, i)
                .unwrap();
        }
        let write = |builder: &TableBuilder, name: &str| {
            let path = dir.path().join(name);
            builder.write(&path, Element::I8).unwrap();
            std::fs::read(path).unwrap()
        };
        let expected = write(&plain, "plain.fkt");
        assert!(write(&early, "early.fkt") == expected);
        assert!(write(&from_rows, "rows.fkt") == expected);
        let err = early
            .write(&dir.path().join("f32.fkt"), Element::F32)
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot write f32"), "{err:#}");
        assert!(plain.push_i8(item("x", &["x"]), &rows, 0).is_err());
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path(), Element::F16);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["t-f16.fkt".to_string()]);
    }

    /// A table of `count` unit vectors of `dim` values around a few centres (so that most items
    /// are far from any query), with every 50th item a copy of the one before it (exact ties).
    /// Tables of `approximate_from` items or more get cells.
    fn clustered(
        dir: &Path,
        count: usize,
        dim: usize,
        approximate_from: usize,
    ) -> (PathBuf, Vec<Vec<f32>>) {
        let mut rng = Rng(0x1234_5678);
        let mut next = move || (rng.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        let centres: Vec<Vec<f32>> = (0..8).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let mut builder = TableBuilder::new(Fingerprint([3; 32]), dim, vec!["group".into()]);
        let mut vectors: Vec<Vec<f32>> = Vec::new();
        for i in 0..count {
            let vector = if i % 50 == 49 {
                vectors[i - 1].clone()
            } else {
                let centre = &centres[i % centres.len()];
                unit(&centre.iter().map(|c| c + 0.15 * next()).collect::<Vec<_>>())
            };
            let group = (i % 3).to_string();
            builder
                .push(item(&format!("i{i}"), &[group.as_str()]), &vector)
                .unwrap();
            vectors.push(vector);
        }
        let path = dir.join("clustered.fkt");
        builder.approximate_from(approximate_from);
        builder.write(&path, Element::I8).unwrap();
        let queries = (0..120)
            .map(|q| {
                let base = &vectors[(q * 37) % count];
                let noise = if q % 2 == 0 { 0.05 } else { 0.8 };
                unit(&base.iter().map(|v| v + noise * next()).collect::<Vec<_>>())
            })
            .collect();
        (path, queries)
    }

    #[test]
    fn the_prefilter_returns_exactly_what_scoring_every_item_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (path, queries) = clustered(dir.path(), 1500, 96, usize::MAX);
        let table = Table::load(&path).unwrap();
        assert!(table.prefilter().is_some());
        let mut scored = 0;
        for (q, query) in queries.iter().enumerate() {
            for k in [1, 5, 12] {
                let (hits, counts) = table.nearest_counted(query, k, |_| true).unwrap();
                assert_eq!(
                    hits,
                    table.nearest_by_scan(query, k, |_| true).unwrap(),
                    "query {q} k {k}"
                );
                scored += counts.unwrap().scored;
                let group_one = |index: usize| index % 3 == 1;
                assert_eq!(
                    table.nearest_where(query, k, group_one).unwrap(),
                    table.nearest_by_scan(query, k, group_one).unwrap(),
                    "query {q} k {k}, filtered"
                );
            }
        }
        // The point of it: most items are only bounded, not scored.
        let per_search = scored as f64 / (queries.len() * 3) as f64;
        assert!(
            per_search < 1500.0 / 4.0,
            "{per_search} items scored per search"
        );
        assert!(table
            .nearest_where(&queries[0], 5, |_| false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_version_1_table_loads_and_is_searched_by_scanning() {
        let dir = tempfile::tempdir().unwrap();
        let (path, queries) = clustered(dir.path(), 200, 32, usize::MAX);
        let bytes = std::fs::read(&path).unwrap();
        // Version 1 is the scales, then the rows (which version 3 keeps at the end).
        let vectors_offset = get_u64(&bytes, 72) as usize;
        let scales_end = vectors_offset + align(200 * 4);
        let mut old = bytes[..scales_end].to_vec();
        old.extend_from_slice(&bytes[bytes.len() - 200 * 32..]);
        let vectors_len = (old.len() - vectors_offset) as u64;
        put_u64(&mut old, 80, vectors_len);
        put_u32(&mut old, 8, 1);
        reseal(&mut old, true);
        let old_path = dir.path().join("v1.fkt");
        std::fs::write(&old_path, &old).unwrap();
        let (old, new) = (Table::load(&old_path).unwrap(), Table::load(&path).unwrap());
        assert!(old.prefilter().is_none());
        let (hits, counts) = old.nearest_counted(&queries[1], 5, |_| true).unwrap();
        assert_eq!(counts, None);
        assert_eq!(hits, new.nearest_where(&queries[1], 5, |_| true).unwrap());
        for index in [0, 77, 199] {
            assert_eq!(old.vector(index).unwrap(), new.vector(index).unwrap());
        }
    }

    /// A table of `count` unit vectors of `dim` values that lie near a 6-d subspace (as
    /// embeddings lie near a manifold of far fewer dimensions than they have), with cells from
    /// `approximate_from` items; and queries near some of its items.
    fn near_a_subspace(
        dir: &Path,
        count: usize,
        dim: usize,
        approximate_from: usize,
    ) -> (PathBuf, Vec<Vec<f32>>) {
        let mut rng = Rng(0x00c0_ffee);
        let mut next = move || (rng.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        let axes: Vec<Vec<f32>> = (0..6).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let mut point = |noise: f32| -> Vec<f32> {
            let weights: Vec<f32> = axes.iter().map(|_| next()).collect();
            (0..dim)
                .map(|i| {
                    axes.iter()
                        .zip(&weights)
                        .map(|(a, w)| a[i] * w)
                        .sum::<f32>()
                        + noise * next()
                })
                .collect()
        };
        let mut builder = TableBuilder::new(Fingerprint([4; 32]), dim, vec!["group".into()]);
        let mut vectors = Vec::new();
        for i in 0..count {
            let vector = unit(&point(0.02));
            let group = (i % 3).to_string();
            builder
                .push(item(&format!("i{i}"), &[group.as_str()]), &vector)
                .unwrap();
            vectors.push(vector);
        }
        let path = dir.join(format!("subspace-{approximate_from}.fkt"));
        builder.approximate_from(approximate_from);
        builder.write(&path, Element::I8).unwrap();
        let queries = (0..100)
            .map(|q| {
                let base = &vectors[(q * 37) % count];
                unit(&base.iter().map(|v| v + 0.1 * next()).collect::<Vec<_>>())
            })
            .collect();
        (path, queries)
    }

    #[test]
    fn a_table_with_cells_finds_nearly_all_of_the_exact_top_k_reading_few_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (path, queries) = near_a_subspace(dir.path(), 6000, 64, 1000);
        let table = Table::load(&path).unwrap();
        assert_eq!(table.cell_count(), Some(cells::cells_for(6000)));
        assert!(table.rows_file.is_some(), "the rows stay on disk");
        // Loaded: everything but the rows.
        assert!(table.bytes_per_item() < 64.0, "{}", table.bytes_per_item());
        let (mut found, mut scored) = (0, 0);
        for query in &queries {
            let (hits, counts) = table.nearest_counted(query, 5, |_| true).unwrap();
            let (exact, _) = table.nearest_exact(query, 5, |_| true).unwrap();
            assert_eq!(exact, table.nearest_by_scan(query, 5, |_| true).unwrap());
            found += hits.iter().filter(|h| exact.contains(h)).count();
            scored += counts.unwrap().scored;
            // Every hit carries its exact score, best first.
            for pair in hits.windows(2) {
                assert!(pair[0].score >= pair[1].score);
            }
            for hit in &hits {
                assert_eq!(hit.score, table.score(query, hit.index).unwrap());
            }
            let filtered = table
                .nearest_where(query, 5, |index| index % 3 == 1)
                .unwrap();
            assert_eq!(filtered.len(), 5);
            assert!(filtered.iter().all(|h| h.index % 3 == 1));
        }
        let recall = found as f64 / (5 * queries.len()) as f64;
        assert!(recall >= 0.95, "recall@5 {recall}");
        assert!(scored / queries.len() <= 256, "{scored} rows scored");
        // The same items below the threshold: no cells, exact search, rows in memory.
        let (small, _) = near_a_subspace(dir.path(), 6000, 64, 6001);
        let small = Table::load(&small).unwrap();
        assert_eq!(small.cell_count(), None);
        assert!(small.rows_file.is_none());
    }

    #[test]
    fn a_row_changed_on_disk_after_loading_is_an_error_naming_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let (path, queries) = clustered(dir.path(), 400, 32, 100);
        let table = Table::load(&path).unwrap();
        let hits = table.nearest(&queries[0], 5, None).unwrap();
        // Overwritten in place, as `cp` onto the live file does: every row changes.
        let mut bytes = std::fs::read(&path).unwrap();
        let rows = bytes.len() - 400 * 32;
        for byte in &mut bytes[rows..] {
            *byte = byte.wrapping_add(1);
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = table.nearest(&queries[0], 5, None).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("clustered.fkt"), "{message}");
        assert!(message.contains("does not match its checksum"), "{message}");
        assert!(table.vector(hits[0].index).is_err());
        // Loaded again, the damaged rows are only found when read: searches report them.
        let reloaded = Table::load(&path).unwrap();
        assert!(reloaded.nearest(&queries[0], 5, None).is_err());
        // A table whose rows are in memory checks them all on load.
        let (small, _) = clustered(dir.path(), 400, 32, usize::MAX);
        let mut bytes = std::fs::read(&small).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&small, &bytes).unwrap();
        let message = format!("{:#}", Table::load(&small).err().unwrap());
        assert!(message.contains("row 399"), "{message}");
    }

    #[test]
    fn top_k_keeps_the_best_in_order() {
        let mut top = TopK::new(3);
        for (index, score) in [0.1, 0.9, 0.5, 0.7, 0.2, 0.95].into_iter().enumerate() {
            top.offer(Hit { index, score });
        }
        let order: Vec<_> = top.into_sorted().iter().map(|h| h.index).collect();
        assert_eq!(order, vec![5, 1, 3]);
    }

    #[test]
    fn dot_matches_naive_sum_for_odd_lengths() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
        let codes: Vec<i8> = (0..37).map(|i| (i as i8) - 18).collect();
        let naive_i8: f32 = a.iter().zip(&codes).map(|(x, c)| x * *c as f32).sum();
        assert!((dot_i8(&a, &codes) - naive_i8).abs() < 1e-2);
    }
}
