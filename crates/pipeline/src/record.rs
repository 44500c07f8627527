//! The scan record: one line of the scan log (JSON), as the kiosk writes it and the uplink and
//! `trends` read it — one type for all of them. Versioned: a line without `version` was written
//! before the field was kept (version 1, whose `error` was a plain string) and still reads.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::query::FoundBy;
use crate::recommend::Ranked;
use kiosk_vision::colour;

/// The version this build writes.
pub const VERSION: u32 = 2;

/// One scan, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanRecord {
    #[serde(default = "version_1")]
    pub version: u32,
    /// When the scan was logged (RFC 3339, milliseconds).
    pub time: String,
    /// The run of the service (scan numbers start again at 1 in each).
    pub boot: String,
    pub scan: u64,
    pub outcome: Outcome,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "error_of_any_version"
    )]
    pub error: Option<ScanError>,
    /// How the item was found in the frame (`none` when the scan failed before looking).
    #[serde(with = "found_or_none")]
    pub region: Option<FoundBy>,
    /// The colour correction applied to what was embedded, and where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<colour::Applied>,
    #[serde(default)]
    pub results: Vec<LoggedItem>,
    /// A person's garments, each with its class, box, colour and results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub garments: Vec<LoggedGarment>,
    /// Why an outfit scan looked up the whole frame instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Presses that arrived during this scan and were merged into one queued scan.
    #[serde(default)]
    pub coalesced: u32,
    #[serde(default)]
    pub latency_ms: ScanLatency,
}

fn version_1() -> u32 {
    1
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Items were found (or a person's garments).
    Ok,
    /// Nothing in front of the camera (the frame matches the empty scene).
    Nothing,
    /// The scan failed: see its error.
    Error,
}

/// Why a scan failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ScanError {
    /// The camera is gone: it is reopened later.
    CameraLost(String),
    /// Only bad frames came.
    BadFrame(String),
    /// The model, the parser or the table failed on the frame.
    Model(String),
    /// A version-1 record's error, which said only its message.
    Other(String),
}

impl ScanError {
    /// What went wrong, in words.
    pub fn message(&self) -> &str {
        match self {
            ScanError::CameraLost(m)
            | ScanError::BadFrame(m)
            | ScanError::Model(m)
            | ScanError::Other(m) => m,
        }
    }
}

/// `error` as version 2 writes it (`{"kind": …, "message": …}`) or version 1 did (the message).
fn error_of_any_version<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ScanError>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum AnyVersion {
        Typed(ScanError),
        Text(String),
    }
    Ok(
        Option::<AnyVersion>::deserialize(deserializer)?.map(|error| match error {
            AnyVersion::Typed(error) => error,
            AnyVersion::Text(message) => ScanError::Other(message),
        }),
    )
}

/// `region`: how the item was found, or `none`.
mod found_or_none {
    use super::*;

    pub fn serialize<S: Serializer>(found: &Option<FoundBy>, s: S) -> Result<S::Ok, S::Error> {
        match found {
            Some(found) => found.serialize(s),
            None => s.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FoundBy>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum FoundOrNone {
            Found(FoundBy),
            Other(String),
        }
        match FoundOrNone::deserialize(d)? {
            FoundOrNone::Found(found) => Ok(Some(found)),
            FoundOrNone::Other(none) if none == "none" => Ok(None),
            FoundOrNone::Other(other) => Err(serde::de::Error::custom(format!(
                "region {other:?} is not one of reference, region, salient, centre, nothing, outfit, none"
            ))),
        }
    }
}

/// A recommended item in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedItem {
    pub id: String,
    pub score: f32,
    /// Its source and score parts, when `[recommend]` ranked it.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub ranked: Option<Ranked>,
}

/// A garment of an outfit scan in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedGarment {
    pub class: String,
    pub bbox: [u32; 4],
    pub share: f32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut_by_edge: bool,
    pub colour: String,
    pub rgb: [u8; 3],
    pub results: Vec<LoggedItem>,
}

/// Milliseconds per stage of one scan, press to its logged outcome (its screen follows at once).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScanLatency {
    /// Press to scan start (non-zero for a queued scan).
    pub wait: f64,
    pub capture: f64,
    /// Parsing the frame into garments (with `[outfit]`).
    pub parse: f64,
    /// Finding the item against the empty scene.
    pub foreground: f64,
    pub preprocess: f64,
    pub embed: f64,
    pub search: f64,
    /// Re-ranking the visual candidates into recommendations.
    pub rank: f64,
    /// Press to the scan's log line, synced (its screen is shown next).
    pub total: f64,
}

impl ScanRecord {
    /// Reads one log line.
    pub fn parse(line: &str) -> serde_json::Result<Self> {
        serde_json::from_str(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as kiosks wrote them before the record had a version: an item, an error, an outfit.
    const VERSION_1: &str = r#"{"time":"2026-12-01T10:00:00.123Z","boot":"b1","scan":1,"outcome":"ok","region":"reference","colour":{"source":"card","gains":[1.1,1.0,0.9]},"results":[{"id":"1000","score":0.81,"source":"visual","relevance":0.8,"visual":0.81,"co_scan":0.0,"popularity":0.2}],"coalesced":0,"latency_ms":{"wait":0.0,"capture":12.0,"parse":0.0,"foreground":3.0,"preprocess":1.0,"embed":180.5,"search":3.1,"rank":0.2,"total":201.0}}
{"time":"2026-12-01T10:01:00.000Z","boot":"b1","scan":2,"outcome":"error","error":"camera /dev/video0: timed out","region":"none","results":[],"coalesced":0,"latency_ms":{"total":1000.0}}
{"time":"2026-12-01T10:02:00.000Z","boot":"b1","scan":3,"outcome":"ok","region":"outfit","results":[],"garments":[{"class":"upper","bbox":[10,20,100,120],"share":0.2,"colour":"Blue","rgb":[20,30,200],"results":[{"id":"1002","score":0.7}]}],"coalesced":2,"latency_ms":{"total":900.0}}"#;

    #[test]
    fn version_1_lines_still_read() {
        let records: Vec<ScanRecord> = VERSION_1
            .lines()
            .map(|l| ScanRecord::parse(l).unwrap())
            .collect();
        assert!(records.iter().all(|r| r.version == 1));
        assert_eq!(records[0].outcome, Outcome::Ok);
        assert_eq!(records[0].region, Some(FoundBy::Reference));
        let ranked = records[0].results[0].ranked.as_ref().unwrap();
        assert_eq!((ranked.score, ranked.popularity), (0.8, 0.2));
        assert_eq!(
            records[1].error,
            Some(ScanError::Other("camera /dev/video0: timed out".into()))
        );
        assert_eq!(records[1].region, None);
        assert_eq!(records[2].garments[0].results[0].ranked, None);
        assert_eq!(records[2].garments[0].results[0].id, "1002");
    }

    #[test]
    fn a_record_round_trips_with_a_typed_error() {
        let record = ScanRecord {
            version: VERSION,
            time: "2026-12-07T10:00:00.000Z".into(),
            boot: "b2".into(),
            scan: 7,
            outcome: Outcome::Error,
            error: Some(ScanError::CameraLost("no /dev/video0".into())),
            region: None,
            colour: None,
            results: Vec::new(),
            garments: Vec::new(),
            note: None,
            coalesced: 0,
            latency_ms: ScanLatency::default(),
        };
        let line = serde_json::to_string(&record).unwrap();
        assert!(
            line.contains(r#""error":{"kind":"camera_lost","message":"no /dev/video0"}"#),
            "{line}"
        );
        assert!(line.contains(r#""region":"none""#), "{line}");
        assert_eq!(ScanRecord::parse(&line).unwrap(), record);
        let bad = line.replace(r#""region":"none""#, r#""region":"sideways""#);
        assert!(ScanRecord::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("sideways"));
    }
}
