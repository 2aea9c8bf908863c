use super::*;
use crate::meter::{AggState, Amount, MeterDef, MeterSet};

const HOUR_MS: i64 = 3_600_000;
/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000;

fn meters() -> MeterSet {
    let def: MeterDef = serde_json::from_value(json!({
        "slug": "calls",
        "eventType": "api_call",
        "aggregation": "COUNT",
        "groupBy": {"region": "$.region"},
        "windowSize": "HOUR",
    }))
    .unwrap();
    MeterSet::from_defs(vec![def]).unwrap()
}

fn refused(raw: &str) -> QueryError {
    QueryRequest::parse(raw).expect_err(raw)
}

/// Runs `raw` over meter `calls` with one stored window per entry.
fn run(raw: &str, stored: Vec<(CounterKey, AggState)>) -> Result<Vec<QueryRow>, QueryError> {
    let meters = meters();
    let meter = queryable(&meters, &BTreeMap::new(), "calls")?;
    let params = QueryRequest::parse(raw)?.params();
    Ok(meter::query(meter, stored.into_iter(), &params)?)
}

fn window(subject: &str, start_ms: i64, state: AggState) -> (CounterKey, AggState) {
    let key = CounterKey {
        meter: "calls".into(),
        subject: subject.into(),
        window_start_ms: start_ms,
        group: vec![Some("eu".into())],
    };
    (key, state)
}

#[test]
fn parses_every_parameter() {
    let q = QueryRequest::parse(
        "from=2024-01-01T00:00:00Z&to=2024-01-02T00:00:00%2B00:00&windowSize=HOUR\
         &windowTimeZone=UTC&subject=a&subject=b&groupBy=region&groupBy=subject",
    )
    .unwrap();
    assert_eq!(q.from_ms, Some(T0));
    assert_eq!(q.to_ms, Some(T0 + 24 * HOUR_MS));
    assert_eq!(q.window_size, Some(WindowSize::Hour));
    assert_eq!(q.subjects, ["a", "b"]);
    assert_eq!(q.group_by, ["region", "subject"]);
    assert_eq!(q.meter_group_by(), ["region"]);
    let p = q.params();
    assert!(p.split_by_subject);
    assert_eq!(p.group_by, ["region"]);
}

#[test]
fn an_empty_query_asks_for_everything() {
    let q = QueryRequest::parse("").unwrap();
    assert_eq!(q, QueryRequest::default());
    assert!(!q.params().split_by_subject);
    assert!(QueryRequest::parse("windowTimeZone=Etc/UTC").is_ok());
    assert!(
        QueryRequest::parse("groupBy=subject")
            .unwrap()
            .params()
            .split_by_subject
    );
}

#[test]
fn a_bad_time_is_an_invalid_query() {
    for name in ["from", "to"] {
        let e = refused(&format!("{name}=yesterday"));
        assert_eq!(e.code, ErrorCode::InvalidQuery);
        assert!(
            e.message.starts_with(&format!(
                "{name}: time \"yesterday\" is not an RFC 3339 timestamp"
            )),
            "{}",
            e.message
        );
        assert_eq!(e.retry_after_s, None);
    }
}

#[test]
fn an_unknown_window_size_is_an_invalid_query() {
    let e = refused("windowSize=WEEK");
    assert_eq!(e.code, ErrorCode::InvalidQuery);
    assert_eq!(
        e.message,
        "windowSize \"WEEK\" is not one of MINUTE, HOUR, DAY, MONTH"
    );
}

#[test]
fn a_window_time_zone_must_be_an_iana_name() {
    let e = refused("windowTimeZone=Mars/Olympus");
    assert_eq!(e.code, ErrorCode::InvalidQuery);
    assert!(e.message.contains("IANA"), "{}", e.message);
    let q = QueryRequest::parse("windowTimeZone=Europe/Paris").unwrap();
    assert_eq!(q.time_zone, Some(chrono_tz::Tz::Europe__Paris));
    assert_eq!(
        QueryRequest::parse("windowTimeZone=UTC").unwrap().time_zone,
        None
    );
}

#[test]
fn local_days_sum_the_hours_of_the_zone_and_inexact_zones_are_refused() {
    // 2024-03-30T22:00Z and 23:00Z: 23:00 on the 30th and 00:00 on the
    // 31st in Berlin, the day its clocks go forward (a 23-hour day).
    let (h22, h23) = (1_711_836_000_000, 1_711_839_600_000);
    let stored = vec![
        window("a", h22, AggState::Count(2)),
        window("a", h23, AggState::Count(3)),
    ];
    let rows = run(
        "windowSize=DAY&windowTimeZone=Europe/Berlin",
        stored.clone(),
    )
    .unwrap();
    let spans: Vec<(i64, i64, Amount)> = (rows.iter())
        .map(|r| (r.window_start_ms, r.window_end_ms, r.value))
        .collect();
    assert_eq!(
        spans,
        [
            (h23 - 24 * HOUR_MS, h23, Amount::from_int(2)),
            (h23, h23 + 23 * HOUR_MS, Amount::from_int(3)),
        ]
    );
    // In UTC both hours are one day.
    let rows = run("windowSize=DAY", stored.clone()).unwrap();
    assert_eq!(rows.len(), 1);
    // +05:30 splits the stored hours: refused, not approximated.
    let e = run("windowSize=DAY&windowTimeZone=Asia/Kolkata", stored).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidQuery);
    assert!(e.message.contains("Asia/Kolkata"), "{}", e.message);
}

#[test]
fn an_unknown_parameter_is_an_invalid_query() {
    let e = refused("subject=a&page=10");
    assert_eq!(e.code, ErrorCode::InvalidQuery);
    assert_eq!(e.message, "unknown query parameter `page`");
}

#[test]
fn an_unknown_meter_is_not_found() {
    let e = queryable(&meters(), &BTreeMap::new(), "tokens").unwrap_err();
    assert_eq!(e.code, ErrorCode::MeterNotFound);
    assert_eq!(e.message, "meter `tokens` does not exist");
    assert_eq!(e.retry_after_s, None);
}

#[test]
fn a_meter_counting_its_past_says_when_to_retry() {
    let backfills = BTreeMap::from([("calls".to_owned(), 42)]);
    let e = queryable(&meters(), &backfills, "calls").unwrap_err();
    assert_eq!(e.code, ErrorCode::MeterBackfilling);
    assert_eq!(
        e.message,
        "meter `calls` is still counting the events logged before its creation (log seq 42)"
    );
    assert_eq!(e.retry_after_s, Some(1));
}

#[test]
fn a_window_finer_than_the_meters_is_refused() {
    let e = run("windowSize=MINUTE", Vec::new()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidWindowSize);
    assert!(
        e.message.contains("finer than the meter's windowSize HOUR"),
        "{}",
        e.message
    );
}

#[test]
fn bounds_must_be_aligned_and_ordered() {
    let e = run("from=2024-01-01T00:30:00Z", Vec::new()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidQuery);
    assert!(e.message.contains("must be aligned"), "{}", e.message);
    let e = run(
        "from=2024-01-02T00:00:00Z&to=2024-01-01T00:00:00Z",
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidQuery);
    assert!(e.message.contains("must be before to"), "{}", e.message);
}

#[test]
fn an_unknown_group_by_key_is_refused() {
    let e = run("groupBy=plan", Vec::new()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidGroupBy);
    assert!(e.message.contains("\"plan\""), "{}", e.message);
}

#[test]
fn a_stored_state_that_does_not_fit_the_meter_is_corrupt() {
    let stored = vec![window("a", T0, AggState::Unique(vec![1]))];
    let e = run("", stored).unwrap_err();
    assert_eq!(e.code, ErrorCode::CorruptState);
}

#[test]
fn rows_follow_the_request() {
    let stored = vec![
        window("a", T0, AggState::Count(2)),
        window("b", T0 + HOUR_MS, AggState::Count(3)),
    ];
    let rows = run("groupBy=subject&groupBy=region", stored.clone()).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].subject.as_deref(), Some("a"));
    assert_eq!(rows[0].group("region"), Some("eu"));
    let rows = run("", stored).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].value, crate::meter::Amount::from_int(5));
    assert_eq!(rows[0].subject, None);
}

#[test]
fn ranges_cover_the_meter_or_the_named_subjects() {
    let meters = meters();
    let meter = meters.get("calls").unwrap();
    let all = ranges(meter, &QueryRequest::default().params(), None);
    assert_eq!(all.len(), 1);
    let q = QueryRequest::parse("subject=a&subject=b%00c").unwrap();
    let some = ranges(meter, &q.params(), None);
    assert_eq!(some.len(), 1, "a subject holding NUL names no counter");
    assert!(all[0].start <= some[0].start && some[0].end <= all[0].end);
}

#[test]
fn limit_and_cursor_ask_for_a_page() {
    let q = QueryRequest::parse("groupBy=subject&limit=10&cursor=abc").unwrap();
    assert_eq!(q.limit, Some(10));
    assert_eq!(q.cursor.as_deref(), Some("abc"));
    assert!(q.paged());
    assert!(QueryRequest::parse("cursor=abc").unwrap().paged());
    assert!(!QueryRequest::parse("groupBy=subject").unwrap().paged());
    for bad in ["limit=0", "limit=-1", "limit=ten", "limit="] {
        let e = refused(bad);
        assert_eq!(e.code, ErrorCode::InvalidQuery, "{bad}");
        assert!(e.message.starts_with("limit "), "{bad}: {}", e.message);
    }
}

#[test]
fn a_page_holds_at_most_the_cap_and_resumes_after_its_cursor() {
    let parse = |raw: &str| QueryRequest::parse(raw).unwrap();
    let tag = cursor::tag("calls", &parse("groupBy=subject"));
    let e = parse("groupBy=subject&limit=101")
        .row_limit(&tag, 100)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidQuery);
    assert!(e.message.contains("query_rows_max (100)"), "{}", e.message);
    let limit = |raw: &str| parse(raw).row_limit(&tag, 100).unwrap();
    assert_eq!(limit("groupBy=subject"), RowLimit::Cap(100));
    assert_eq!(
        limit("groupBy=subject&limit=100"),
        RowLimit::Page {
            rows: 100,
            after: None
        }
    );
    let resume = meter::Resume {
        subject: "s1".into(),
        span: Some((T0, T0 + HOUR_MS)),
    };
    let next = cursor::encode(&tag, &resume);
    assert_eq!(
        limit(&format!("groupBy=subject&cursor={next}")),
        RowLimit::Page {
            rows: 100,
            after: Some(resume)
        },
        "a cursor alone pages by the cap"
    );
    let e = parse(&format!("groupBy=subject&cursor={next}"))
        .row_limit(&cursor::tag("tokens", &parse("groupBy=subject")), 100)
        .unwrap_err();
    assert!(
        e.message.starts_with("cursor belongs to another query"),
        "{}",
        e.message
    );
}

#[test]
fn a_resumed_meter_range_starts_right_after_the_cursor_subject() {
    let meters = meters();
    let meter = meters.get("calls").unwrap();
    let key = |subject: &str, window_start_ms: i64, group: &str| {
        CounterKey {
            meter: "calls".into(),
            subject: subject.into(),
            window_start_ms,
            group: vec![Some(group.into())],
        }
        .encode()
    };
    let [range] = &ranges(meter, &QueryRequest::default().params(), Some("a"))[..] else {
        panic!("one range");
    };
    for before in [
        key("a", i64::MAX, "zzzz"),
        key("", 0, "x"),
        key("Z", 0, "x"),
    ] {
        assert!(before < range.start, "{before:?}");
    }
    for after in [
        key("a\u{1}", i64::MIN, ""),
        key("ab", 0, ""),
        key("b", 0, ""),
    ] {
        assert!(range.contains(&after), "{after:?}");
    }
    assert!(!range.contains(&CounterKey::meter_prefix("callsx")));
}

#[test]
fn named_subjects_are_read_once_each_in_order() {
    let meters = meters();
    let meter = meters.get("calls").unwrap();
    let q = QueryRequest::parse("subject=c&subject=a&subject=b&subject=a").unwrap();
    let all = ranges(meter, &q.params(), None);
    assert_eq!(all.len(), 3, "a repeated subject would be counted twice");
    assert!(all.windows(2).all(|w| w[0].end <= w[1].start), "key order");
    assert_eq!(ranges(meter, &q.params(), Some("a")), all[1..]);
}

#[test]
fn an_answer_over_the_cap_says_how_to_page_or_narrow() {
    let split = too_large(
        meter::QueryError::TooManyRows {
            max: 100,
            split_by_subject: true,
        },
        100,
    );
    assert_eq!(split.code, ErrorCode::QueryTooLarge);
    for hint in ["more than 100 rows", "`limit`", "`cursor`", "`from`/`to`"] {
        assert!(split.message.contains(hint), "{hint}: {}", split.message);
    }
    let merged = too_large(
        meter::QueryError::TooManyRows {
            max: 100,
            split_by_subject: false,
        },
        100,
    );
    assert!(
        merged.message.contains("`groupBy=subject`"),
        "{}",
        merged.message
    );
    let subject = |max| {
        too_large(
            meter::QueryError::SubjectTooManyRows {
                subject: "s1".into(),
                max,
            },
            100,
        )
    };
    assert_eq!(subject(10).code, ErrorCode::QueryTooLarge);
    assert!(subject(10).message.contains("raise `limit` (up to 100)"));
    assert!(
        !subject(100).message.contains("raise"),
        "{}",
        subject(100).message
    );
    let other = too_large(meter::QueryError::PageWithoutSubjects, 100);
    assert_eq!(other.code, ErrorCode::InvalidQuery);
}
