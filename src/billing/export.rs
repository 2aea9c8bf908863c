//! How statements are written out for billing jobs: a CSV row per line, or
//! a JSON line per statement version with its signature. Pure: the API's
//! feed and `keymeter billing export` write the same bytes.

use super::statement::Statement;

pub const CSV_HEADER: &str = "statement_id,version,subject,period,period_start,period_end,\
line_id,meter,aggregation,group,quantity,delta,leaves,root_hash,statement_root,statement_sha256\n";

/// The CSV rows of one statement version (one per line).
pub fn csv_rows(s: &Statement, out: &mut String) {
    let sha = s.sha256();
    for line in &s.lines {
        let group = serde_json::to_string(&line.group).expect("a group serializes");
        let fields = [
            s.statement_id.as_str(),
            &s.version.to_string(),
            &s.subject,
            &s.period.label,
            &s.period.start,
            &s.period.end,
            &line.line_id,
            &line.meter,
            &line.aggregation,
            &group,
            &line.quantity,
            line.delta.as_deref().unwrap_or(""),
            &line.leaves.to_string(),
            &hex::encode(line.root.hash),
            &s.root,
            &sha,
        ];
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&csv_field(f));
        }
        out.push('\n');
    }
}

/// One JSON line: the statement and its compact JWS.
pub fn json_line(s: &Statement, jws: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, &serde_json::json!({"statement": s, "jws": jws}))
        .expect("a statement serializes");
    out.push(b'\n');
}

/// A CSV field: quoted when needed, and a leading `= + - @` defused so a
/// spreadsheet does not run it as a formula (quantities are written as
/// they are: a negative number is data).
fn csv_field(s: &str) -> String {
    let numeric = s.parse::<f64>().is_ok();
    let s = if !numeric && s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_and_formulas_defused_but_numbers_kept() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("-12.5"), "-12.5");
        assert_eq!(
            csv_field("{\"region\":\"eu\"}"),
            "\"{\"\"region\"\":\"\"eu\"\"}\""
        );
    }
}
