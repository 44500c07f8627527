//! Label-based quality of a table: leave-one-out precision@k per label column (each item queries
//! all the others), and agreement of a compact table's neighbour lists with a reference table.

use anyhow::{ensure, Result};
use rayon::prelude::*;
use serde::Serialize;

use crate::catalogue::Table;
use crate::labels::Labels;

/// Precision@k for one label column.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnPrecision {
    pub column: String,
    /// Mean over queries of the share of the k neighbours that share the query's label.
    pub precision: f64,
    /// Items that had a label in this column and were used as queries.
    pub queries: usize,
}

/// Leave-one-out precision@k of `table` for each of `columns`, labels from `labels` by item id
/// (items without a row, or with an empty value, are not used as queries, nor counted as matches).
pub fn precision_at_k(
    table: &Table,
    labels: &Labels,
    columns: &[String],
    k: usize,
) -> Result<Vec<ColumnPrecision>> {
    ensure!(k >= 1, "k must be at least 1");
    ensure!(
        table.len() > k,
        "table {} has {} items, too few for k = {k}",
        table.path().display(),
        table.len()
    );
    let column_at: Vec<usize> = columns
        .iter()
        .map(|c| labels.column(c))
        .collect::<Result<_>>()?;
    let item_labels: Vec<Option<Vec<String>>> = table
        .items()
        .iter()
        .map(|item| {
            labels
                .for_id(&item.id)
                .map(|row| column_at.iter().map(|&c| row.values[c].clone()).collect())
        })
        .collect();
    let neighbours = all_neighbours(table, k)?;
    Ok(columns
        .iter()
        .enumerate()
        .map(|(c, column)| {
            let (sum, queries) = neighbours
                .iter()
                .enumerate()
                .filter_map(|(q, hits)| {
                    let label = item_labels[q]
                        .as_ref()
                        .map(|l| &l[c])
                        .filter(|l| !l.is_empty())?;
                    let same = hits
                        .iter()
                        .filter(|&&n| item_labels[n].as_ref().is_some_and(|l| &l[c] == label))
                        .count();
                    Some(same as f64 / k as f64)
                })
                .fold((0.0, 0usize), |(s, n), p| (s + p, n + 1));
            ColumnPrecision {
                column: column.clone(),
                precision: if queries > 0 {
                    sum / queries as f64
                } else {
                    0.0
                },
                queries,
            }
        })
        .collect())
}

/// For every item, the indices of its k nearest other items (leave-one-out), on all cores.
pub fn all_neighbours(table: &Table, k: usize) -> Result<Vec<Vec<usize>>> {
    (0..table.len())
        .into_par_iter()
        .map(|q| {
            let query = table.vector(q);
            Ok(table
                .nearest(&query, k, Some(q))?
                .iter()
                .map(|h| h.index)
                .collect())
        })
        .collect()
}

/// Mean share of each item's k reference neighbours (from `reference`, e.g. an f32 table of the
/// same images) that `table` also returns: how much the compact storage changes the results.
pub fn neighbour_recall(table: &Table, reference: &Table, k: usize) -> Result<f64> {
    ensure!(
        table
            .items()
            .iter()
            .map(|i| &i.id)
            .eq(reference.items().iter().map(|i| &i.id)),
        "tables {} and {} do not hold the same items in the same order",
        table.path().display(),
        reference.path().display()
    );
    let ours = all_neighbours(table, k)?;
    let theirs = all_neighbours(reference, k)?;
    let hits: usize = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.iter().filter(|i| b.contains(i)).count())
        .sum();
    Ok(hits as f64 / (k * table.len()) as f64)
}
