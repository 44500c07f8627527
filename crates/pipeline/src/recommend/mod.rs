//! Recommendations beyond look-alikes (`[recommend]`): the visual top-N re-ranked by the
//! catalogue's metadata, the store's stock and the scan history of many kiosks; and "goes with"
//! (complete the look).
//!
//! [`Recommender::rank`], in this order:
//! 1. **candidates**: the visual top-N; with a trends sidecar also the scanned item's co-scan
//!    neighbours and the most popular items of its articleType, each scored against the frame;
//! 2. **relevance** = visual score + `co_scan_weight` × (co-scan score, scaled to the anchor's
//!    best) + `co_scan_weight` / 4 × popularity;
//! 3. **filters**: other genders than the scanned item's (Unisex always passes) and items the
//!    stock file marks out of stock are dropped;
//! 4. **the anchor**: the best visual match stays first when its score is at least `confident`
//!    (what the shopper holds is what they asked about), whatever the filters say;
//! 5. **variants**: of items with the same articleType whose embeddings are at least `variants`
//!    alike (0 = off), only the most relevant stays;
//! 6. **diversity**: the rest is picked by maximal marginal relevance with λ = `diversity`.
//!
//! With every stage off (no gender filter, no stock, no variants, λ = 1, no trends) the result is
//! the visual list itself.

pub mod stock;
pub mod trends;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::stock::Stock;
use self::trends::Trends;
use crate::config::RecommendConfig;
use kiosk_table::catalogue::{dot, Hit, Table};

/// Where a recommended item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The visual search.
    Visual,
    /// Scanned with the anchor by other shoppers.
    CoScan,
    /// Popular in the store.
    Popular,
    /// A complementary category, by colour harmony and style ("goes with").
    Harmony,
}

/// One recommended item and what its relevance is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    #[serde(skip)]
    pub index: usize,
    pub source: Source,
    /// The relevance it was ranked by.
    #[serde(rename = "relevance")]
    pub score: f32,
    /// Cosine similarity to what was scanned.
    pub visual: f32,
    /// Co-scan score with the anchor, scaled to the anchor's best (0–1).
    pub co_scan: f32,
    /// Popularity in the store, scaled to the most popular item (0–1).
    pub popularity: f32,
}

/// The metadata columns the rules read.
#[derive(Debug, Clone, Copy, Default)]
struct Columns {
    gender: Option<usize>,
    sub_category: Option<usize>,
    article_type: Option<usize>,
    colour: Option<usize>,
    usage: Option<usize>,
    season: Option<usize>,
}

/// The rules and the data they use, for one table.
#[derive(Clone)]
pub struct Recommender {
    settings: RecommendConfig,
    columns: Columns,
    stock: Option<Arc<Stock>>,
    trends: Option<Arc<Trends>>,
}

/// A candidate during ranking.
struct Candidate {
    index: usize,
    source: Source,
    visual: f32,
    co_scan: f32,
    popularity: f32,
    relevance: f32,
}

impl Candidate {
    /// A candidate from `source` with its visual score; the rest is scored later.
    fn new(index: usize, source: Source, visual: f32) -> Self {
        Self {
            index,
            source,
            visual,
            co_scan: 0.0,
            popularity: 0.0,
            relevance: 0.0,
        }
    }
}

impl Recommender {
    /// The rules of `settings` over `table`, with the store's stock and the scan history when
    /// given.
    pub fn new(
        settings: RecommendConfig,
        table: &Table,
        stock: Option<Arc<Stock>>,
        trends: Option<Arc<Trends>>,
    ) -> Self {
        let columns = Columns {
            gender: table.column("gender"),
            sub_category: table.column("subCategory"),
            article_type: table.column("articleType"),
            colour: table.column("baseColour"),
            usage: table.column("usage"),
            season: table.column("season"),
        };
        if settings.gender && columns.gender.is_none() {
            tracing::warn!(
                "recommend.gender: the table {} has no `gender` column: not filtered by gender",
                table.path().display()
            );
        }
        Recommender {
            settings,
            columns,
            stock,
            trends,
        }
    }

    /// How many visual candidates [`Recommender::rank`] wants.
    pub fn candidates(&self) -> usize {
        self.settings.candidates
    }

    pub fn settings(&self) -> &RecommendConfig {
        &self.settings
    }

    /// The query's similarity to item `index`, or `None` (logged) when its row cannot be read: the
    /// item is left out of the candidates.
    fn visual_score(table: &Table, query: &[f32], index: usize) -> Option<f32> {
        table
            .score(query, index)
            .inspect_err(|err| tracing::warn!("{err:#}"))
            .ok()
    }

    fn value(table: &Table, index: usize, column: Option<usize>) -> Option<&str> {
        column.and_then(|c| table.item(index).metadata(c))
    }

    /// Whether item `index` passes the filters (gender, stock) for a scan of `anchor`.
    pub fn allowed(&self, table: &Table, anchor: usize, index: usize) -> bool {
        if let Some(stock) = &self.stock {
            if !stock.in_stock(index) {
                return false;
            }
        }
        if self.settings.gender {
            let gender = |i| Self::value(table, i, self.columns.gender);
            if let (Some(a), Some(b)) = (gender(anchor), gender(index)) {
                if !(a == b || a == "Unisex" || b == "Unisex") {
                    return false;
                }
            }
        }
        true
    }

    /// The recommended list for a scan whose embedding is `query` and whose visual top-N is
    /// `hits` (best first): at most `top` items.
    pub fn rank(&self, table: &Table, query: &[f32], hits: &[Hit], top: usize) -> Vec<Ranked> {
        let Some(anchor) = hits.first().copied() else {
            return Vec::new();
        };
        let mut candidates: Vec<Candidate> = hits
            .iter()
            .map(|hit| Candidate::new(hit.index, Source::Visual, hit.score))
            .collect();
        if let Some(trends) = &self.trends {
            self.add_from_trends(trends, table, query, anchor.index, top, &mut candidates);
        }
        let weight = self.settings.co_scan_weight;
        for c in &mut candidates {
            c.relevance = c.visual + weight * c.co_scan + weight / 4.0 * c.popularity;
        }
        let confident = anchor.score >= self.settings.confident;
        candidates.retain(|c| {
            (confident && c.index == anchor.index) || self.allowed(table, anchor.index, c.index)
        });
        candidates.sort_by(|a, b| {
            b.relevance
                .total_cmp(&a.relevance)
                .then(a.index.cmp(&b.index))
        });

        let mut vectors = VectorCache::new(table);
        let mut selected: Vec<Candidate> = Vec::new();
        if confident {
            if let Some(i) = candidates.iter().position(|c| c.index == anchor.index) {
                selected.push(candidates.remove(i));
            }
        }
        if self.settings.variants > 0.0 {
            candidates = self.without_variants(table, candidates, &selected, &mut vectors);
        }
        self.select_diverse(candidates, &mut selected, top, &mut vectors);
        selected
            .into_iter()
            .map(|c| Ranked {
                index: c.index,
                source: c.source,
                score: c.relevance,
                visual: c.visual,
                co_scan: c.co_scan,
                popularity: c.popularity,
            })
            .collect()
    }

    /// The anchor's co-scans (scored on the visual ones, added when new) and the popular items
    /// of its articleType; every candidate's popularity.
    fn add_from_trends(
        &self,
        trends: &Trends,
        table: &Table,
        query: &[f32],
        anchor: usize,
        top: usize,
        candidates: &mut Vec<Candidate>,
    ) {
        let mut position: HashMap<usize, usize> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (c.index, i))
            .collect();
        for (index, scaled) in trends.co_scans(anchor) {
            match position.get(&index) {
                Some(&i) => candidates[i].co_scan = scaled,
                None => {
                    let Some(visual) = Self::visual_score(table, query, index) else {
                        continue;
                    };
                    position.insert(index, candidates.len());
                    candidates.push(Candidate {
                        co_scan: scaled,
                        ..Candidate::new(index, Source::CoScan, visual)
                    });
                }
            }
        }
        let article = Self::value(table, anchor, self.columns.article_type);
        let popular = trends
            .popular()
            .iter()
            .filter(|&&i| Self::value(table, i, self.columns.article_type) == article)
            .take(top);
        for &index in popular {
            if let std::collections::hash_map::Entry::Vacant(slot) = position.entry(index) {
                let Some(visual) = Self::visual_score(table, query, index) else {
                    continue;
                };
                slot.insert(candidates.len());
                candidates.push(Candidate::new(index, Source::Popular, visual));
            }
        }
        for candidate in candidates.iter_mut() {
            candidate.popularity = trends.popularity(candidate.index);
        }
    }

    /// Of near-identical items of one articleType, the most relevant stays (`candidates` are in
    /// order of relevance; `selected` are kept already).
    fn without_variants(
        &self,
        table: &Table,
        candidates: Vec<Candidate>,
        selected: &[Candidate],
        vectors: &mut VectorCache,
    ) -> Vec<Candidate> {
        let mut kept: Vec<Candidate> = Vec::new();
        for candidate in candidates {
            let article = Self::value(table, candidate.index, self.columns.article_type);
            let variant = selected.iter().chain(&kept).any(|k| {
                Self::value(table, k.index, self.columns.article_type) == article
                    && vectors.similarity(k.index, candidate.index) >= self.settings.variants
            });
            if !variant {
                kept.push(candidate);
            }
        }
        kept
    }

    /// Diversity: adds candidates to `selected` by maximal marginal relevance, up to `top`.
    fn select_diverse(
        &self,
        mut candidates: Vec<Candidate>,
        selected: &mut Vec<Candidate>,
        top: usize,
        vectors: &mut VectorCache,
    ) {
        let lambda = self.settings.diversity;
        while selected.len() < top && !candidates.is_empty() {
            let mut best = 0;
            let mut best_value = f32::NEG_INFINITY;
            for (i, c) in candidates.iter().enumerate() {
                let value = if lambda >= 1.0 {
                    c.relevance
                } else {
                    let redundancy = selected
                        .iter()
                        .map(|s| vectors.similarity(s.index, c.index))
                        .fold(0.0f32, f32::max);
                    lambda * c.relevance - (1.0 - lambda) * redundancy
                };
                if value > best_value {
                    best = i;
                    best_value = value;
                }
            }
            selected.push(candidates.remove(best));
        }
    }

    /// Items that go with `anchor` (complete the look): from the complementary subCategories of
    /// `[recommend.complements]`, the same gender and in stock, one category after another,
    /// ranked by co-scans with the anchor where there are some, else by colour harmony and
    /// style (usage, season) with the anchor, then popularity.
    pub fn goes_with(&self, table: &Table, anchor: usize, top: usize) -> Vec<Ranked> {
        self.completing(table, &[anchor], top)
    }

    /// Items that complete an outfit whose garments matched `anchors` (best match of each): as
    /// [`Self::goes_with`] over the categories the anchors' complements name and the outfit does
    /// not wear (the first complement of each garment, then the second of each, …), each item
    /// scored against every anchor (co-scans summed, harmony and style averaged).
    pub fn completing(&self, table: &Table, anchors: &[usize], top: usize) -> Vec<Ranked> {
        let sub = |i: usize| Self::value(table, i, self.columns.sub_category);
        let worn: Vec<&str> = anchors.iter().filter_map(|&a| sub(a)).collect();
        let lists: Vec<&Vec<String>> = worn
            .iter()
            .filter_map(|s| self.settings.complements.get(*s))
            .collect();
        let mut wanted: Vec<&str> = Vec::new();
        for rank in 0..lists.iter().map(|l| l.len()).max().unwrap_or(0) {
            for category in lists.iter().filter_map(|l| l.get(rank)) {
                if !worn.contains(&category.as_str()) && !wanted.contains(&category.as_str()) {
                    wanted.push(category);
                }
            }
        }
        if wanted.is_empty() {
            return Vec::new();
        }
        let co_scans: Vec<HashMap<usize, f32>> = match &self.trends {
            Some(trends) => anchors
                .iter()
                .map(|&a| trends.co_scans(a).collect())
                .collect(),
            None => Vec::new(),
        };
        let same = |anchor: usize, i: usize, column: Option<usize>| {
            let a = Self::value(table, anchor, column);
            a.is_some() && a == Self::value(table, i, column)
        };
        let share = 1.0 / anchors.len() as f32;
        let anchor_colours: Vec<&str> = anchors
            .iter()
            .map(|&a| Self::value(table, a, self.columns.colour).unwrap_or(""))
            .collect();
        // Per wanted category, its items best first.
        let mut per_category: BTreeMap<usize, Vec<Ranked>> = BTreeMap::new();
        for index in 0..table.len() {
            let Some(rank) = sub(index).and_then(|s| wanted.iter().position(|w| *w == s)) else {
                continue;
            };
            if !anchors.iter().all(|&a| self.allowed(table, a, index)) {
                continue;
            }
            let colour = Self::value(table, index, self.columns.colour).unwrap_or("");
            let popularity = self.trends.as_ref().map_or(0.0, |t| t.popularity(index));
            let co_scan: f32 = co_scans.iter().filter_map(|c| c.get(&index)).sum();
            let (mut harmony, mut style) = (0.0, 0.0);
            for (&anchor, anchor_colour) in anchors.iter().zip(&anchor_colours) {
                harmony += share * colour_harmony(anchor_colour, colour);
                style += share
                    * (0.2 * f32::from(same(anchor, index, self.columns.usage))
                        + 0.1 * f32::from(same(anchor, index, self.columns.season)));
            }
            let score = co_scan * 2.0 + harmony + style + 0.1 * popularity;
            per_category.entry(rank).or_default().push(Ranked {
                index,
                source: if co_scan > 0.0 {
                    Source::CoScan
                } else {
                    Source::Harmony
                },
                score,
                visual: 0.0,
                co_scan,
                popularity,
            });
        }
        for list in per_category.values_mut() {
            list.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
            list.reverse();
        }
        // One category after another: the best of each, then the second of each, ….
        let mut out = Vec::new();
        while out.len() < top && per_category.values().any(|l| !l.is_empty()) {
            for list in per_category.values_mut() {
                if out.len() < top {
                    if let Some(item) = list.pop() {
                        out.push(item);
                    }
                }
            }
        }
        out
    }
}

/// Neutral colours ground any other.
const NEUTRALS: &[&str] = &[
    "Black",
    "White",
    "Grey",
    "Grey Melange",
    "Charcoal",
    "Navy Blue",
    "Beige",
    "Cream",
    "Off White",
    "Khaki",
    "Brown",
    "Tan",
    "Taupe",
    "Silver",
    "Nude",
    "Skin",
];

/// How well two catalogue `baseColour`s go together (0–1): a neutral with a colour 1.0, two
/// neutrals 0.9, one colour with itself 0.7 (tonal), two different colours 0.3.
pub fn colour_harmony(a: &str, b: &str) -> f32 {
    let neutral = |c: &str| NEUTRALS.contains(&c);
    match (neutral(a), neutral(b)) {
        (true, false) | (false, true) => 1.0,
        (true, true) => 0.9,
        (false, false) if a == b => 0.7,
        _ => 0.3,
    }
}

/// Stored vectors decoded once per ranking.
struct VectorCache<'t> {
    table: &'t Table,
    vectors: HashMap<usize, Vec<f32>>,
}

impl<'t> VectorCache<'t> {
    fn new(table: &'t Table) -> Self {
        VectorCache {
            table,
            vectors: HashMap::new(),
        }
    }

    /// The two items' cosine similarity; 0 (unrelated) for an item whose row cannot be read,
    /// which is logged.
    fn similarity(&mut self, a: usize, b: usize) -> f32 {
        for i in [a, b] {
            if !self.vectors.contains_key(&i) {
                match self.table.vector(i) {
                    Ok(vector) => self.vectors.insert(i, vector),
                    Err(err) => {
                        tracing::warn!("{err:#}");
                        return 0.0;
                    }
                };
            }
        }
        dot(&self.vectors[&a], &self.vectors[&b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiosk_table::catalogue::{Element, Item, TableBuilder};
    use kiosk_util::digest::Fingerprint;

    /// id, gender, subCategory, articleType, colour, vector.
    type Row<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, [f32; 4]);

    /// The rows as a loaded f32 table.
    fn table(items: &[Row]) -> (tempfile::TempDir, Table) {
        let columns = [
            "gender",
            "subCategory",
            "articleType",
            "baseColour",
            "usage",
            "season",
        ];
        let mut builder = TableBuilder::new(
            Fingerprint([7; 32]),
            4,
            columns.iter().map(|c| c.to_string()).collect(),
        );
        for (id, gender, sub, article, colour, vector) in items {
            let item = Item {
                id: id.to_string(),
                source: format!("{id}.jpg"),
                digest: String::new(),
                metadata: [gender, sub, article, colour, &"Casual", &"Summer"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            };
            builder.push(item, vector).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.fkt");
        builder.write(&path, Element::F32).unwrap();
        let table = Table::load(&path).unwrap();
        (dir, table)
    }

    fn unit(v: [f32; 4]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn ids(table: &Table, ranked: &[Ranked]) -> Vec<String> {
        ranked
            .iter()
            .map(|r| table.item(r.index).id.to_string())
            .collect()
    }

    /// A shirt scanned: near it a variant of it, a women's shirt, a unisex one, a different
    /// men's shirt, jeans and shoes.
    fn shop() -> (tempfile::TempDir, Table) {
        table(&[
            (
                "shirt",
                "Men",
                "Topwear",
                "Shirts",
                "Blue",
                [1.0, 0.0, 0.0, 0.0],
            ),
            (
                "shirt-variant",
                "Men",
                "Topwear",
                "Shirts",
                "Blue",
                [0.999, 0.04, 0.0, 0.0],
            ),
            (
                "women-shirt",
                "Women",
                "Topwear",
                "Shirts",
                "Blue",
                [0.95, 0.3, 0.0, 0.0],
            ),
            (
                "unisex-tee",
                "Unisex",
                "Topwear",
                "Tshirts",
                "Red",
                [0.9, 0.0, 0.43, 0.0],
            ),
            (
                "other-shirt",
                "Men",
                "Topwear",
                "Shirts",
                "Green",
                [0.8, -0.6, 0.0, 0.0],
            ),
            (
                "jeans",
                "Men",
                "Bottomwear",
                "Jeans",
                "Black",
                [0.1, 0.0, 0.0, 1.0],
            ),
            (
                "red-jeans",
                "Men",
                "Bottomwear",
                "Jeans",
                "Red",
                [0.1, 0.0, 0.1, 1.0],
            ),
            (
                "women-jeans",
                "Women",
                "Bottomwear",
                "Jeans",
                "Black",
                [0.1, 0.1, 0.0, 1.0],
            ),
            (
                "shoes",
                "Men",
                "Shoes",
                "Casual Shoes",
                "White",
                [0.0, 0.0, 1.0, 0.2],
            ),
        ])
    }

    fn visual(table: &Table, query: &[f32]) -> Vec<Hit> {
        table.nearest(query, table.len(), None).unwrap()
    }

    #[test]
    fn with_every_stage_off_the_visual_list_is_unchanged() {
        let (_dir, t) = shop();
        let query = unit([1.0, 0.01, 0.0, 0.0]);
        let hits = visual(&t, &query);
        let off = Recommender::new(RecommendConfig::off(), &t, None, None);
        let ranked = off.rank(&t, &query, &hits, 5);
        let expected: Vec<usize> = hits.iter().take(5).map(|h| h.index).collect();
        assert_eq!(ranked.iter().map(|r| r.index).collect::<Vec<_>>(), expected);
        assert!(ranked.iter().all(|r| r.source == Source::Visual));
    }

    #[test]
    fn gender_stock_and_variants_filter_and_the_confident_match_stays_first() {
        let (_dir, t) = shop();
        let query = unit([1.0, 0.01, 0.0, 0.0]);
        let hits = visual(&t, &query);
        // The scanned shirt itself is out of stock: it still leads (it is what the shopper holds).
        let stock = Stock::default_with_out(&[0]);
        let settings = RecommendConfig {
            diversity: 1.0,
            ..RecommendConfig::default()
        };
        let r = Recommender::new(settings, &t, Some(Arc::new(stock)), None);
        let got = ids(&t, &r.rank(&t, &query, &hits, 4));
        assert_eq!(got[0], "shirt");
        assert!(!got.contains(&"women-shirt".to_string()), "{got:?}");
        assert!(!got.contains(&"shirt-variant".to_string()), "{got:?}");
        assert!(got.contains(&"unisex-tee".to_string()), "{got:?}");
        // Not confident: the anchor obeys the filters too.
        let unsure = RecommendConfig {
            confident: 1.01,
            diversity: 1.0,
            ..RecommendConfig::default()
        };
        let r = Recommender::new(
            unsure,
            &t,
            Some(Arc::new(Stock::default_with_out(&[0]))),
            None,
        );
        let got = ids(&t, &r.rank(&t, &query, &hits, 4));
        assert!(!got.contains(&"shirt".to_string()), "{got:?}");
    }

    #[test]
    fn diversity_trades_a_close_look_alike_for_a_different_item() {
        let (_dir, t) = shop();
        let query = unit([1.0, 0.01, 0.0, 0.0]);
        let hits = visual(&t, &query);
        let plain = RecommendConfig {
            gender: false,
            variants: 0.0,
            diversity: 1.0,
            ..RecommendConfig::default()
        };
        let diverse = RecommendConfig {
            diversity: 0.5,
            ..plain.clone()
        };
        let second = |settings: RecommendConfig| {
            let r = Recommender::new(settings, &t, None, None);
            ids(&t, &r.rank(&t, &query, &hits, 2))[1].clone()
        };
        assert_eq!(second(plain), "shirt-variant");
        assert_ne!(second(diverse), "shirt-variant");
    }

    #[test]
    fn co_scans_bring_in_items_the_picture_does_not() {
        let (_dir, t) = shop();
        let query = unit([1.0, 0.01, 0.0, 0.0]);
        // Only the 3 nearest by picture; shoppers who scanned the shirt also scanned the jeans.
        let hits: Vec<Hit> = visual(&t, &query).into_iter().take(3).collect();
        let trends = Trends::from_parts(&[(0, &[(5, 0.8)])], &[0, 5]);
        let settings = RecommendConfig {
            co_scan_weight: 1.0,
            diversity: 1.0,
            ..RecommendConfig::default()
        };
        let r = Recommender::new(settings, &t, None, Some(Arc::new(trends)));
        let ranked = r.rank(&t, &query, &hits, 3);
        let jeans = ranked
            .iter()
            .find(|x| x.index == 5)
            .expect("the co-scanned jeans");
        assert_eq!(jeans.source, Source::CoScan);
        assert_eq!(jeans.co_scan, 1.0);
    }

    #[test]
    fn goes_with_shows_complementary_categories_of_the_same_gender_by_harmony() {
        let (_dir, t) = shop();
        let r = Recommender::new(RecommendConfig::default(), &t, None, None);
        let got = ids(&t, &r.goes_with(&t, 0, 3));
        // Topwear → Bottomwear first (black jeans ground the blue shirt), then Shoes.
        assert_eq!(got, ["jeans", "shoes", "red-jeans"]);
        assert!(
            r.goes_with(&t, 8, 3).iter().all(|x| x.index != 7),
            "no women's jeans"
        );
        assert_eq!(colour_harmony("Blue", "Black"), 1.0);
        assert_eq!(colour_harmony("Blue", "Red"), 0.3);
    }

    #[test]
    fn an_outfit_is_completed_by_the_categories_it_does_not_wear() {
        let (_dir, t) = shop();
        let r = Recommender::new(RecommendConfig::default(), &t, None, None);
        // A shirt with jeans: no more tops or bottoms, shoes (the watches and belts they would
        // take next are not in this shop).
        assert_eq!(ids(&t, &r.completing(&t, &[0, 5], 3)), ["shoes"]);
        // A women's top with men's jeans: nothing fits both.
        assert!(r.completing(&t, &[2, 5], 3).is_empty());
        assert!(r.completing(&t, &[], 3).is_empty());
    }
}
