//! A part file: what one shard of a catalogue build embedded, in Parquet so that other tools
//! (pandas, DuckDB, Spark) read it too. One row per item: `id`, `source`, `digest`, one string
//! column per label column, and `vector`, the model's f32 embedding as a list. The model's
//! fingerprint, the shard and the label columns are in the file's key-value metadata.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, ByteArrayType, FloatType};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnPath, Type};
use serde::{Deserialize, Serialize};

use crate::shard::Shard;
use kiosk_table::catalogue::Item;
use kiosk_util::digest::Fingerprint;
use kiosk_util::files::write_atomically;

/// The part format's version, in the metadata as `fashion_kiosk.part`.
const PART_VERSION: &str = "1";
/// Rows per row group: bounds the memory a reader or writer holds at once (~8 KB a row).
const ROWS_PER_GROUP: usize = 8192;
const ITEM_COLUMNS: [&str; 3] = ["id", "source", "digest"];
const VECTOR_COLUMN: &str = "vector";

/// An image of the shard that could not be embedded, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub file: String,
    pub reason: String,
}

/// One shard's items and vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub fingerprint: Fingerprint,
    pub dim: usize,
    pub shard: Shard,
    /// The label columns each item's metadata gives values for.
    pub columns: Vec<String>,
    pub items: Vec<Item>,
    /// `items.len() * dim` values, the items' vectors in order.
    pub vectors: Vec<f32>,
    /// The shard's images that could not be embedded.
    pub skipped: Vec<Skipped>,
}

impl Part {
    /// The vector of item `index`.
    pub fn vector(&self, index: usize) -> &[f32] {
        &self.vectors[index * self.dim..(index + 1) * self.dim]
    }

    /// Writes the part to `path` atomically (a retried shard replaces its own part whole).
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self
            .encode()
            .with_context(|| format!("cannot encode part {}", path.display()))?;
        write_atomically(path, &bytes)
    }

    fn encode(&self) -> Result<Vec<u8>> {
        ensure!(
            self.vectors.len() == self.items.len() * self.dim && self.dim > 0,
            "{} values for {} items of {} values",
            self.vectors.len(),
            self.items.len(),
            self.dim
        );
        for column in &self.columns {
            ensure!(
                !ITEM_COLUMNS.contains(&column.as_str()) && column != VECTOR_COLUMN,
                "the label column {column:?} has the name of one of the part's own columns"
            );
        }
        let mut writer =
            SerializedFileWriter::new(Vec::new(), self.schema()?, Arc::new(self.properties()?))?;
        let groups = self
            .items
            .chunks(ROWS_PER_GROUP)
            .zip(self.vectors.chunks(ROWS_PER_GROUP * self.dim));
        for (items, values) in groups {
            let mut row_group = writer.next_row_group()?;
            let mut column = 0;
            while let Some(mut writer) = row_group.next_column()? {
                if column < ITEM_COLUMNS.len() + self.columns.len() {
                    let texts: Vec<ByteArray> = items
                        .iter()
                        .map(|item| {
                            let text = match column {
                                0 => &item.id,
                                1 => &item.source,
                                2 => &item.digest,
                                label => &item.metadata[label - ITEM_COLUMNS.len()],
                            };
                            ByteArray::from(text.as_str())
                        })
                        .collect();
                    writer
                        .typed::<ByteArrayType>()
                        .write_batch(&texts, None, None)?;
                } else {
                    let definitions = vec![1i16; values.len()];
                    let repetitions: Vec<i16> = (0..values.len())
                        .map(|i| i16::from(i % self.dim != 0))
                        .collect();
                    writer.typed::<FloatType>().write_batch(
                        values,
                        Some(&definitions),
                        Some(&repetitions),
                    )?;
                }
                writer.close()?;
                column += 1;
            }
            row_group.close()?;
        }
        Ok(writer.into_inner()?)
    }

    /// The Parquet schema: a required string per item and label column, then the vector as a
    /// list of floats.
    fn schema(&self) -> Result<Arc<Type>> {
        let string = |name: &str| -> Result<Arc<Type>> {
            Ok(Arc::new(
                Type::primitive_type_builder(name, PhysicalType::BYTE_ARRAY)
                    .with_repetition(Repetition::REQUIRED)
                    .with_logical_type(Some(LogicalType::String))
                    .build()?,
            ))
        };
        let mut fields = Vec::new();
        for name in ITEM_COLUMNS
            .iter()
            .copied()
            .chain(self.columns.iter().map(String::as_str))
        {
            fields.push(string(name)?);
        }
        let element = Type::primitive_type_builder("element", PhysicalType::FLOAT)
            .with_repetition(Repetition::REQUIRED)
            .build()?;
        let list = Type::group_type_builder("list")
            .with_repetition(Repetition::REPEATED)
            .with_fields(vec![Arc::new(element)])
            .build()?;
        fields.push(Arc::new(
            Type::group_type_builder(VECTOR_COLUMN)
                .with_repetition(Repetition::REQUIRED)
                .with_logical_type(Some(LogicalType::List))
                .with_fields(vec![Arc::new(list)])
                .build()?,
        ));
        Ok(Arc::new(
            Type::group_type_builder("fashion_kiosk_part")
                .with_fields(fields)
                .build()?,
        ))
    }

    /// Snappy, the vectors plain (no dictionary or statistics), and the part's metadata.
    fn properties(&self) -> Result<WriterProperties> {
        let vector_path = ColumnPath::from(vec![
            VECTOR_COLUMN.to_string(),
            "list".to_string(),
            "element".to_string(),
        ]);
        let metadata = [
            ("fashion_kiosk.part", PART_VERSION.to_string()),
            ("fashion_kiosk.fingerprint", self.fingerprint.to_string()),
            ("fashion_kiosk.dim", self.dim.to_string()),
            ("fashion_kiosk.shard", self.shard.to_string()),
            (
                "fashion_kiosk.columns",
                serde_json::to_string(&self.columns)?,
            ),
            (
                "fashion_kiosk.skipped",
                serde_json::to_string(&self.skipped)?,
            ),
        ]
        .into_iter()
        .map(|(key, value)| KeyValue::new(key.to_string(), value))
        .collect();
        Ok(WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_column_dictionary_enabled(vector_path.clone(), false)
            .set_column_statistics_enabled(vector_path, EnabledStatistics::None)
            .set_key_value_metadata(Some(metadata))
            .build())
    }

    /// Reads a part, checking its metadata, its columns and that every vector has the part's
    /// dimension. Errors name the file and what is wrong with it.
    pub fn read(path: &Path) -> Result<Self> {
        // The Parquet reader panics on some damaged files (slice bounds in its bit unpacking):
        // that is a damaged part, reported as one, with the panic's message kept off stderr.
        install_quiet_panic_hook();
        QUIET_PANICS.with(|quiet| quiet.set(true));
        let decoded = std::panic::catch_unwind(|| Self::decode(path));
        QUIET_PANICS.with(|quiet| quiet.set(false));
        let decoded = decoded.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(anyhow::anyhow!(
                "damaged file: the Parquet reader failed ({message})"
            ))
        });
        decoded.with_context(|| format!("cannot read part {}", path.display()))
    }

    fn decode(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let file_bytes = file.metadata()?.len();
        let reader = SerializedFileReader::new(file)?;
        let meta = reader.metadata().file_metadata();
        let header = PartMetadata::read(meta.key_value_metadata())?;
        let dim = header.dim;
        let expected: Vec<String> = ITEM_COLUMNS
            .iter()
            .map(|c| c.to_string())
            .chain(header.columns.iter().cloned())
            .chain([format!("{VECTOR_COLUMN}.list.element")])
            .collect();
        let found: Vec<String> = meta
            .schema_descr()
            .columns()
            .iter()
            .map(|c| c.path().string())
            .collect();
        ensure!(
            found == expected,
            "its columns are {found:?}, expected {expected:?}"
        );

        let strings = ITEM_COLUMNS.len() + header.columns.len();
        let rows = checked_row_count(&reader, strings, dim, file_bytes)?;
        let mut texts: Vec<Vec<String>> = vec![Vec::with_capacity(rows); strings];
        let mut vectors = Vec::with_capacity(rows * dim);
        for group in 0..reader.num_row_groups() {
            let row_group = reader.get_row_group(group)?;
            let group_rows = row_group.metadata().num_rows() as usize;
            for (column, text) in texts.iter_mut().enumerate() {
                let ColumnReader::ByteArrayColumnReader(reader) =
                    row_group.get_column_reader(column)?
                else {
                    bail!("column {} is not text", expected[column]);
                };
                read_texts(reader, group_rows, &expected[column], group, text)?;
            }
            let ColumnReader::FloatColumnReader(reader) = row_group.get_column_reader(strings)?
            else {
                bail!("column {VECTOR_COLUMN} is not a list of floats");
            };
            read_vectors(reader, group_rows, dim, group, &mut vectors)?;
        }
        Ok(Self {
            fingerprint: header.fingerprint,
            dim,
            shard: header.shard,
            items: items_of(texts),
            columns: header.columns,
            vectors,
            skipped: header.skipped,
        })
    }
}

/// What a part's key-value metadata says about it.
struct PartMetadata {
    fingerprint: Fingerprint,
    dim: usize,
    shard: Shard,
    columns: Vec<String>,
    skipped: Vec<Skipped>,
}

impl PartMetadata {
    fn read(pairs: Option<&Vec<KeyValue>>) -> Result<Self> {
        let values: HashMap<&str, &str> = pairs
            .map(|pairs| {
                pairs
                    .iter()
                    .filter_map(|kv| Some((kv.key.as_str(), kv.value.as_deref()?)))
                    .collect()
            })
            .unwrap_or_default();
        let field = |key: &str| -> Result<&str> {
            values
                .get(key)
                .copied()
                .with_context(|| format!("no {key} in its metadata: not a part written by index"))
        };
        let version = field("fashion_kiosk.part")?;
        ensure!(
            version == PART_VERSION,
            "part format {version}, this build reads {PART_VERSION}"
        );
        let fingerprint = Fingerprint::from_hex(field("fashion_kiosk.fingerprint")?)
            .context("fashion_kiosk.fingerprint is not 64 hex digits")?;
        let dim: usize = field("fashion_kiosk.dim")?
            .parse()
            .context("fashion_kiosk.dim is not a number")?;
        ensure!(dim > 0, "fashion_kiosk.dim is 0");
        let shard = field("fashion_kiosk.shard")?;
        let shard = match shard.parse::<crate::shard::ShardSpec>() {
            Ok(crate::shard::ShardSpec::Given(shard)) => shard,
            _ => bail!("fashion_kiosk.shard {shard:?} is not I/N"),
        };
        let columns: Vec<String> = serde_json::from_str(field("fashion_kiosk.columns")?)
            .context("fashion_kiosk.columns is not a list of names")?;
        let skipped: Vec<Skipped> = serde_json::from_str(field("fashion_kiosk.skipped")?)
            .context("fashion_kiosk.skipped is not a list of files and reasons")?;
        Ok(Self {
            fingerprint,
            dim,
            shard,
            columns,
            skipped,
        })
    }
}

/// One row group's values of a text column, appended to `texts`.
fn read_texts(
    mut reader: ColumnReaderImpl<ByteArrayType>,
    rows: usize,
    column: &str,
    group: usize,
    texts: &mut Vec<String>,
) -> Result<()> {
    let mut values = Vec::with_capacity(rows);
    let (read, _, _) = reader.read_records(rows, None, None, &mut values)?;
    ensure!(
        read == rows && values.len() == rows,
        "column {column} has {} of {rows} values in row group {group}",
        values.len()
    );
    for value in values {
        texts.push(
            value
                .as_utf8()
                .with_context(|| format!("column {column} is not UTF-8"))?
                .to_string(),
        );
    }
    Ok(())
}

/// One row group's vectors, each a list of `dim` values, appended to `vectors`.
fn read_vectors(
    mut reader: ColumnReaderImpl<FloatType>,
    rows: usize,
    dim: usize,
    group: usize,
    vectors: &mut Vec<f32>,
) -> Result<()> {
    let (mut definitions, mut repetitions, mut values) = (Vec::new(), Vec::new(), Vec::new());
    let (read, _, _) = reader.read_records(
        rows,
        Some(&mut definitions),
        Some(&mut repetitions),
        &mut values,
    )?;
    let whole = read == rows
        && values.len() == rows * dim
        && definitions.iter().all(|d| *d == 1)
        && repetitions
            .iter()
            .enumerate()
            .all(|(i, r)| *r == i16::from(i % dim != 0));
    ensure!(
        whole,
        "row group {group}: its vectors are not {rows} lists of {dim} values"
    );
    vectors.extend_from_slice(&values);
    Ok(())
}

/// The items from the text columns: id, source, digest, then one per label column.
fn items_of(texts: Vec<Vec<String>>) -> Vec<Item> {
    let mut texts = texts.into_iter();
    let mut next = || texts.next().expect("one list per text column");
    let (ids, sources, digests) = (next(), next(), next());
    let mut labels: Vec<std::vec::IntoIter<String>> =
        texts.map(|column| column.into_iter()).collect();
    ids.into_iter()
        .zip(sources)
        .zip(digests)
        .map(|((id, source), digest)| Item {
            id,
            source,
            digest,
            metadata: labels
                .iter_mut()
                .map(|column| column.next().expect("one value per row"))
                .collect(),
        })
        .collect()
}

/// Vector values a part may hold per byte of its file: a part's vectors are stored plain (no
/// dictionary), and Snappy does not shrink embeddings, so a real part holds about one per 4 bytes.
const MAX_VALUES_PER_FILE_BYTE: u64 = 16;

/// The part's row count, once the footer's counts agree with each other (the file's rows are its
/// row groups', each column chunk holds a value per row, `dim` per row for the vectors) and with
/// the file's size, so that nothing is allocated for rows the file cannot hold.
fn checked_row_count(
    reader: &SerializedFileReader<std::fs::File>,
    strings: usize,
    dim: usize,
    file_bytes: u64,
) -> Result<usize> {
    let meta = reader.metadata();
    let claimed = meta.file_metadata().num_rows();
    let mut rows: u64 = 0;
    for (group, row_group) in meta.row_groups().iter().enumerate() {
        let group_rows = u64::try_from(row_group.num_rows())
            .with_context(|| format!("row group {group} has a negative row count"))?;
        ensure!(
            row_group.num_columns() == strings + 1,
            "row group {group} has {} columns, its schema {}",
            row_group.num_columns(),
            strings + 1
        );
        let vector_values = group_rows.checked_mul(dim as u64);
        for (column, chunk) in row_group.columns().iter().enumerate() {
            let expected = if column < strings {
                Some(group_rows)
            } else {
                vector_values
            };
            ensure!(
                u64::try_from(chunk.num_values()).ok() == expected,
                "row group {group} claims {group_rows} rows, but its column {column} holds {} values",
                chunk.num_values()
            );
        }
        rows = rows
            .checked_add(group_rows)
            .context("the row groups' row counts overflow")?;
    }
    ensure!(
        u64::try_from(claimed).ok() == Some(rows),
        "its footer claims {claimed} rows, its row groups hold {rows}"
    );
    let values = rows.checked_mul(dim as u64);
    let most = file_bytes.saturating_mul(MAX_VALUES_PER_FILE_BYTE);
    ensure!(
        values.is_some_and(|v| v <= most) && rows <= file_bytes,
        "it claims {rows} rows of {dim} values, more than its {file_bytes} bytes can hold: a damaged file"
    );
    usize::try_from(rows).context("too many rows for this machine")
}

thread_local! {
    /// Whether a panic on this thread is the Parquet reader's, caught and reported by
    /// [`Part::read`].
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Puts a panic hook before the current one that stays silent for [`QUIET_PANICS`].
fn install_quiet_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|quiet| quiet.get()) {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(items: usize, dim: usize) -> Part {
        Part {
            fingerprint: Fingerprint([7; 32]),
            dim,
            shard: Shard::new(1, 3).unwrap(),
            columns: vec!["gender".into(), "article type".into()],
            items: (0..items)
                .map(|i| Item {
                    id: format!("item-{i}"),
                    source: format!("{i}.jpg"),
                    digest: format!("{i:064x}"),
                    metadata: vec!["Women".into(), format!("kind é {i}")],
                })
                .collect(),
            vectors: (0..items * dim).map(|v| (v as f32 * 0.37).sin()).collect(),
            skipped: vec![Skipped {
                file: "bad.jpg".into(),
                reason: "truncated JPEG".into(),
            }],
        }
    }

    #[test]
    fn a_part_reads_back_as_written_across_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        for (items, dim) in [(0, 4), (3, 5), (ROWS_PER_GROUP + 5, 3)] {
            let written = part(items, dim);
            let path = dir.path().join(format!("part-{items}.parquet"));
            written.write(&path).unwrap();
            let read = Part::read(&path).unwrap();
            assert_eq!(read, written, "{items} items");
        }
        let written = part(2, 4);
        assert_eq!(written.vector(1), &written.vectors[4..8]);
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.parquet");
        part(20, 8).write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.parquet");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", Part::read(&cut).unwrap_err());
        assert!(err.contains("cut.parquet"), "{err}");
        let text = dir.path().join("text.parquet");
        std::fs::write(&text, "id,source\n").unwrap();
        let err = format!("{:#}", Part::read(&text).unwrap_err());
        assert!(err.contains("text.parquet"), "{err}");
        // Any flipped byte or cut: an error or a part that reads differently, never a panic.
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x5a;
            std::fs::write(&cut, &damaged).unwrap();
            let _ = Part::read(&cut);
            std::fs::write(&cut, &bytes[..at]).unwrap();
            assert!(Part::read(&cut).is_err(), "cut at {at}");
        }
    }

    /// The file with its footer's row count (FileMetaData field 3, the first i64 field in the
    /// footer's Thrift compact encoding: header 0x16, then a zigzag varint) set to `rows`.
    fn with_footer_row_count(bytes: &[u8], written: u64, rows: u64) -> Vec<u8> {
        let varint = |mut n: u64| {
            let mut out = Vec::new();
            while n >= 0x80 {
                out.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
            out
        };
        let footer_len =
            u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
        let start = bytes.len() - 8 - footer_len as usize;
        let footer = &bytes[start..bytes.len() - 8];
        let mut needle = vec![0x16];
        needle.extend(varint(written * 2));
        let at = footer
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the footer's row count");
        let mut patched_footer = footer[..at].to_vec();
        patched_footer.push(0x16);
        patched_footer.extend(varint(rows * 2));
        patched_footer.extend(&footer[at + needle.len()..]);
        let mut out = bytes[..start].to_vec();
        out.extend(&patched_footer);
        out.extend((patched_footer.len() as u32).to_le_bytes());
        out.extend(b"PAR1");
        out
    }

    #[test]
    fn a_footer_claiming_more_rows_than_the_file_holds_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.parquet");
        part(37, 8).write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // The same count written back reads as before: the patching itself is sound.
        std::fs::write(&path, with_footer_row_count(&bytes, 37, 37)).unwrap();
        assert_eq!(Part::read(&path).unwrap(), part(37, 8));
        for rows in [38, 20_000_000_000] {
            std::fs::write(&path, with_footer_row_count(&bytes, 37, rows)).unwrap();
            let err = format!("{:#}", Part::read(&path).unwrap_err());
            assert!(
                err.contains("part.parquet") && err.contains(&format!("claims {rows} rows")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_label_column_named_like_the_parts_own_is_refused() {
        let mut clash = part(1, 2);
        clash.columns[0] = "digest".into();
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            clash.write(&dir.path().join("p.parquet")).unwrap_err()
        );
        assert!(err.contains("\"digest\""), "{err}");
    }
}
