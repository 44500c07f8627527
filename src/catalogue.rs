//! The catalogue embedding table: a versioned binary file of item ids, metadata and L2-normalised
//! vectors, written atomically, read whole into memory and validated on load, searched exactly for
//! the top k (an i8 table through its [`prefilter`](crate::prefilter) first stage, with the same
//! results as scoring every row).
//!
//! A loaded table owns its bytes: overwriting or truncating the file afterwards (an installer's `cp`
//! onto the live path) cannot change or break the table in memory. The vectors are read in place
//! from that buffer, with no copy per search.
//!
//! # File format, version 1 (all integers little-endian)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `FKTABLE\0` |
//! | 8 | 4 | format version (2; version 1 is read too) |
//! | 12 | 4 | element type: 1 = f16, 2 = i8 with one f32 scale per vector, 3 = f32 |
//! | 16 | 4 | dim |
//! | 20 | 4 | count |
//! | 24 | 32 | model fingerprint: SHA-256 of the model file that made the vectors |
//! | 56 | 8 | records offset |
//! | 64 | 8 | records length |
//! | 72 | 8 | vectors offset (a multiple of 64) |
//! | 80 | 8 | vectors length |
//! | 88 | 4 | CRC-32 of every byte from the records offset to the end of the file |
//! | 92 | 4 | CRC-32 of bytes 0..92 |
//! | 96 | 32 | reserved, zero |
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

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use crate::model::Fingerprint;
use crate::prefilter::{self, Prefilter, SearchCounts};

const MAGIC: &[u8; 8] = b"FKTABLE\0";
/// The table format version this build writes (it reads this one and version 1).
pub const FORMAT_VERSION: u32 = 2;
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    /// The image file (relative to the catalogue folder) the vector was made from.
    pub source: String,
    /// SHA-256 (hex) of that file's bytes when it was embedded.
    pub digest: String,
    /// One value per table column.
    pub metadata: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Records {
    columns: Vec<String>,
    items: Vec<Item>,
}

/// A table being built in memory: items plus their (already L2-normalised) vectors.
pub struct TableBuilder {
    pub fingerprint: Fingerprint,
    pub dim: usize,
    pub columns: Vec<String>,
    items: Vec<Item>,
    vectors: Vec<f32>,
}

impl TableBuilder {
    pub fn new(fingerprint: Fingerprint, dim: usize, columns: Vec<String>) -> Self {
        Self {
            fingerprint,
            dim,
            columns,
            items: Vec::new(),
            vectors: Vec::new(),
        }
    }

    pub fn push(&mut self, item: Item, vector: &[f32]) -> Result<()> {
        ensure!(
            vector.len() == self.dim,
            "vector for item {} has {} values, the table holds {}",
            item.id,
            vector.len(),
            self.dim
        );
        ensure!(
            item.metadata.len() == self.columns.len(),
            "item {} has {} metadata values for {} columns",
            item.id,
            item.metadata.len(),
            self.columns.len()
        );
        self.items.push(item);
        self.vectors.extend_from_slice(vector);
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
            columns: self.columns.clone(),
            items: self.items.clone(),
        })?;
        let vectors = encode_vectors(&self.vectors, self.dim, element);
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
        let body_crc = crc32fast::hash(&out[records_offset..]);
        put_u32(&mut out, 88, body_crc);
        let header_crc = crc32fast::hash(&out[..92]);
        put_u32(&mut out, 92, header_crc);
        Ok(out)
    }
}

fn encode_vectors(vectors: &[f32], dim: usize, element: Element) -> Vec<u8> {
    match element {
        Element::F32 => vectors.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Element::F16 => vectors
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Element::I8 => {
            let count = vectors.len() / dim.max(1);
            let mut scales = Vec::with_capacity(align(count * 4));
            let mut codes = Vec::with_capacity(vectors.len());
            for row in vectors.chunks_exact(dim) {
                let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                scales.extend_from_slice(&scale.to_le_bytes());
                codes.extend(
                    row.iter()
                        .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
            scales.resize(align(count * 4), 0);
            let decoded: Vec<f32> = codes
                .chunks_exact(dim)
                .zip(scales.chunks_exact(4))
                .flat_map(|(row, scale)| {
                    let scale = f32::from_le_bytes(scale.try_into().expect("4 bytes"));
                    row.iter().map(move |c| f32::from(*c as i8) * scale)
                })
                .collect();
            scales.extend_from_slice(&codes);
            let first_stage = prefilter::build(&decoded, dim);
            scales.resize(align(scales.len()), 0);
            scales.extend(first_stage.basis.iter().flat_map(|v| v.to_le_bytes()));
            scales.resize(align(scales.len()), 0);
            scales.extend(first_stage.terms.iter().flat_map(|v| v.to_le_bytes()));
            scales.resize(align(scales.len()), 0);
            scales.extend(first_stage.codes.iter().map(|c| *c as u8));
            scales
        }
    }
}

/// Where the prefilter's parts of an i8 vector section of `count` rows of `dim` values start
/// (version 2; after the scales and rows), and the section's end.
struct I8Layout {
    basis: usize,
    terms: usize,
    codes: usize,
    end: usize,
}

impl I8Layout {
    fn of(count: usize, dim: usize, version: u32) -> Option<Self> {
        let rows = count.checked_mul(4)?.checked_next_multiple_of(ALIGN)?;
        let rows_end = rows.checked_add(count.checked_mul(dim)?)?;
        if version < 2 {
            return Some(Self {
                basis: rows_end,
                terms: rows_end,
                codes: rows_end,
                end: rows_end,
            });
        }
        let dims = prefilter::dims_for(dim);
        let basis = rows_end.checked_next_multiple_of(ALIGN)?;
        let terms = basis
            .checked_add(dims.checked_mul(dim)?.checked_mul(4)?)?
            .checked_next_multiple_of(ALIGN)?;
        let codes = terms
            .checked_add(count.checked_mul(prefilter::ROW_TERMS * 4)?)?
            .checked_next_multiple_of(ALIGN)?;
        let end = codes.checked_add(count.checked_mul(dims)?)?;
        Some(Self {
            basis,
            terms,
            codes,
            end,
        })
    }
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Bytes of the vector section of `count` vectors of `dim` values, or `None` if that does not fit
/// in a `usize`.
fn vector_section_len(element: Element, count: usize, dim: usize, version: u32) -> Option<usize> {
    let values = count.checked_mul(dim)?;
    match element {
        Element::F16 => values.checked_mul(2),
        Element::F32 => values.checked_mul(4),
        Element::I8 => Some(I8Layout::of(count, dim, version)?.end),
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

/// Writes `bytes` to `path` atomically (temporary file in the same folder, fsync, rename, fsync of
/// the folder), so readers see the old file or the new one, never a mix. The file gets the
/// permissions of any newly created file (0666 less the umask), not the temporary file's 0600, so
/// a table an installer writes stays readable by the service.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_as(path, bytes, None)
}

/// [`write_atomically`], with the file's permissions set to `mode` whatever the umask (a file
/// another service's user reads, such as the metrics for node-exporter's textfile collector).
pub fn write_atomically_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomically_as(path, bytes, Some(mode))
}

fn write_atomically_as(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    (|| -> Result<()> {
        // Removed on drop if anything below fails.
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(&dir)?;
        if let Some(mode) = mode {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)?;
        // Make the rename itself durable.
        File::open(&dir)?.sync_all()?;
        Ok(())
    })()
    .with_context(|| format!("cannot write {}", path.display()))
}

/// A file's bytes held in `u64` words, so that every offset that is a multiple of 8 (the vectors
/// start at a multiple of 64) is aligned for `f32`, `f16` and `i8` views of them.
struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    /// Reads `file` to its end. Its size on disk is only the first guess of how much to allocate.
    fn read(file: &mut File) -> Result<Self> {
        let size = usize::try_from(file.metadata()?.len())
            .context("file is too large for this machine's memory")?;
        let mut buffer = Self {
            words: Vec::new(),
            len: 0,
        };
        // One word more than the size, so that reading the end needs no second allocation.
        buffer.grow(size / 8 + 1)?;
        loop {
            if buffer.len == buffer.words.len() * 8 {
                buffer.grow(buffer.words.len() * 2)?;
            }
            let free = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buffer.words)[buffer.len..];
            match file.read(free) {
                Ok(0) => return Ok(buffer),
                Ok(n) => buffer.len += n,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
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

/// A loaded, validated table. It owns the file's bytes; the vectors are read in place from them.
pub struct Table {
    path: PathBuf,
    fingerprint: Fingerprint,
    element: Element,
    dim: usize,
    columns: Vec<String>,
    items: Vec<Item>,
    bytes: AlignedBytes,
    vectors_offset: usize,
    /// The file's format version: an i8 table of version 2 or later has a prefilter.
    version: u32,
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
        let bytes = AlignedBytes::read(&mut File::open(path)?)?;
        let data = bytes.as_bytes();
        ensure!(
            data.len() >= HEADER_LEN,
            "file is {} bytes, shorter than the {HEADER_LEN}-byte header (truncated or not a table)",
            data.len()
        );
        ensure!(
            &data[0..8] == MAGIC,
            "not a fashion-kiosk table (bad magic)"
        );
        let version = get_u32(data, 8);
        ensure!(
            version == 1 || version == FORMAT_VERSION,
            "table format version {version}, this build reads versions 1 and {FORMAT_VERSION}: rebuild it with `fashion-kiosk index`"
        );
        ensure!(
            crc32fast::hash(&data[..92]) == get_u32(data, 92),
            "header checksum mismatch (corrupt file)"
        );
        let element = Element::from_code(get_u32(data, 12))
            .with_context(|| format!("unknown element type {}", get_u32(data, 12)))?;
        let dim = size_field(get_u32(data, 16).into(), "dim")?;
        let count = size_field(get_u32(data, 20).into(), "count")?;
        ensure!(dim > 0, "dim is 0");
        ensure!(
            element != Element::I8 || version < 2 || dim <= prefilter::MAX_DIM,
            "dim {dim} is over the {} an i8 table can hold",
            prefilter::MAX_DIM
        );
        ensure!(count > 0, "the table holds no items");
        let fingerprint = Fingerprint(data[24..56].try_into().expect("32 bytes"));
        let records_offset = size_field(get_u64(data, 56), "records offset")?;
        let records_len = size_field(get_u64(data, 64), "records length")?;
        let vectors_offset = size_field(get_u64(data, 72), "vectors offset")?;
        let vectors_len = size_field(get_u64(data, 80), "vectors length")?;
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
                && Some(vectors_len) == vector_section_len(element, count, dim, version),
            misfit()
        );
        let end = vectors_offset
            .checked_add(vectors_len)
            .with_context(misfit)?;
        ensure!(
            data.len() == end,
            "file is {} bytes, expected {end} (truncated or padded)",
            data.len()
        );
        ensure!(
            crc32fast::hash(&data[records_offset..]) == get_u32(data, 88),
            "data checksum mismatch (corrupt file)"
        );
        let records: Records = serde_json::from_slice(&data[records_offset..records_end])
            .context("item records are not valid")?;
        ensure!(
            records.items.len() == count,
            "header says {count} items, records hold {}",
            records.items.len()
        );
        if let Some(item) = records
            .items
            .iter()
            .find(|item| item.metadata.len() != records.columns.len())
        {
            bail!(
                "item {} has {} metadata values for {} columns",
                item.id,
                item.metadata.len(),
                records.columns.len()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            fingerprint,
            element,
            dim,
            columns: records.columns,
            items: records.items,
            bytes,
            vectors_offset,
            version,
        })
    }

    /// The table's content id: its header checksum (which covers the data checksum), as 8 hex
    /// digits. Two tables with the same id hold the same items and vectors.
    pub fn content_id(&self) -> String {
        format!("{:08x}", get_u32(self.bytes.as_bytes(), 92))
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
    pub fn items(&self) -> &[Item] {
        &self.items
    }
    /// Bytes of vector storage.
    pub fn vector_bytes(&self) -> usize {
        self.bytes.len - self.vectors_offset
    }

    /// The vector section: scales (i8 only), then the rows.
    fn vector_data(&self) -> &[u8] {
        &self.bytes.as_bytes()[self.vectors_offset..]
    }

    /// Each item's position in the table, by id.
    pub fn positions(&self) -> std::collections::HashMap<&str, usize> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.id.as_str(), i))
            .collect()
    }

    /// The position of metadata column `name`, if the table has it.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Cosine similarity of `query` (unit norm) to the stored vector of item `index`.
    pub fn score(&self, query: &[f32], index: usize) -> f32 {
        match self.element {
            Element::I8 => self.i8_score(query, index),
            Element::F16 => dot(query, &self.vector(index)),
            Element::F32 => dot(query, self.f32_row(index)),
        }
    }

    /// The stored vector of item `index`, decoded to f32.
    pub fn vector(&self, index: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.dim];
        self.decode_into(index, &mut out);
        out
    }

    fn decode_into(&self, index: usize, out: &mut [f32]) {
        match self.element {
            Element::F32 => out.copy_from_slice(self.f32_row(index)),
            Element::F16 => self.f16_row(index).convert_to_f32_slice(out),
            Element::I8 => {
                let (scale, codes) = self.i8_row(index);
                for (o, c) in out.iter_mut().zip(codes) {
                    *o = *c as f32 * scale;
                }
            }
        }
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

    fn i8_row(&self, index: usize) -> (f32, &[i8]) {
        let data = self.vector_data();
        let count = self.items.len();
        let scale = f32::from_le_bytes(data[index * 4..index * 4 + 4].try_into().expect("4 bytes"));
        let start = align(count * 4) + index * self.dim;
        (scale, bytemuck::cast_slice(&data[start..start + self.dim]))
    }

    /// The exact score of item `index` in an i8 table.
    fn i8_score(&self, query: &[f32], index: usize) -> f32 {
        let (scale, codes) = self.i8_row(index);
        dot_i8(query, codes) * scale
    }

    /// The first stage of an i8 table's search (format version 2 or later).
    fn prefilter(&self) -> Option<Prefilter<'_>> {
        if self.element != Element::I8 || self.version < 2 {
            return None;
        }
        let layout = I8Layout::of(self.items.len(), self.dim, self.version)?;
        let data = self.vector_data();
        let dims = prefilter::dims_for(self.dim);
        Some(Prefilter {
            dims,
            basis: bytemuck::cast_slice(&data[layout.basis..layout.basis + dims * self.dim * 4]),
            terms: bytemuck::cast_slice(
                &data[layout.terms..layout.terms + self.items.len() * prefilter::ROW_TERMS * 4],
            ),
            codes: bytemuck::cast_slice(&data[layout.codes..layout.end]),
        })
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

    /// [`Table::nearest_where`], and how many items the prefilter bounded and scored exactly
    /// (`None`: the table has no prefilter and every allowed item was scored).
    pub fn nearest_counted(
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
                );
                (hits, Some(counts))
            }
            None => (self.scan(query, k, allowed), None),
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
        Ok(self.scan(query, k, allowed))
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

    fn scan(&self, query: &[f32], k: usize, allowed: impl Fn(usize) -> bool) -> Vec<Hit> {
        let mut top = TopK::new(k);
        let mut scratch = vec![0f32; self.dim];
        for index in 0..self.items.len() {
            if !allowed(index) {
                continue;
            }
            let score = match self.element {
                Element::I8 => self.i8_score(query, index),
                Element::F16 => {
                    self.f16_row(index).convert_to_f32_slice(&mut scratch);
                    dot(query, &scratch)
                }
                Element::F32 => dot(query, self.f32_row(index)),
            };
            top.offer(Hit { index, score });
        }
        top.into_sorted()
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

    #[test]
    fn an_atomic_write_gets_a_new_files_permissions_not_the_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let atomic = dir.path().join("atomic");
        write_atomically(&atomic, b"table").unwrap();
        let mode = |p: &Path| p.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
        assert_eq!(std::fs::read(&atomic).unwrap(), b"table");
    }

    fn unit(values: &[f32]) -> Vec<f32> {
        let mut v = values.to_vec();
        crate::model::normalise(&mut v);
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
            assert_eq!(table.items()[1].metadata, vec!["blue".to_string()]);
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
            let query = table.vector(5);
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
            assert_eq!(table.vector(5), query, "{element:?}");
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
        for element in [Element::F16, Element::I8, Element::F32] {
            let good = std::fs::read(sample(dir.path(), element)).unwrap();
            for case in 0..1500 {
                let mut bytes = good.clone();
                let mutations: Vec<String> = (0..1 + rng.below(3))
                    .map(|_| mutate(&mut rng, &mut bytes))
                    .collect();
                reseal(&mut bytes, rng.below(4) != 0);
                std::fs::write(&path, &bytes).unwrap();
                let outcome = std::panic::catch_unwind(|| {
                    if let Ok(table) = Table::load(&path) {
                        // A table that loads must be searchable.
                        for index in 0..table.len() {
                            table.vector(index);
                        }
                        let query = vec![0.5; table.dim()];
                        table.nearest(&query, 3, Some(0)).unwrap();
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
    fn clustered(dir: &Path, count: usize, dim: usize) -> (PathBuf, Vec<Vec<f32>>) {
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
        let (path, queries) = clustered(dir.path(), 1500, 96);
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
        let (path, queries) = clustered(dir.path(), 200, 32);
        let mut bytes = std::fs::read(&path).unwrap();
        // Version 1 is version 2 without the prefilter after the rows.
        let vectors_offset = get_u64(&bytes, 72) as usize;
        let rows_end = vectors_offset + align(200 * 4) + 200 * 32;
        bytes.truncate(rows_end);
        put_u64(&mut bytes, 80, (rows_end - vectors_offset) as u64);
        put_u32(&mut bytes, 8, 1);
        reseal(&mut bytes, true);
        let old = dir.path().join("v1.fkt");
        std::fs::write(&old, &bytes).unwrap();
        let (old, new) = (Table::load(&old).unwrap(), Table::load(&path).unwrap());
        assert!(old.prefilter().is_none());
        let (hits, counts) = old.nearest_counted(&queries[1], 5, |_| true).unwrap();
        assert_eq!(counts, None);
        assert_eq!(hits, new.nearest_where(&queries[1], 5, |_| true).unwrap());
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
