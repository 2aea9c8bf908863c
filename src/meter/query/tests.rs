//! The row cap and paging of [`answer`]: a capped fold stops as soon as it
//! is over, and pages put together are the whole answer.

use std::cell::Cell;

use super::*;
use crate::meter::{Aggregation, MeterDef};

const HOUR_MS: i64 = 3_600_000;

fn meter() -> CompiledMeter {
    MeterDef {
        slug: "m".into(),
        description: None,
        event_type: "e".into(),
        aggregation: Aggregation::Sum,
        value_property: Some("$.v".into()),
        group_by: [("g", "$.g"), ("h", "$.h")]
            .into_iter()
            .map(|(k, p)| (k.to_owned(), p.to_owned()))
            .collect(),
        window_size: WindowSize::Hour,
        allow_negative: false,
        strict: false,
        round_values: false,
        ..MeterDef::blank()
    }
    .validate()
    .unwrap()
}

fn state(value: i64) -> AggState {
    AggState::Sum(crate::meter::Amount::from_int(value))
}

/// Stored states in key order: `subjects` subjects with 1 to 4 windows
/// over two days and two values of `g` (and of `h` on some).
fn stored(subjects: usize) -> Vec<(CounterKey, AggState)> {
    let mut out = Vec::new();
    for s in 0..subjects {
        for w in 0..(s % 4 + 1) as i64 {
            for g in ["a", "b"] {
                for h in [None, Some("x")].into_iter().take(s % 2 + 1) {
                    let key = CounterKey {
                        meter: "m".into(),
                        subject: format!("s{s:03}"),
                        window_start_ms: w * 13 * HOUR_MS,
                        group: vec![Some(g.into()), h.map(String::from)],
                    };
                    out.push((key, state((s as i64 + 1) * (w + 2))));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn params(window_size: Option<WindowSize>, group_by: &[&str]) -> QueryParams {
    QueryParams {
        window_size,
        group_by: group_by.iter().map(|g| g.to_string()).collect(),
        split_by_subject: true,
        ..QueryParams::default()
    }
}

/// The states after `after`'s subject, as the server reads a page's.
fn from_page<'a>(
    all: &'a [(CounterKey, AggState)],
    after: Option<&Resume>,
) -> impl Iterator<Item = (CounterKey, AggState)> + 'a {
    let after = after.map(|a| a.subject.clone());
    all.iter()
        .filter(move |(k, _)| after.as_ref().is_none_or(|a| k.subject > *a))
        .cloned()
}

/// `states`, counting into `read` how many were taken.
fn counted<'a>(
    states: impl Iterator<Item = (CounterKey, AggState)> + 'a,
    read: &'a Cell<usize>,
) -> impl Iterator<Item = (CounterKey, AggState)> + 'a {
    read.set(0);
    states.inspect(move |_| read.set(read.get() + 1))
}

/// Every page of `p` with `rows` rows a page.
fn pages(all: &[(CounterKey, AggState)], p: &QueryParams, rows: usize) -> Vec<Answer> {
    let mut out: Vec<Answer> = Vec::new();
    let mut after = None;
    loop {
        let limit = RowLimit::Page {
            rows,
            after: after.clone(),
        };
        let page = answer(&meter(), from_page(all, after.as_ref()), p, &limit).unwrap();
        assert!(page.rows.len() <= rows, "{} rows", page.rows.len());
        after = page.next.clone();
        out.push(page);
        if after.is_none() {
            return out;
        }
    }
}

/// (window start, subject, group) order, as an unpaged answer sorts rows.
fn sorted(mut rows: Vec<QueryRow>) -> Vec<QueryRow> {
    rows.sort_by(|a, b| {
        (a.window_start_ms, &a.subject, &a.group_by).cmp(&(
            b.window_start_ms,
            &b.subject,
            &b.group_by,
        ))
    });
    rows
}

#[test]
fn pages_put_together_are_the_whole_answer() {
    let all = stored(37);
    let from = QueryParams {
        from_ms: Some(13 * HOUR_MS),
        ..params(None, &["g"])
    };
    let from_to = QueryParams {
        from_ms: Some(0),
        to_ms: Some(48 * HOUR_MS),
        ..params(None, &["g", "h"])
    };
    for p in [
        params(None, &[]),
        params(None, &["g"]),
        params(None, &["g", "h"]),
        params(Some(WindowSize::Hour), &["h"]),
        params(Some(WindowSize::Day), &["g", "h"]),
        params(Some(WindowSize::Month), &[]),
        from,
        from_to,
    ] {
        let whole = query(&meter(), all.iter().cloned(), &p).unwrap();
        for rows in [8, 9, 17, 50, whole.len(), whole.len() + 1] {
            let pages = pages(&all, &p, rows);
            let mut seen = Vec::new();
            for page in &pages {
                let mut subjects: Vec<&str> = page
                    .rows
                    .iter()
                    .map(|r| r.subject.as_deref().unwrap())
                    .collect();
                subjects.dedup();
                for s in &subjects {
                    assert!(!seen.contains(s), "{s} split across pages ({p:?}, {rows})");
                }
                seen.extend(subjects);
                assert_eq!(page.rows, sorted(page.rows.clone()), "a page is sorted");
            }
            let together: Vec<QueryRow> = pages.into_iter().flat_map(|p| p.rows).collect();
            assert_eq!(sorted(together), whole, "{p:?}, {rows} rows a page");
        }
    }
}

#[test]
fn a_page_ends_after_its_last_whole_subject() {
    let all = stored(10);
    let p = params(Some(WindowSize::Hour), &["g"]);
    // s000: 2 rows, s001: 4, s002: 6 — 12 rows hold the first three.
    let first = answer(
        &meter(),
        all.iter().cloned(),
        &p,
        &RowLimit::Page {
            rows: 12,
            after: None,
        },
    )
    .unwrap();
    assert_eq!(first.rows.len(), 12);
    let next = first.next.unwrap();
    assert_eq!(next.subject, "s002");
    let last = answer(
        &meter(),
        all.iter().cloned(),
        &p,
        &RowLimit::Page {
            rows: 100,
            after: Some(next),
        },
    )
    .unwrap();
    assert_eq!(last.next, None, "nothing after the last page");
    assert_eq!(last.rows.first().unwrap().subject.as_deref(), Some("s003"));
}

/// The fold holds at most one row past the cap, and reads no further.
#[test]
fn a_capped_fold_stops_at_the_first_row_past_the_cap() {
    let all = stored(1000);
    let read = Cell::new(0);
    let input = counted(all.iter().cloned(), &read);
    let p = params(Some(WindowSize::Hour), &["g", "h"]);
    let e = answer(&meter(), input, &p, &RowLimit::Cap(10)).unwrap_err();
    assert_eq!(
        e,
        QueryError::TooManyRows {
            max: 10,
            split_by_subject: true
        }
    );
    assert_eq!(e.code(), ErrorCode::QueryTooLarge);
    // Every state is a row of its own here.
    assert_eq!(read.get(), 11, "states read");
    let whole = query(&meter(), all.iter().cloned(), &p).unwrap();
    let capped = answer(
        &meter(),
        all.iter().cloned(),
        &p,
        &RowLimit::Cap(whole.len()),
    );
    assert_eq!(capped.unwrap().rows, whole, "an answer at the cap is whole");
    assert!(answer(
        &meter(),
        all.into_iter(),
        &p,
        &RowLimit::Cap(whole.len() - 1)
    )
    .is_err());
}

/// Only rows count: many states merging into few rows pass the cap.
#[test]
fn the_cap_counts_rows_not_states() {
    let all = stored(200);
    let rows = answer(
        &meter(),
        all.into_iter(),
        &QueryParams::default(),
        &RowLimit::Cap(1),
    )
    .unwrap()
    .rows;
    assert_eq!(rows.len(), 1);
}

#[test]
fn a_page_reads_no_further_than_it_needs() {
    let all = stored(1000);
    let read = Cell::new(0);
    let input = counted(all.iter().cloned(), &read);
    let p = params(Some(WindowSize::Day), &[]);
    // s000 and s001 have one day each, s002 two, s003 two.
    let limit = RowLimit::Page {
        rows: 4,
        after: None,
    };
    let page = answer(&meter(), input, &p, &limit).unwrap();
    assert_eq!(page.next.unwrap().subject, "s002");
    assert!(read.get() < 30, "read {} states", read.get());
}

/// Rows without a window size span the windows of every subject: the first
/// page reads them all to find that span and hands it on, so later pages
/// read only their own subjects and label their rows alike.
#[test]
fn the_first_page_finds_the_span_that_later_pages_reuse() {
    let all = stored(1000);
    let p = params(None, &["g"]);
    let read = Cell::new(0);
    let limit = RowLimit::Page {
        rows: 4,
        after: None,
    };
    let first = answer(&meter(), counted(all.iter().cloned(), &read), &p, &limit).unwrap();
    assert_eq!(read.get(), all.len(), "the first page reads every state");
    let next = first.next.unwrap();
    assert_eq!(next.span, Some((0, 39 * HOUR_MS)));
    let limit = RowLimit::Page {
        rows: 4,
        after: Some(next.clone()),
    };
    let second = answer(
        &meter(),
        counted(from_page(&all, Some(&next)), &read),
        &p,
        &limit,
    );
    assert!(read.get() < 30, "a later page reads {} states", read.get());
    let second = second.unwrap();
    assert_eq!(second.next.unwrap().span, next.span);
    for row in first.rows.iter().chain(&second.rows) {
        assert_eq!((row.window_start_ms, row.window_end_ms), (0, 40 * HOUR_MS));
    }
}

#[test]
fn a_subject_larger_than_a_page_is_refused() {
    let all = stored(10);
    let p = params(Some(WindowSize::Hour), &["g", "h"]);
    // s003 has 4 windows × 2 × 2 groups = 16 rows.
    let limit = RowLimit::Page {
        rows: 15,
        after: Some(Resume {
            subject: "s002".into(),
            span: None,
        }),
    };
    let e = answer(&meter(), all.into_iter(), &p, &limit).unwrap_err();
    assert_eq!(
        e,
        QueryError::SubjectTooManyRows {
            subject: "s003".into(),
            max: 15
        }
    );
    assert_eq!(e.code(), ErrorCode::QueryTooLarge);
}

#[test]
fn only_rows_split_by_subject_can_be_paged() {
    let p = QueryParams::default();
    let limit = RowLimit::Page {
        rows: 10,
        after: None,
    };
    let e = answer(&meter(), std::iter::empty(), &p, &limit).unwrap_err();
    assert_eq!(e, QueryError::PageWithoutSubjects);
    assert_eq!(e.code(), ErrorCode::InvalidQuery);
}
