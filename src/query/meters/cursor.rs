//! The `cursor` of a paged meter query: the next page starts after a
//! subject, and the cursor names it, bound to the query that returned it.
//!
//! Bytes: version `1` ‖ 12 bytes of SHA-256 over the meter and the
//! parameters that shape the rows ‖ the span of windows the first page
//! found (`0`, or `1` and two big-endian `i64`s) ‖ the page's last subject
//! (UTF-8), in base64url without padding. The tag is no secret: it refuses
//! a cursor sent with another query, where resuming after its subject would
//! skip or repeat rows without a word. A caller who forges one only moves
//! where its own query starts, which `subject` lets it choose anyway, or
//! the span its own rows are labelled with.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{QueryError, QueryRequest};
use crate::meter::Resume;

const VERSION: u8 = 1;
const TAG_LEN: usize = 12;

/// What binds a cursor to its query.
pub(super) type Tag = [u8; TAG_LEN];

/// The tag of `request` over meter `slug`. Everything that decides which
/// rows exist and how they split counts; `limit` does not, so a caller may
/// change the page size between pages. Repeated `subject`s and `groupBy`s
/// count once and in any order, as they do for the rows.
pub(super) fn tag(slug: &str, request: &QueryRequest) -> Tag {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"keymeter meter query cursor v1");
    field(slug.as_bytes());
    for bound in [request.from_ms, request.to_ms] {
        field(&bound.map_or(Vec::new(), |ms| ms.to_be_bytes().to_vec()));
    }
    field(request.window_size.map_or("", |w| w.as_str()).as_bytes());
    for list in [&request.subjects, &request.group_by] {
        let mut items: Vec<&String> = list.iter().collect();
        items.sort_unstable();
        items.dedup();
        field(&(items.len() as u64).to_be_bytes());
        for item in items {
            field(item.as_bytes());
        }
    }
    if let Some(tz) = request.time_zone {
        field(b"windowTimeZone");
        field(tz.name().as_bytes());
    }
    if !request.filter_group_by.is_empty() {
        let mut filters: Vec<&(String, String)> = request.filter_group_by.iter().collect();
        filters.sort_unstable();
        field(b"filterGroupBy");
        for (key, value) in filters {
            field(key.as_bytes());
            field(value.as_bytes());
        }
    }
    h.finalize()[..TAG_LEN].try_into().expect("TAG_LEN bytes")
}

/// The cursor of the page `next` describes.
pub(super) fn encode(tag: &Tag, next: &Resume) -> String {
    let mut bytes = Vec::with_capacity(1 + TAG_LEN + 17 + next.subject.len());
    bytes.push(VERSION);
    bytes.extend_from_slice(tag);
    match next.span {
        None => bytes.push(0),
        Some((earliest, latest)) => {
            bytes.push(1);
            bytes.extend_from_slice(&earliest.to_be_bytes());
            bytes.extend_from_slice(&latest.to_be_bytes());
        }
    }
    bytes.extend_from_slice(next.subject.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Where `text` resumes, if it is a cursor of the query `tag` stands for.
pub(super) fn decode(text: &str, tag: &Tag) -> Result<Resume, QueryError> {
    let malformed = || {
        QueryError::invalid(
            "cursor is not one this server issued: send the `nextCursor` of the previous page as it came",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| malformed())?;
    let (header, subject) = bytes.split_at_checked(1 + TAG_LEN).ok_or_else(malformed)?;
    if header[0] != VERSION {
        return Err(malformed());
    }
    if header[1..] != tag[..] {
        return Err(QueryError::invalid(
            "cursor belongs to another query: resume on the same meter with the same from, to, \
             windowSize, subject and groupBy as the query that returned it (only limit may change)",
        ));
    }
    let (span, subject) = match subject.split_first() {
        Some((0, rest)) => (None, rest),
        Some((1, rest)) if rest.len() >= 16 => {
            let (span, rest) = rest.split_at(16);
            let at = |i: usize| i64::from_be_bytes(span[i..i + 8].try_into().expect("8 bytes"));
            (Some((at(0), at(8))), rest)
        }
        _ => return Err(malformed()),
    };
    match std::str::from_utf8(subject) {
        // A subject never holds NUL; a key range after one could not be built.
        Ok(s) if !s.is_empty() && !s.contains('\0') => Ok(Resume {
            subject: s.to_owned(),
            span,
        }),
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_code::ErrorCode;

    fn request(raw: &str) -> QueryRequest {
        QueryRequest::parse(raw).unwrap()
    }

    fn after(subject: &str) -> Resume {
        Resume {
            subject: subject.into(),
            span: None,
        }
    }

    #[test]
    fn a_cursor_round_trips_where_it_resumes() {
        let t = tag("calls", &request("groupBy=subject&windowSize=DAY"));
        for subject in ["a", "customer-1", "ünïcode ✓", &"x".repeat(1024)] {
            for span in [
                None,
                Some((i64::MIN, i64::MAX)),
                Some((-1, 1_704_067_200_000)),
            ] {
                let next = Resume {
                    subject: subject.into(),
                    span,
                };
                let text = encode(&t, &next);
                assert!(
                    text.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                    "{text}: safe in a URL and a header as it is"
                );
                assert_eq!(decode(&text, &t).unwrap(), next);
            }
        }
    }

    /// Pinned so a change of the format is a decision, not an accident.
    #[test]
    fn the_encoding_is_version_tag_span_and_subject() {
        let t = [7u8; TAG_LEN];
        assert_eq!(encode(&t, &after("ab")), "AQcHBwcHBwcHBwcHBwBhYg");
        let spanned = Resume {
            subject: "ab".into(),
            span: Some((1, 2)),
        };
        let bytes = URL_SAFE_NO_PAD.decode(encode(&t, &spanned)).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(&bytes[1..13], &t);
        assert_eq!(bytes[13], 1);
        assert_eq!(
            &bytes[14..30],
            &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
        );
        assert_eq!(&bytes[30..], b"ab");
    }

    #[test]
    fn the_tag_follows_what_shapes_the_rows_and_not_the_page_size() {
        let base = "groupBy=subject&groupBy=region&windowSize=HOUR&from=2024-01-01T00:00:00Z";
        let t = tag("calls", &request(base));
        assert_eq!(t, tag("calls", &request(&format!("{base}&limit=5"))));
        assert_eq!(
            t,
            tag(
                "calls",
                &request(
                    "groupBy=region&windowSize=HOUR&groupBy=subject&groupBy=region\
                     &from=2024-01-01T00:00:00Z&cursor=x"
                )
            ),
            "order and repeats of groupBy do not matter"
        );
        assert_ne!(t, tag("tokens", &request(base)), "another meter");
        for other in [
            "groupBy=subject&groupBy=region&windowSize=DAY&from=2024-01-01T00:00:00Z",
            "groupBy=subject&groupBy=region&windowSize=HOUR",
            "groupBy=subject&groupBy=region&windowSize=HOUR&from=2024-01-01T00:00:00Z\
             &to=2024-02-01T00:00:00Z",
            "groupBy=subject&windowSize=HOUR&from=2024-01-01T00:00:00Z",
            "groupBy=subject&groupBy=region&windowSize=HOUR&from=2024-01-01T00:00:00Z&subject=a",
        ] {
            assert_ne!(t, tag("calls", &request(other)), "{other}");
        }
        // A field cannot run into the next one.
        assert_ne!(
            tag("calls", &request("subject=ab&groupBy=subject")),
            tag("calls", &request("subject=a&groupBy=bsubject")),
        );
    }

    #[test]
    fn a_cursor_of_another_query_or_a_made_up_one_is_refused() {
        let t = tag("calls", &request("groupBy=subject"));
        let other = tag("calls", &request("groupBy=subject&windowSize=DAY"));
        let e = decode(&encode(&other, &after("a")), &t).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidQuery);
        assert!(
            e.message.starts_with("cursor belongs to another query"),
            "{}",
            e.message
        );
        let mut wrong_version = URL_SAFE_NO_PAD.decode(encode(&t, &after("a"))).unwrap();
        wrong_version[0] = 2;
        let raw = |rest: &[u8]| URL_SAFE_NO_PAD.encode([&[VERSION][..], &t, rest].concat());
        for text in [
            "".to_owned(),
            "not base64!".to_owned(),
            URL_SAFE_NO_PAD.encode([VERSION; 5]),
            URL_SAFE_NO_PAD.encode(wrong_version),
            encode(&t, &after("")),
            encode(&t, &after("a\0b")),
            raw(&[0, 0xff, 0xfe]),
            raw(b""),
            raw(&[2, b'a']),
            raw(&[1, 0, 0, 0, b'a']),
        ] {
            let e = decode(&text, &t).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidQuery, "{text}");
            assert!(
                e.message.starts_with("cursor is not one"),
                "{text}: {}",
                e.message
            );
        }
    }
}
