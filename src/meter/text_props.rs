//! Extraction over JSON text as clients write it, against a parsed tree and
//! `serde_json_path`: escaped strings and member names, numbers in every
//! written form (fractions, exponents, beyond u64 and f64 precision, beyond
//! the 10^20 bound), repeated member names, whitespace and deep nesting. A
//! tree forgets how its text was written; the walker reads that text, so the
//! generator writes it and keeps what it meant.

use proptest::prelude::*;
use serde_json::Value;

use super::amount::AMOUNT_MAGNITUDE_MAX_UNITS;
use super::path::SingularPath;
use super::*;

const KEY: UniqueKey = UniqueKey::from_bytes([42; 16]);

/// JSON as written, not as parsed.
#[derive(Debug, Clone)]
enum Doc {
    /// A literal: `null`, `true`, a number's text, a string with its quotes.
    Text(String),
    Array(Vec<Doc>),
    /// Member names as written (quoted, maybe escaped), possibly repeated.
    Object(Vec<(String, Doc)>),
}

impl Doc {
    /// `gap` goes between every two tokens: "" or whitespace.
    fn write(&self, out: &mut String, gap: &str) {
        match self {
            Doc::Text(text) => out.push_str(text),
            Doc::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(gap);
                    item.write(out, gap);
                }
                out.push_str(gap);
                out.push(']');
            }
            Doc::Object(members) => {
                out.push('{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(gap);
                    out.push_str(name);
                    out.push_str(gap);
                    out.push(':');
                    out.push_str(gap);
                    value.write(out, gap);
                }
                out.push_str(gap);
                out.push('}');
            }
        }
    }

    fn text(&self, gap: &str) -> String {
        let mut out = String::new();
        self.write(&mut out, gap);
        out
    }
}

/// A string's content written as a JSON string, each character in one of
/// the forms JSON allows for it.
fn written_string(content: &str, forms: &[u8]) -> String {
    let mut out = String::from("\"");
    for (i, c) in content.chars().enumerate() {
        let form = forms.get(i).copied().unwrap_or(0) % 4;
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\n' => Some("\\n"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\r' => Some("\\r"),
            _ => None,
        };
        let must_escape = matches!(c, '"' | '\\') || c < ' ';
        match (form, short) {
            (0, _) if !must_escape => out.push(c),
            (1, Some(short)) => out.push_str(short),
            (2, _) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            _ => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out.push('"');
    out
}

fn string_content() -> impl Strategy<Value = String> {
    let chars = prop::sample::select(vec![
        'a', 'b', ' ', 'é', '😀', '"', '\\', '/', '\n', '\t', '\u{1}', '\u{7f}', '\u{2028}',
    ]);
    prop::collection::vec(chars, 0..4).prop_map(|c| c.into_iter().collect())
}

fn escaped_string(content: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (content, prop::collection::vec(any::<u8>(), 8))
        .prop_map(|(content, forms)| written_string(&content, &forms))
}

/// Member names from a small set, so that repeats are common, each written
/// in any of its forms.
fn member_name() -> impl Strategy<Value = String> {
    escaped_string(prop::sample::select(vec!["a", "b", "a b", "é", "v"]).prop_map(str::to_owned))
}

/// A decimal number `mantissa × 10^exponent` as JSON text in one of its
/// forms, with its value in amount units (×10^9, rounded half to even), or
/// `None` when its magnitude is above 10^20. Computed without the parser
/// under test.
#[derive(Debug, Clone)]
struct Number {
    text: String,
    units: Option<i128>,
}

fn number() -> impl Strategy<Value = Number> {
    let mantissa = prop_oneof![
        -1000i64..1000,
        any::<i64>(),
        Just(i64::MAX),
        Just(123_456_789_123_456_789),
    ];
    (mantissa, -15i32..25, 0usize..20, 0u8..6).prop_map(|(m, e, split, form)| Number {
        text: number_text(m, e, split, form),
        units: units_of(m, e),
    })
}

fn number_text(mantissa: i64, exponent: i32, split: usize, form: u8) -> String {
    let digits = mantissa.unsigned_abs().to_string();
    let n = digits.len();
    let sign = if mantissa < 0 { "-" } else { "" };
    let e = if form.is_multiple_of(2) { "e" } else { "E" };
    let exp_text = |x: i64| match (x, form % 3) {
        (0, 0) => String::new(),
        (x, 1) if x >= 0 => format!("{e}+{x}"),
        (x, _) => format!("{e}{x}"),
    };
    if form >= 4 {
        // 0.000digits × 10^x
        let zeros = split % 4;
        let x = i64::from(exponent) + (n + zeros) as i64;
        return format!("{sign}0.{}{digits}{}", "0".repeat(zeros), exp_text(x));
    }
    // digits with the point after k of them
    let k = 1 + split % n;
    let x = i64::from(exponent) + (n - k) as i64;
    let fraction = if k < n {
        format!(".{}", &digits[k..])
    } else {
        String::new()
    };
    format!("{sign}{}{fraction}{}", &digits[..k], exp_text(x))
}

fn units_of(mantissa: i64, exponent: i32) -> Option<i128> {
    let magnitude = i128::from(mantissa).abs();
    let shift = exponent + 9;
    let units = if shift >= 0 {
        10i128
            .checked_pow(shift as u32)
            .and_then(|scale| magnitude.checked_mul(scale))
            .unwrap_or(i128::MAX)
    } else {
        let divisor = 10i128.pow(shift.unsigned_abs());
        let (q, r) = (magnitude / divisor, magnitude % divisor);
        q + i128::from(2 * r > divisor || (2 * r == divisor && q % 2 == 1))
    };
    (units <= AMOUNT_MAGNITUDE_MAX_UNITS).then_some(if mantissa < 0 { -units } else { units })
}

fn leaf() -> impl Strategy<Value = Doc> {
    prop_oneof![
        Just(Doc::Text("null".into())),
        Just(Doc::Text("true".into())),
        Just(Doc::Text("false".into())),
        number().prop_map(|n| Doc::Text(n.text)),
        escaped_string(string_content()).prop_map(Doc::Text),
        number().prop_map(|n| Doc::Text(format!("\"{}\"", n.text))),
    ]
}

fn doc() -> impl Strategy<Value = Doc> {
    leaf().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Doc::Array),
            prop::collection::vec((member_name(), inner), 0..5).prop_map(Doc::Object),
        ]
    })
}

/// `doc` under `levels` arrays or single-member objects, alternating with
/// `kinds`' bits; with the path steps that lead back to it.
fn nested(doc: Doc, levels: usize, kinds: u128) -> (Doc, String) {
    let mut path = String::new();
    let mut doc = doc;
    for level in 0..levels {
        if kinds >> (level % 128) & 1 == 0 {
            doc = Doc::Array(vec![doc]);
            path.insert_str(0, "[0]");
        } else {
            doc = Doc::Object(vec![("\"d\"".into(), doc)]);
            path.insert_str(0, ".d");
        }
    }
    (doc, format!("${path}"))
}

fn path_text() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        prop::sample::select(vec![".a", ".b", ".v", ".é", "['a b']", "['\\u00e9']"])
            .prop_map(str::to_owned),
        (-3i64..3).prop_map(|i| format!("[{i}]")),
    ];
    prop::collection::vec(segment, 0..4).prop_map(|s| format!("${}", s.concat()))
}

fn compiled(aggregation: &str, path: &str) -> CompiledMeter {
    let (value, group) = if aggregation == "COUNT" {
        (None, [("g".to_owned(), path.to_owned())].into())
    } else {
        (Some(path.to_owned()), Default::default())
    };
    MeterDef {
        slug: "m".into(),
        description: None,
        event_type: "e".into(),
        aggregation: serde_json::from_value(Value::String(aggregation.into())).unwrap(),
        value_property: value,
        group_by: group,
        window_size: WindowSize::Minute,
        allow_negative: false,
        strict: false,
        round_values: false,
        ..MeterDef::blank()
    }
    .validate()
    .unwrap()
}

/// What the reference makes of `text`: the parsed tree and the path's node.
fn reference_node(path: &str, text: &str) -> Option<Value> {
    let tree: Value = serde_json::from_str(text).expect("the generator writes JSON");
    let path = serde_json_path::JsonPath::parse(path).unwrap();
    path.query(&tree).at_most_one().unwrap().cloned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The walker selects the node a parsed tree and serde_json_path select,
    /// and a group or UNIQUE_COUNT value is the one that node gives.
    #[test]
    fn select_agrees_with_a_parsed_tree(
        path in path_text(),
        doc in doc(),
        levels in prop_oneof![Just(0usize), 0usize..=120],
        kinds in any::<u128>(),
    ) {
        let (doc, outer) = nested(doc, levels, kinds);
        let path = format!("{outer}{}", &path[1..]);
        for gap in ["", " \n\t"] {
            let text = doc.text(gap);
            let expected = reference_node(&path, &text);
            let ours = SingularPath::compile(&path).unwrap().select(&text);
            let ours = ours.map(|node| serde_json::from_str::<Value>(node).unwrap());
            prop_assert_eq!(&ours, &expected, "{}", text);

            let group = compiled("COUNT", &path).extract(Some(&text), &KEY).unwrap().group;
            let expected_group = match &expected {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            };
            prop_assert_eq!(group, vec![expected_group]);
            let unique = compiled("UNIQUE_COUNT", &path).extract(Some(&text), &KEY).map(|o| o.value);
            if let Some(Value::String(s)) = &expected {
                prop_assert_eq!(unique, Ok(ObservedValue::Unique(KEY.hash(s))));
            } else if let Some(scalar @ (Value::Number(_) | Value::Bool(_))) = &expected {
                let canonical = scalar.to_string();
                prop_assert_eq!(unique, Ok(ObservedValue::Unique(KEY.hash(&canonical))));
            }
        }
    }

    /// A value is the exact decimal its text wrote, however it was written
    /// (number or numeric string), wherever it sits, after repeats of its
    /// name: not the nearest f64.
    #[test]
    fn values_are_the_decimals_written(
        n in number(),
        quoted in any::<bool>(),
        before in prop::collection::vec((member_name(), doc()), 0..3),
        after in prop::collection::vec((Just("\"w\""), doc()), 0..2),
        levels in 0usize..=120,
        kinds in any::<u128>(),
    ) {
        let text = if quoted { format!("\"{}\"", n.text) } else { n.text.clone() };
        let mut members = before;
        members.push(("\"\\u0076\"".into(), Doc::Text("\"replaced\"".into())));
        members.push(("\"v\"".into(), Doc::Text(text)));
        members.extend(after.into_iter().map(|(name, doc)| (name.to_owned(), doc)));
        let (doc, outer) = nested(Doc::Object(members), levels, kinds);
        let path = format!("{outer}.v");
        let meter = compiled("SUM", &path);
        for gap in ["", " "] {
            let data = doc.text(gap);
            let expected = match n.units {
                Some(units) => Ok(ObservedValue::Amount(Amount(units))),
                None => Err(ExtractError::ValueOutOfRange { path: path.clone() }),
            };
            prop_assert_eq!(meter.extract(Some(&data), &KEY).map(|o| o.value), expected, "{}", n.text);
        }
    }
}
