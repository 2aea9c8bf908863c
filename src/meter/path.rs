//! Singular JSONPath queries (RFC 9535 §2.3.5.1): `$` followed by name and index
//! selectors only, e.g. `$.tokens`, `$.usage.input`, `$['a b']`, `$.items[0].n`,
//! `$.items[-1]`.
//!
//! A path is compiled into a list of steps by this module's parser of the singular
//! subset, which lets extraction walk `data` without allocating, and validated by
//! `serde_json_path` (the RFC 9535 authority). A text the parser refuses is either
//! not JSONPath or a valid query that may select several nodes (wildcards, slices,
//! filters, unions, descendant segments); `serde_json_path` tells which, for texts
//! short enough that it cannot take long doing so.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// One step of a singular query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Object member by name.
    Name(String),
    /// Array element; negative counts from the end.
    Index(i64),
}

/// A compiled singular query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SingularPath {
    text: String,
    steps: Vec<Step>,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Not RFC 9535 JSONPath; carries the parser's message.
    Syntax(String),
    /// Valid JSONPath that may select more than one node.
    NotSingular,
}

impl SingularPath {
    pub(crate) fn compile(text: &str) -> Result<SingularPath, PathError> {
        if ends_inside_unicode_escape(text) {
            // serde_json_path 0.7 panics on this ("we do not use streaming parsers").
            return Err(PathError::Syntax(
                "the path ends inside a \\u escape".to_owned(),
            ));
        }
        let syntax = |e: serde_json_path::ParseError| PathError::Syntax(e.to_string());
        match Parser::new(text).parse_singular() {
            Some(steps) => {
                serde_json_path::JsonPath::parse(text).map_err(syntax)?;
                Ok(SingularPath {
                    text: text.to_owned(),
                    steps,
                })
            }
            // serde_json_path takes seconds on some texts of a few hundred bytes
            // (nested filters: `$[?$[?((((…`); only short ones are classified.
            None if !classifiable(text) => Err(PathError::Syntax(
                "not a singular query (`$` then `.name`, `['name']` or `[index]` steps); \
                 a path this long or with this many filters is not checked further"
                    .to_owned(),
            )),
            None => match serde_json_path::JsonPath::parse(text) {
                Ok(_) => Err(PathError::NotSingular),
                Err(e) => Err(syntax(e)),
            },
        }
    }

    /// The path as written in the meter definition.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The node the path selects in `data` (JSON text), as JSON text, if any.
    ///
    /// Walks the text without building a tree: each step scans one object
    /// or array, borrowing keys and skipping the values it does not want.
    /// A repeated member name selects its last value, as a parsed tree
    /// would keep it.
    pub(crate) fn select<'v>(&self, data: &'v str) -> Option<&'v str> {
        let mut node = data;
        for step in &self.steps {
            let mut de = serde_json::Deserializer::from_str(node);
            let found = serde::Deserializer::deserialize_any(&mut de, StepVisitor(step)).ok()?;
            node = found?.get();
        }
        Some(node)
    }
}

/// Whether a text that is not a singular query may be handed to
/// serde_json_path, to tell a syntax error from a valid query that may select
/// several nodes. Its parser takes time exponential in the nesting of filters
/// (`$[?` 18 times: 0.5 s, 42 times: over a minute; nested deeper it overflows
/// the stack), so only short texts with few filters are.
fn classifiable(text: &str) -> bool {
    const BYTES_MAX: usize = 64;
    const FILTERS_MAX: usize = 3;
    text.len() <= BYTES_MAX && text.matches('?').count() <= FILTERS_MAX
}

/// Whether the text ends before the four hex digits of its last `\u` escape
/// (`$['\u`, `$['\uD83D\uDE`). No valid path does: a quote and a `]` must
/// follow every escape.
fn ends_inside_unicode_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut last_escape_end = None;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') {
                last_escape_end = Some(i + 6);
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    last_escape_end.is_some_and(|end| end > bytes.len())
}

/// Takes one step into an object or array; anything else selects nothing.
struct StepVisitor<'s>(&'s Step);

impl<'de> serde::de::Visitor<'de> for StepVisitor<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object or an array")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<MemberName<'de>>()? {
            if matches!(self.0, Step::Name(name) if *name == *key.0) {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        match *self.0 {
            Step::Index(index) if index >= 0 => {
                for _ in 0..index {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        return Ok(None);
                    }
                }
                let found = seq.next_element::<&'de RawValue>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(found)
            }
            Step::Index(index) => {
                let mut items: Vec<&'de RawValue> = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                let back = usize::try_from(index.unsigned_abs()).ok();
                Ok(back
                    .and_then(|back| items.len().checked_sub(back))
                    .map(|position| items[position]))
            }
            Step::Name(_) => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(None)
            }
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// An object member's name, borrowed from the text unless it has escapes.
struct MemberName<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MemberName<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<MemberName<'de>, E> {
                Ok(MemberName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<MemberName<'de>, E> {
                Ok(MemberName(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// Recursive-descent reader for the singular subset. Returns `None` for anything
/// outside it; syntax has already been checked by `serde_json_path`.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser { text, pos: 0 }
    }

    fn parse_singular(mut self) -> Option<Vec<Step>> {
        self.eat('$')?;
        let mut steps = Vec::new();
        loop {
            self.skip_blank();
            match self.peek() {
                None => return Some(steps),
                Some('.') => {
                    self.pos += 1;
                    steps.push(Step::Name(self.member_name_shorthand()?));
                }
                Some('[') => {
                    self.pos += 1;
                    self.skip_blank();
                    let step = match self.peek()? {
                        '\'' | '"' => Step::Name(self.string_literal()?),
                        _ => Step::Index(self.int()?),
                    };
                    self.skip_blank();
                    self.eat(']')?;
                    steps.push(step);
                }
                Some(_) => return None,
            }
        }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, expected: char) -> Option<()> {
        (self.bump()? == expected).then_some(())
    }

    fn skip_blank(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.pos += 1;
        }
    }

    fn member_name_shorthand(&mut self) -> Option<String> {
        let is_name_first = |c: char| c.is_ascii_alphabetic() || c == '_' || c >= '\u{80}';
        let start = self.pos;
        if !self.peek().is_some_and(is_name_first) {
            return None;
        }
        while self
            .peek()
            .is_some_and(|c| is_name_first(c) || c.is_ascii_digit())
        {
            self.bump();
        }
        Some(self.text[start..self.pos].to_owned())
    }

    fn int(&mut self) -> Option<i64> {
        const INT_MAGNITUDE_MAX: i64 = (1 << 53) - 1;
        let start = self.pos;
        if self.peek() == Some('-') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let value: i64 = self.text[start..self.pos].parse().ok()?;
        (value.abs() <= INT_MAGNITUDE_MAX).then_some(value)
    }

    fn string_literal(&mut self) -> Option<String> {
        let quote = self.bump()?;
        let mut out = String::new();
        loop {
            match self.bump()? {
                c if c == quote => return Some(out),
                '\\' => out.push(self.escape()?),
                c => out.push(c),
            }
        }
    }

    fn escape(&mut self) -> Option<char> {
        Some(match self.bump()? {
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            '/' => '/',
            '\\' => '\\',
            '\'' => '\'',
            '"' => '"',
            'u' => {
                let high = self.hex4()?;
                if (0xD800..0xDC00).contains(&high) {
                    self.eat('\\')?;
                    self.eat('u')?;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?
                } else {
                    char::from_u32(high)?
                }
            }
            _ => return None,
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.pos..self.pos + 4)?;
        let value = u32::from_str_radix(digits, 16).ok()?;
        if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn steps(text: &str) -> Vec<Step> {
        SingularPath::compile(text).unwrap().steps
    }

    fn name(n: &str) -> Step {
        Step::Name(n.to_owned())
    }

    #[test]
    fn singular_forms_compile_to_steps() {
        assert_eq!(steps("$"), vec![]);
        assert_eq!(steps("$.tokens"), vec![name("tokens")]);
        assert_eq!(steps("$.usage.input"), vec![name("usage"), name("input")]);
        assert_eq!(steps("$['a b']"), vec![name("a b")]);
        assert_eq!(steps("$[\"a'b\"]"), vec![name("a'b")]);
        assert_eq!(steps("$['a\\'b']"), vec![name("a'b")]);
        assert_eq!(
            steps("$.items[0].n"),
            vec![name("items"), Step::Index(0), name("n")]
        );
        assert_eq!(steps("$.items[-1]"), vec![name("items"), Step::Index(-1)]);
        assert_eq!(steps("$[ 'x' ] [ 2 ]"), vec![name("x"), Step::Index(2)]);
        assert_eq!(steps("$['\\u00e9\\uD83D\\uDE00']"), vec![name("é😀")]);
        assert_eq!(steps("$.héllo_1"), vec![name("héllo_1")]);
    }

    #[test]
    fn multi_node_queries_are_not_singular() {
        for text in [
            "$.*",
            "$..tokens",
            "$.items[*]",
            "$.items[0:2]",
            "$.items[0,1]",
            "$['a','b']",
            "$.items[?@.n > 1]",
        ] {
            assert_eq!(
                SingularPath::compile(text),
                Err(PathError::NotSingular),
                "{text}"
            );
        }
    }

    #[test]
    fn invalid_jsonpath_is_a_syntax_error() {
        for text in ["tokens", "$.", "$[", "$.a b", "", "$['a]", "$[01]", "@.a"] {
            assert!(
                matches!(SingularPath::compile(text), Err(PathError::Syntax(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn nested_filters_are_refused_without_serde_json_path() {
        // serde_json_path took 24 s on a 1,334-byte text like the first, over a
        // minute on the second, and overflowed the stack on longer ones.
        let nested = format!("$[?$[?$[?$[?{} {}", "(".repeat(39), "(".repeat(60));
        for text in [nested.repeat(4), "$[?".repeat(42), "$[?".repeat(4)] {
            match SingularPath::compile(&text) {
                Err(PathError::Syntax(reason)) => {
                    assert!(reason.contains("not checked further"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            SingularPath::compile("$[?$[?$[?@]]]"),
            Err(PathError::NotSingular)
        );
        let long_singular = format!("${}", ".abc".repeat(500));
        assert_eq!(steps(&long_singular).len(), 500);
    }

    #[test]
    fn paths_ending_inside_a_unicode_escape_are_syntax_errors() {
        for text in [
            "$['\\u",
            "$['\\uD",
            "$['a\\u00",
            "$[\"\\ud83d\\u",
            "$['\\uD83D\\uD",
            "$['\\uD83D\\uDE0",
        ] {
            assert!(
                matches!(SingularPath::compile(text), Err(PathError::Syntax(_))),
                "{text}"
            );
        }
        assert_eq!(steps("$['\\\\u']"), vec![name("\\u")]);
        assert_eq!(steps("$['\\u0075']"), vec![name("u")]);
    }

    /// Selects in `data` and parses what was selected.
    fn select_in(path: &str, data: &str) -> Option<Value> {
        let node = SingularPath::compile(path).unwrap().select(data)?;
        Some(serde_json::from_str(node).expect("a selected node is JSON"))
    }

    #[test]
    fn select_walks_objects_and_arrays() {
        let data = json!({"a": {"b": [10, 20, {"c": "x"}]}, "a b": 1}).to_string();
        let select = |p: &str| select_in(p, &data);
        assert_eq!(select("$"), Some(serde_json::from_str(&data).unwrap()));
        assert_eq!(select("$.a.b[1]"), Some(json!(20)));
        assert_eq!(select("$.a.b[-1].c"), Some(json!("x")));
        assert_eq!(select("$.a.b[-3]"), Some(json!(10)));
        assert_eq!(select("$.a.b[-4]"), None);
        assert_eq!(select("$.a.b[3]"), None);
        assert_eq!(select("$['a b']"), Some(json!(1)));
        assert_eq!(select("$.a.b.c"), None);
        assert_eq!(select("$.a.b[0][0]"), None);
        assert_eq!(select("$.missing"), None);
    }

    #[test]
    fn select_reads_text_as_a_parsed_tree_would() {
        // Escaped member names match their unescaped form; whitespace is
        // allowed anywhere; a repeated name selects its last value.
        let data = r#" { "t\u006fkens" : 5 , "x" : {"y": 1}, "x": {"y": 2, "z": [ 1 , 2 ]} } "#;
        assert_eq!(select_in("$.tokens", data), Some(json!(5)));
        assert_eq!(select_in("$.x.y", data), Some(json!(2)));
        assert_eq!(select_in("$.x.z[-1]", data), Some(json!(2)));
        let tree: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            tree["x"]["y"],
            json!(2),
            "the tree keeps the last value too"
        );
        for scalar in ["1", "\"s\"", "true", "null"] {
            assert_eq!(select_in("$.a", scalar), None, "{scalar}");
            assert_eq!(select_in("$[0]", scalar), None, "{scalar}");
        }
    }

    // Selection over generated text is checked against serde_json_path in
    // `meter::text_props`.
}
