//! Timestamp discipline for connectors: reading, writing and reasoning about the
//! *source's* time, in one place.
//!
//! The product rule this module implements:
//! - Watermarks come from the source's own clock (its `Date` header, or the
//!   largest modification time it returned), never ours: a skewed local clock
//!   must not make us skip changes.
//! - Each run queries up to a snapshot taken at its start (the `Date` of the
//!   run's first response), so changes made during the run fall into the next one.
//! - An overlap window, configurable per source, is re-read before the previous
//!   watermark to absorb clock skew, coarse precision and out-of-order commits.
//!   The coordinator de-duplicates by version, so re-reading costs nothing.
//! - Timestamps without a zone are read in the source's configured zone and
//!   stored in UTC. Where a local time names two instants (DST fall-back) the
//!   *earlier* one is taken, and a local time that does not exist (spring-forward
//!   gap) becomes the first instant after the gap. Both choices err towards an
//!   earlier bound: a lower bound that is too early re-reads a little, one that is
//!   too late loses changes for good.
//!
//! What it owns: [`parse_http_date`] / [`format_http_date`] / [`header_date`],
//! [`parse_in_zone`] / [`resolve_local`], [`Watermark`], [`cql_minute_literal`],
//! and [`deserialize_opt_utc`] for JSON timestamps.
//!
//! What it does not do: read our own clock. Nothing here calls `Utc::now()`;
//! scheduling decisions (sweeps, reconciliation) that legitimately use our
//! clock stay with their owners.

use std::time::Duration;

use chrono::offset::LocalResult;
use chrono::{DateTime, FixedOffset, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use reqwest::header::{HeaderMap, HeaderName};
use serde::{Deserialize, Deserializer};

/// The longest overlap honoured: a year, so date arithmetic can never overflow.
pub const MAX_OVERLAP: Duration = Duration::from_secs(366 * 24 * 3600);

/// A timestamp that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp {text:?}: expected RFC 3339 or `YYYY-MM-DD[T| ]HH:MM[:SS[.fraction]]` with an optional `Z` or offset"
)]
pub struct TimestampError {
    /// The text as received.
    pub text: String,
}

/// Parses an HTTP-date (`Date`, `Last-Modified`, `Retry-After`) to UTC.
///
/// Accepts the preferred IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, and any
/// RFC 2822 date, which it is a case of) and the two obsolete forms RFC 7231
/// §7.1.1.1 says recipients must accept: RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`)
/// and asctime (`Sun Nov  6 08:49:37 1994`). Surrounding whitespace is ignored.
pub fn parse_http_date(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc2822(text) {
        return Some(t.with_timezone(&Utc));
    }
    // RFC 850: the weekday is spelled out and the year has two digits.
    if let Some((_, rest)) = text.split_once(", ")
        && let Some(rest) = rest.strip_suffix(" GMT")
        && let Ok(t) = NaiveDateTime::parse_from_str(rest, "%d-%b-%y %H:%M:%S")
    {
        // RFC 7231: a two-digit year more than 50 years in the future is in the past
        // century. chrono maps 00-68 to 20xx and 69-99 to 19xx, which agrees until 2049.
        return Some(t.and_utc());
    }
    // asctime: the day is space-padded; collapse runs of spaces first.
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    NaiveDateTime::parse_from_str(&collapsed, "%a %b %e %H:%M:%S %Y")
        .ok()
        .map(|t| t.and_utc())
}

/// The IMF-fixdate form (`Wed, 21 Oct 2015 07:28:00 GMT`): what servers expect
/// back in `If-Modified-Since`, and how HTTP validators are stored.
pub fn format_http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The header `name` (e.g. `Date`, `Last-Modified`) parsed as an HTTP-date.
pub fn header_date(headers: &HeaderMap, name: HeaderName) -> Option<DateTime<Utc>> {
    parse_http_date(headers.get(name)?.to_str().ok()?)
}

/// Parses a timestamp that may lack a zone, reading a zoneless one in `tz`.
///
/// Accepted: RFC 3339 / ISO 8601 with `Z` or an offset (the zone given wins over
/// `tz`), and `YYYY-MM-DD HH:MM[:SS[.fraction]]` with `T` or a space between date
/// and time. Local times are resolved by [`resolve_local`].
pub fn parse_in_zone(text: &str, tz: Tz) -> Result<DateTime<Utc>, TimestampError> {
    let trimmed = text.trim();
    // chrono's own parser first: it is what serde uses for `DateTime<Utc>`, so every
    // zoned form a connector accepted before is still accepted.
    if let Ok(t) = trimmed.parse::<DateTime<FixedOffset>>() {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(t.with_timezone(&Utc));
    }
    const NAIVE: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    NAIVE
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(trimmed, f).ok())
        .map(|naive| resolve_local(naive, tz))
        .ok_or_else(|| TimestampError { text: text.to_owned() })
}

/// The instant a wall-clock time in `tz` names.
///
/// - unique: that instant;
/// - ambiguous (DST fall-back, the hour happens twice): the **earlier** instant,
///   so a lower bound read from it can only re-read, never skip;
/// - non-existent (spring-forward gap): the first instant after the gap, which
///   is where every clock that showed the time in the gap ends up and the
///   earliest instant that does not precede the time the source wrote.
///
/// The mapping never decreases as the wall-clock time increases.
pub fn resolve_local(naive: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(earlier, _) => earlier.with_timezone(&Utc),
        LocalResult::None => gap_end(naive, tz),
    }
}

/// The first instant after the gap `naive` lies in (whole seconds: offsets are).
fn gap_end(naive: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    let exists = |t: NaiveDateTime| tz.from_local_datetime(&t).earliest();
    let start = naive.with_nanosecond(0).unwrap_or(naive);
    // Gaps are an hour, rarely more (Samoa skipped a whole day in 2011): two days
    // of minutes is a safe bound. Step by minutes to the first time that exists,
    // then back by seconds to the gap's exact end.
    for minutes in 1..=2 * 24 * 60 {
        let probe = start + TimeDelta::minutes(minutes);
        if exists(probe).is_none() {
            continue;
        }
        let mut end = probe;
        for _ in 0..60 {
            let earlier = end - TimeDelta::seconds(1);
            if earlier < start || exists(earlier).is_none() {
                break;
            }
            end = earlier;
        }
        if let Some(t) = exists(end) {
            return t.with_timezone(&Utc);
        }
    }
    // No zone has a gap this long; read it with the offset in force at that UTC time.
    let offset = tz.offset_from_utc_datetime(&naive).fix();
    (naive - TimeDelta::seconds(i64::from(offset.local_minus_utc()))).and_utc()
}

/// Serde helper for optional JSON timestamps (`#[serde(default, deserialize_with = ...)]`):
/// zoned forms as chrono reads them, a zoneless one as UTC; `null` or absent is `None`.
pub fn deserialize_opt_utc<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) => parse_in_zone(&text, Tz::UTC)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// `watermark - overlap`, saturating at the earliest representable instant.
pub fn lower_bound(watermark: DateTime<Utc>, overlap: Duration) -> DateTime<Utc> {
    watermark
        .checked_sub_signed(overlap_delta(overlap))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn overlap_delta(overlap: Duration) -> TimeDelta {
    TimeDelta::from_std(overlap.min(MAX_OVERLAP)).unwrap_or_default()
}

/// One run's reading of the source's clock: where its query starts, and the
/// watermark to save when it ends.
///
/// The new watermark is, in order of preference:
/// 1. the `Date` of the run's first response that had one (the snapshot: the
///    source's clock when the run started; anything later is for the next run);
/// 2. else the newest modification time the run saw, minus the overlap (a lower
///    bound of the source's clock; backing off tolerates out-of-order commits);
/// 3. else the previous watermark, kept as it was.
///
/// Our own clock is never consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    previous: Option<DateTime<Utc>>,
    overlap: Duration,
    snapshot: Option<DateTime<Utc>>,
    max_modified: Option<DateTime<Utc>>,
}

impl Watermark {
    /// A run starting from `previous` with an overlap window of `overlap` (capped at [`MAX_OVERLAP`]).
    pub fn new(previous: Option<DateTime<Utc>>, overlap: Duration) -> Self {
        Self {
            previous,
            overlap: overlap.min(MAX_OVERLAP),
            snapshot: None,
            max_modified: None,
        }
    }

    /// The watermark the run started from.
    pub fn previous(&self) -> Option<DateTime<Utc>> {
        self.previous
    }

    /// The lower bound of this run's query: the previous watermark minus the
    /// overlap (saturating); `None` when there is no previous watermark.
    pub fn query_from(&self) -> Option<DateTime<Utc>> {
        self.previous.map(|w| lower_bound(w, self.overlap))
    }

    /// Records a response's `Date`; only the first one that has a date counts.
    pub fn observe_date(&mut self, date: Option<DateTime<Utc>>) {
        self.snapshot = self.snapshot.or(date);
    }

    /// Records a modification time the source reported.
    pub fn observe_modified(&mut self, at: Option<DateTime<Utc>>) {
        if let Some(at) = at {
            self.max_modified = Some(self.max_modified.map_or(at, |m| m.max(at)));
        }
    }

    /// The snapshot: the `Date` of the run's first dated response.
    pub fn snapshot(&self) -> Option<DateTime<Utc>> {
        self.snapshot
    }

    /// The watermark to save when the run completes (see the type's documentation).
    pub fn next(&self) -> Option<DateTime<Utc>> {
        self.snapshot
            .or_else(|| self.max_modified.map(|m| lower_bound(m, self.overlap)))
            .or(self.previous)
    }
}

/// The CQL literal (`yyyy/MM/dd HH:mm`, in `tz`) for "modified at or after `since`".
///
/// CQL compares dates at minute precision, so the instant is truncated *down* to
/// the minute: that can only widen the window (more overlap), never drop a change.
/// In a DST fall-back hour a local time names two instants and Confluence may pick
/// the later one; we then step back an hour so every reading is at or before `since`.
pub fn cql_minute_literal(since: DateTime<Utc>, tz: Tz) -> String {
    let local = since.with_timezone(&tz).naive_local();
    let mut naive: NaiveDateTime = local.with_second(0).and_then(|d| d.with_nanosecond(0)).unwrap_or(local);
    for _ in 0..3 {
        let safe = match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => t.with_timezone(&Utc) <= since,
            LocalResult::Ambiguous(_, later) => later.with_timezone(&Utc) <= since,
            LocalResult::None => false,
        };
        if safe {
            break;
        }
        naive -= TimeDelta::hours(1);
    }
    naive.format("%Y/%m/%d %H:%M").to_string()
}

#[cfg(test)]
mod tests {
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Berlin;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    fn naive(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("test naive time")
    }

    /// IMF-fixdate, RFC 850 and asctime all name the same instant; formatting
    /// gives IMF-fixdate back; garbage is refused.
    #[test]
    fn http_dates_in_all_three_forms() {
        let t = utc("1994-11-06T08:49:37Z");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("  Sun, 06 Nov 1994 08:49:37 GMT "), Some(t));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(format_http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date(""), None);
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::DATE,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("hv"),
        );
        assert_eq!(
            header_date(&h, reqwest::header::DATE),
            Some(utc("2015-10-21T07:28:00Z"))
        );
        assert_eq!(header_date(&h, reqwest::header::LAST_MODIFIED), None);
    }

    /// Property: formatting then parsing any whole-second instant gives it back
    /// (HTTP-dates have second precision), over a spread of instants 1970..2100.
    #[test]
    fn http_date_round_trip() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5000 {
            // xorshift: deterministic, no extra crate.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = i64::try_from(x % 4_102_444_800).expect("fits");
            let t = DateTime::from_timestamp(secs, 0).expect("in range");
            assert_eq!(parse_http_date(&format_http_date(t)), Some(t), "{t}");
        }
    }

    /// Zoned inputs keep their zone; zoneless ones are read in the source's zone,
    /// at second or minute precision, with `T` or a space, with or without a fraction.
    #[test]
    fn zoneless_timestamps_read_in_zone() {
        let cases = [
            ("2024-01-20 10:00:00", Berlin, "2024-01-20T09:00:00Z"),
            ("2024-01-20T10:00:00", Berlin, "2024-01-20T09:00:00Z"),
            ("2024-01-20T10:00", Berlin, "2024-01-20T09:00:00Z"),
            ("2024-01-20 10:00", New_York, "2024-01-20T15:00:00Z"),
            ("2024-07-20 10:00:00", New_York, "2024-07-20T14:00:00Z"),
            ("2024-07-20 10:00:00.250", Berlin, "2024-07-20T08:00:00.250Z"),
            (
                "2024-07-20T10:00:00.123456789",
                Tz::UTC,
                "2024-07-20T10:00:00.123456789Z",
            ),
            ("2024-01-20T10:00:00Z", New_York, "2024-01-20T10:00:00Z"),
            ("2024-01-20T10:00:00.5+02:00", New_York, "2024-01-20T08:00:00.5Z"),
            (" 2024-01-20T10:00:00-05:00 ", Berlin, "2024-01-20T15:00:00Z"),
        ];
        for (text, tz, want) in cases {
            assert_eq!(parse_in_zone(text, tz), Ok(utc(want)), "{text} in {tz}");
        }
        for bad in ["", "2024-01-20", "10:00", "2024-13-01 10:00", "yesterday"] {
            assert_eq!(
                parse_in_zone(bad, Berlin),
                Err(TimestampError { text: bad.to_owned() }),
                "{bad:?}"
            );
        }
    }

    /// Fall-back: the repeated hour resolves to its first (earlier) occurrence.
    /// Spring-forward: a time in the gap resolves to the first instant after it.
    #[test]
    fn dst_overlap_takes_earlier_and_gap_takes_its_end() {
        // New York 2025-11-02: 01:30 happens at 05:30Z (EDT) and 06:30Z (EST).
        assert_eq!(
            resolve_local(naive("2025-11-02 01:30:00"), New_York),
            utc("2025-11-02T05:30:00Z")
        );
        // Berlin 2024-10-27: 02:30 happens at 00:30Z (CEST) and 01:30Z (CET).
        assert_eq!(
            parse_in_zone("2024-10-27 02:30:00", Berlin),
            Ok(utc("2024-10-27T00:30:00Z"))
        );
        // New York 2025-03-09: 02:00-03:00 does not exist; 03:00 EDT is 07:00Z.
        assert_eq!(
            resolve_local(naive("2025-03-09 02:30:00"), New_York),
            utc("2025-03-09T07:00:00Z")
        );
        assert_eq!(
            parse_in_zone("2025-03-09T02:00", New_York),
            Ok(utc("2025-03-09T07:00:00Z"))
        );
        // Berlin 2024-03-31: 02:00-03:00 does not exist; 03:00 CEST is 01:00Z.
        assert_eq!(
            parse_in_zone("2024-03-31 02:59:59.900", Berlin),
            Ok(utc("2024-03-31T01:00:00Z"))
        );
        // Just either side of the gap is unaffected.
        assert_eq!(
            resolve_local(naive("2024-03-31 01:59:59"), Berlin),
            utc("2024-03-31T00:59:59Z")
        );
        assert_eq!(
            resolve_local(naive("2024-03-31 03:00:00"), Berlin),
            utc("2024-03-31T01:00:00Z")
        );
    }

    /// Property: over a whole year of minutes in zones with DST, resolving never
    /// goes backwards as the wall clock advances, and any time that exists reads
    /// back as itself in its zone.
    #[test]
    fn resolution_is_monotonic_and_round_trips() {
        for tz in [Berlin, New_York, chrono_tz::Australia::Lord_Howe, Tz::UTC] {
            let mut t = naive("2024-01-01 00:00:00");
            let mut last = resolve_local(t, tz);
            // Every 7 minutes for a year: crosses both transitions at odd offsets.
            while t < naive("2025-01-01 00:00:00") {
                t += TimeDelta::minutes(7);
                let got = resolve_local(t, tz);
                assert!(got >= last, "{tz}: {t} resolved to {got}, before {last}");
                if tz.from_local_datetime(&t).earliest().is_some() {
                    assert_eq!(got.with_timezone(&tz).naive_local(), t, "{tz}: {t}");
                }
                last = got;
            }
        }
    }

    /// The query bound is the watermark minus the overlap, saturating; the new
    /// watermark is the first Date seen, else the newest modification minus the
    /// overlap, else the previous watermark.
    #[test]
    fn watermark_rules() {
        let wm = utc("2025-06-01T12:00:00Z");
        let two_min = Duration::from_secs(120);
        let w = Watermark::new(Some(wm), two_min);
        assert_eq!(w.previous(), Some(wm));
        assert_eq!(w.query_from(), Some(utc("2025-06-01T11:58:00Z")));
        assert_eq!(w.next(), Some(wm), "nothing seen: keep the previous one");
        assert_eq!(Watermark::new(None, two_min).query_from(), None);
        assert_eq!(Watermark::new(None, two_min).next(), None);
        assert_eq!(
            lower_bound(DateTime::<Utc>::MIN_UTC, two_min),
            DateTime::<Utc>::MIN_UTC,
            "saturates"
        );
        assert_eq!(
            Watermark::new(Some(wm), Duration::from_secs(u64::MAX)).query_from(),
            Some(wm - TimeDelta::from_std(MAX_OVERLAP).expect("delta")),
            "overlap capped"
        );

        let mut w = Watermark::new(Some(wm), two_min);
        w.observe_modified(Some(utc("2025-06-01T12:30:00Z")));
        w.observe_modified(None);
        w.observe_modified(Some(utc("2025-06-01T12:10:00Z")));
        assert_eq!(
            w.next(),
            Some(utc("2025-06-01T12:28:00Z")),
            "max modified minus overlap"
        );
        w.observe_date(None);
        w.observe_date(Some(utc("2025-06-01T12:40:00Z")));
        w.observe_date(Some(utc("2025-06-01T12:41:00Z")));
        assert_eq!(w.snapshot(), Some(utc("2025-06-01T12:40:00Z")), "the first Date wins");
        assert_eq!(w.next(), Some(utc("2025-06-01T12:40:00Z")));
    }

    /// A source clock 3 minutes behind ours: the watermark is the source's Date,
    /// so an edit the source stamps 1 minute after that Date (still "in the past"
    /// by our clock) is inside the next run's query window, and so is one stamped
    /// inside the overlap before it.
    #[test]
    fn source_clock_behind_ours_loses_nothing() {
        let ours = utc("2025-06-01T12:00:00Z");
        let source_date = ours - TimeDelta::minutes(3);
        let mut run = Watermark::new(None, Duration::from_secs(120));
        run.observe_date(Some(source_date));
        let saved = run.next().expect("watermark");
        assert_eq!(saved, source_date, "the source's clock, not ours");
        let next = Watermark::new(Some(saved), Duration::from_secs(120));
        let from = next.query_from().expect("bound");
        for edit in [
            source_date + TimeDelta::minutes(1),
            source_date - TimeDelta::seconds(90),
        ] {
            assert!(from <= edit, "{edit} must not be before the query bound {from}");
            let literal = cql_minute_literal(from, New_York);
            let read_back = resolve_local(
                NaiveDateTime::parse_from_str(&literal, "%Y/%m/%d %H:%M").expect("literal"),
                New_York,
            );
            assert!(read_back <= edit, "{literal} reads as {read_back}, after {edit}");
        }
        // Had we used our own clock, the first edit would have been skipped.
        assert!(ours > source_date + TimeDelta::minutes(1));
    }

    /// CQL literals are the local minute, truncated down, and step back past an
    /// ambiguous DST hour so no reading of them is later than the requested instant.
    #[test]
    fn cql_literal_truncates_in_zone() {
        let t = utc("2025-06-01T14:07:59.900Z");
        assert_eq!(cql_minute_literal(t, New_York), "2025/06/01 10:07");
        assert_eq!(cql_minute_literal(t, Tz::UTC), "2025/06/01 14:07");
        // 2025-11-02 01:30 happens twice in New York; 05:30Z is the first (EDT) one.
        assert_eq!(
            cql_minute_literal(utc("2025-11-02T05:30:00Z"), New_York),
            "2025/11/02 00:30"
        );
        // 06:30Z is the second (EST) 01:30: both readings are at or before it.
        assert_eq!(
            cql_minute_literal(utc("2025-11-02T06:30:00Z"), New_York),
            "2025/11/02 01:30"
        );
    }

    /// Property: whichever reading Confluence picks for a literal, it is at or
    /// before the requested instant, and at most a minute (or an hour and a minute
    /// around a fall-back) earlier.
    #[test]
    fn cql_literal_never_later_than_requested() {
        let mut t = utc("2025-01-01T00:00:30Z");
        while t < utc("2026-01-01T00:00:00Z") {
            for tz in [New_York, Berlin] {
                let literal = cql_minute_literal(t, tz);
                let naive = NaiveDateTime::parse_from_str(&literal, "%Y/%m/%d %H:%M").expect("literal");
                let readings: Vec<DateTime<Utc>> = match tz.from_local_datetime(&naive) {
                    LocalResult::Single(a) => vec![a.with_timezone(&Utc)],
                    LocalResult::Ambiguous(a, b) => vec![a.with_timezone(&Utc), b.with_timezone(&Utc)],
                    LocalResult::None => panic!("{literal} does not exist in {tz}"),
                };
                for r in readings {
                    assert!(r <= t, "{tz}: {literal} reads as {r}, after {t}");
                    assert!(t - r <= TimeDelta::minutes(61), "{tz}: {literal} is far before {t}");
                }
            }
            t += TimeDelta::minutes(13);
        }
    }

    /// JSON timestamps: zoned as chrono reads them, zoneless as UTC, null/absent as None.
    #[test]
    fn json_timestamps() {
        #[derive(Deserialize)]
        struct Row {
            #[serde(default, deserialize_with = "deserialize_opt_utc")]
            at: Option<DateTime<Utc>>,
        }
        let read = |json: &str| serde_json::from_str::<Row>(json).map(|r| r.at);
        assert_eq!(
            read(r#"{"at":"2024-01-20T10:00:00.000Z"}"#).expect("zoned"),
            Some(utc("2024-01-20T10:00:00Z"))
        );
        assert_eq!(
            read(r#"{"at":"2024-01-20T10:00:00"}"#).expect("zoneless"),
            Some(utc("2024-01-20T10:00:00Z"))
        );
        assert_eq!(read(r#"{"at":null}"#).expect("null"), None);
        assert_eq!(read("{}").expect("absent"), None);
        assert!(read(r#"{"at":"soon"}"#).is_err());
    }
}
