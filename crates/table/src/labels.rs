//! The catalogue's labels CSV: an `id` column (and optionally `filename`) naming each item, every
//! other column a metadata column (articleType, baseColour, …) carried into the table.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One labelled row.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow {
    pub id: String,
    pub values: Vec<String>,
}

/// The parsed CSV: metadata column names, and rows by image file name and by id.
#[derive(Debug, Default)]
pub struct Labels {
    pub columns: Vec<String>,
    by_filename: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
    rows: Vec<LabelRow>,
}

impl Labels {
    /// Reads a labels CSV. It must have an `id` column; a `filename` column, if present, maps image
    /// files to rows (otherwise an image's file stem is its id).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_inner(path).with_context(|| format!("cannot read labels {}", path.display()))
    }

    fn load_inner(path: &Path) -> Result<Self> {
        let mut reader = csv::Reader::from_path(path)?;
        let headers = reader.headers()?.clone();
        let Some(id_at) = headers.iter().position(|h| h == "id") else {
            bail!(
                "no `id` column (columns: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            );
        };
        let filename_at = headers.iter().position(|h| h == "filename");
        let keep: Vec<usize> = (0..headers.len())
            .filter(|&i| i != id_at && Some(i) != filename_at)
            .collect();
        let mut labels = Labels {
            columns: keep.iter().map(|&i| headers[i].to_string()).collect(),
            ..Default::default()
        };
        for (line, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("bad row {}", line + 2))?;
            let id = record[id_at].trim().to_string();
            if id.is_empty() {
                bail!("row {} has an empty id", line + 2);
            }
            let at = labels.rows.len();
            if labels.by_id.insert(id.clone(), at).is_some() {
                bail!("row {}: id {id} appears twice", line + 2);
            }
            // An empty filename leaves the row to be found by its id.
            let filename = filename_at.map(|f| record[f].trim()).unwrap_or_default();
            if !filename.is_empty() {
                if let Some(first) = labels.by_filename.insert(filename.to_string(), at) {
                    bail!(
                        "rows {} and {}: filename {filename} appears twice",
                        first + 2,
                        line + 2
                    );
                }
            }
            labels.rows.push(LabelRow {
                id,
                values: keep.iter().map(|&i| record[i].trim().to_string()).collect(),
            });
        }
        Ok(labels)
    }

    /// The row for an image file: by its `filename`, else by its stem as id.
    pub fn for_file(&self, file_name: &str) -> Option<&LabelRow> {
        let stem = Path::new(file_name).file_stem()?.to_str()?;
        self.by_filename
            .get(file_name)
            .or_else(|| self.by_id.get(stem))
            .map(|&i| &self.rows[i])
    }

    /// The row with this id.
    pub fn for_id(&self, id: &str) -> Option<&LabelRow> {
        self.by_id.get(id).map(|&i| &self.rows[i])
    }

    /// The index of a column by name, or an error listing the columns there are.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c == name)
            .with_context(|| format!("no column `{name}` (columns: {})", self.columns.join(", ")))
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_files_and_ids_to_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.csv");
        std::fs::write(
            &path,
            "filename,id,articleType,baseColour\nx1.jpg,101,Shirts,Blue\n,102,Jeans,Black\n",
        )
        .unwrap();
        let labels = Labels::load(&path).unwrap();
        assert_eq!(labels.columns, vec!["articleType", "baseColour"]);
        assert_eq!(labels.for_file("x1.jpg").unwrap().id, "101");
        assert_eq!(
            labels.for_file("102.png").unwrap().values,
            vec!["Jeans", "Black"]
        );
        assert!(labels.for_file("999.jpg").is_none());
        assert_eq!(labels.column("baseColour").unwrap(), 1);
        assert!(labels
            .column("size")
            .unwrap_err()
            .to_string()
            .contains("articleType, baseColour"));
    }

    #[test]
    fn errors_name_the_file_and_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, "name,colour\na,b\n").unwrap();
        let err = format!("{:#}", Labels::load(&path).unwrap_err());
        assert!(
            err.contains("bad.csv") && err.contains("no `id` column"),
            "{err}"
        );
        std::fs::write(&path, "id,colour\n1,red\n1,blue\n").unwrap();
        let err = format!("{:#}", Labels::load(&path).unwrap_err());
        assert!(err.contains("id 1 appears twice"), "{err}");
    }

    #[test]
    fn a_filename_given_twice_is_an_error_naming_both_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("twice.csv");
        std::fs::write(
            &path,
            "filename,id,colour\nx1.jpg,1,red\n,2,blue\n,3,green\nx1.jpg,4,black\n",
        )
        .unwrap();
        let err = format!("{:#}", Labels::load(&path).unwrap_err());
        assert!(
            err.contains("twice.csv")
                && err.contains("rows 2 and 5: filename x1.jpg appears twice"),
            "{err}"
        );
        // Rows without a filename (found by id) are not duplicates of each other.
        std::fs::write(
            &path,
            "filename,id,colour\nx1.jpg,1,red\n,2,blue\n,3,green\n",
        )
        .unwrap();
        let labels = Labels::load(&path).unwrap();
        assert_eq!(labels.for_file("3.jpg").unwrap().values, vec!["green"]);
    }
}
