use proptest::prelude::*;

use super::*;

fn key(meter: &str, region: Option<&str>) -> LineKey {
    LineKey {
        meter: meter.into(),
        aggregation: "SUM",
        group: [("region".to_owned(), region.map(str::to_owned))].into(),
    }
}

fn leaf(seq: u64, value: i128) -> Leaf {
    Leaf {
        seq,
        identity: [seq as u8; 16],
        time_ms: 1_000 + seq as i64,
        value,
    }
}

fn draft<'a>(
    cycle: &'a Cycle,
    lines: Vec<(LineKey, Vec<Leaf>, Amount)>,
    cut_seq: u64,
) -> Draft<'a> {
    Draft {
        subject: "customer-1",
        cycle,
        period: cycle.period_of(0),
        cut_seq,
        closed_at_ms: 3_000_000_000,
        lines,
    }
}

fn counted(leaves: &[Leaf]) -> Amount {
    Amount(leaves.iter().map(|l| l.value).sum())
}

#[test]
fn a_line_whose_leaves_do_not_sum_to_its_total_stops_the_close() {
    let cycle = Cycle::default();
    let leaves = vec![leaf(1, 5), leaf(2, 7)];
    let wrong = Amount(13);
    let err = build(
        draft(&cycle, vec![(key("tokens", None), leaves, wrong)], 9),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, ReconcileError::Sum { .. }), "{err}");
    assert!(
        err.to_string().contains("leaves sum to 0.000000012"),
        "{err}"
    );
}

#[test]
fn a_restatement_that_rewrites_a_counted_event_is_refused() {
    let cycle = Cycle::default();
    let v1_leaves = vec![leaf(1, 5), leaf(2, 7)];
    let v1 = build(
        draft(
            &cycle,
            vec![(key("tokens", None), v1_leaves.clone(), counted(&v1_leaves))],
            9,
        ),
        None,
    )
    .unwrap();
    let mut rewritten = v1_leaves.clone();
    rewritten[1].value = 6;
    rewritten.push(leaf(12, 1));
    let err = build(
        draft(
            &cycle,
            vec![(key("tokens", None), rewritten.clone(), counted(&rewritten))],
            20,
        ),
        Some(&v1),
    )
    .unwrap_err();
    assert!(
        matches!(err, ReconcileError::NotAnExtension { .. }),
        "{err}"
    );
}

#[test]
fn ids_are_stable_across_versions_and_differ_between_lines() {
    let cycle = Cycle::default();
    let a = key("tokens", Some("eu"));
    let b = key("tokens", Some("us"));
    let la = vec![leaf(1, 5)];
    let v1 = build(
        draft(&cycle, vec![(a.clone(), la.clone(), counted(&la))], 9),
        None,
    )
    .unwrap();
    let la2 = vec![leaf(1, 5), leaf(11, 2)];
    let lb = vec![leaf(12, 3)];
    let v2 = build(
        draft(
            &cycle,
            vec![
                (a, la2.clone(), counted(&la2)),
                (b, lb.clone(), counted(&lb)),
            ],
            20,
        ),
        Some(&v1),
    )
    .unwrap();
    assert_eq!(v2.statement_id, v1.statement_id);
    assert_eq!(v2.version, 2);
    assert_eq!(v2.lines[0].line_id, v1.lines[0].line_id);
    assert_ne!(v2.lines[0].line_id, v2.lines[1].line_id);
    assert_eq!(v2.lines[0].delta.as_deref(), Some("0.000000002"));
    assert_eq!(v2.lines[1].delta.as_deref(), Some("0.000000003"));
    assert_eq!(v2.previous.as_ref().unwrap().sha256, v1.sha256());
    assert_eq!(v1.statement_id, statement_id("1970-01", "customer-1"));
}

/// Events as a user sends them: (line, value), in log order.
fn events() -> impl Strategy<Value = Vec<(u8, i64)>> {
    prop::collection::vec((0u8..3, 0i64..1_000_000), 1..60)
}

proptest! {
    #[test]
    fn lines_equal_an_independent_sum_and_restatements_extend(
        first in events(),
        late in events(),
    ) {
        let cycle = Cycle::default();
        let names = ["a", "b", "c"];
        let lines_of = |evs: &[(u8, i64)]| {
            let mut by_line: BTreeMap<u8, Vec<Leaf>> = BTreeMap::new();
            for (seq, (line, value)) in evs.iter().enumerate() {
                by_line.entry(*line).or_default().push(leaf(seq as u64 + 1, i128::from(*value)));
            }
            by_line
                .into_iter()
                .map(|(l, leaves)| {
                    let total = counted(&leaves);
                    (key(names[l as usize], None), leaves, total)
                })
                .collect::<Vec<_>>()
        };
        let v1 = build(draft(&cycle, lines_of(&first), first.len() as u64), None).unwrap();
        for line in &v1.lines {
            let naive: i128 = first
                .iter()
                .filter(|(l, _)| names[*l as usize] == line.meter)
                .map(|(_, v)| i128::from(*v))
                .sum();
            prop_assert_eq!(&line.quantity, &Amount(naive).to_string());
            prop_assert_eq!(line.root.sum, naive);
        }
        let all: Vec<_> = first.iter().chain(&late).copied().collect();
        let v2 = build(draft(&cycle, lines_of(&all), all.len() as u64), Some(&v1)).unwrap();
        for line in &v2.lines {
            let old = v1.lines.iter().find(|l| l.line_id == line.line_id).map_or(0, |l| l.root.sum);
            let added: i128 = late
                .iter()
                .filter(|(l, _)| names[*l as usize] == line.meter)
                .map(|(_, v)| i128::from(*v))
                .sum();
            prop_assert_eq!(line.delta.clone(), Some(Amount(added).to_string()));
            prop_assert_eq!(line.root.sum - old, added);
        }
    }
}
