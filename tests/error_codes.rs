//! The README's error-code table lists exactly `ErrorCode::ALL`, each with
//! its HTTP status and description: adding a code without documenting it,
//! or changing a status, fails here.

use std::collections::BTreeMap;

use keymeter::ErrorCode;

const SECTION: &str = "### Error codes";
const HEADER: &str = "| Code | Status | Meaning |";

/// One table row: status and meaning, by code.
type Rows = BTreeMap<String, (u16, String)>;

/// The rows of the first table after the `### Error codes` heading.
fn readme_rows(readme: &str) -> Result<Rows, String> {
    let section = readme
        .split_once(SECTION)
        .ok_or_else(|| format!("README.md has no `{SECTION}` section"))?
        .1;
    let table = section
        .split_once(HEADER)
        .ok_or_else(|| format!("`{SECTION}` has no table headed `{HEADER}`"))?
        .1;
    let mut lines = table.lines().skip(1);
    if !lines.next().is_some_and(|l| l.starts_with("|---")) {
        return Err("the header is not followed by a `|---|` separator".into());
    }
    let mut rows = Rows::new();
    for line in lines.take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [code, status, meaning] = cells[..] else {
            return Err(format!("not three cells: {line}"));
        };
        let code = code
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|c| !c.contains('`'))
            .ok_or_else(|| format!("the code cell must be one `CODE`: {line}"))?;
        let status: u16 = status
            .parse()
            .map_err(|_| format!("the status cell must be a number: {line}"))?;
        if rows
            .insert(code.to_owned(), (status, meaning.to_owned()))
            .is_some()
        {
            return Err(format!("{code} is listed twice"));
        }
    }
    Ok(rows)
}

fn expected_row(code: ErrorCode) -> String {
    format!(
        "| `{}` | {} | {} |",
        code.as_str(),
        code.status().as_u16(),
        code.description()
    )
}

#[test]
fn readme_error_code_table_matches_error_code_all() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("README.md is readable");
    let rows = readme_rows(&readme).unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    for &code in ErrorCode::ALL {
        let want = (code.status().as_u16(), code.description().to_owned());
        match rows.get(code.as_str()) {
            None => problems.push(format!("missing: {}", expected_row(code))),
            Some(got) if *got != want => problems.push(format!(
                "differs: {} (README has status {} and {:?})",
                expected_row(code),
                got.0,
                got.1
            )),
            Some(_) => {}
        }
    }
    for code in rows.keys() {
        if ErrorCode::parse(code).is_none() {
            problems.push(format!("not an ErrorCode: {code}"));
        }
    }
    let table: Vec<String> = ErrorCode::ALL.iter().map(|&c| expected_row(c)).collect();
    assert!(
        problems.is_empty(),
        "README.md `{SECTION}` is out of date:\n{}\n\nThe whole table:\n{HEADER}\n|---|---|---|\n{}",
        problems.join("\n"),
        table.join("\n")
    );
}

#[test]
fn the_parser_notices_a_missing_code_and_a_wrong_status() {
    let table =
        |rows: &str| format!("# x\n{SECTION}\n\n{HEADER}\n|---|---|---|\n{rows}\n\nafter\n");
    let rows = readme_rows(&table("| `A` | 400 | a |\n| `B` | 409 | b |")).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows["B"], (409, "b".to_owned()));
    assert!(readme_rows(&table("| `A` | 400 | a |\n| `A` | 400 | a |")).is_err());
    assert!(readme_rows(&table("| `A` / `B` | 400 | a |")).is_err());
    assert!(readme_rows(&table("| `A` | four hundred | a |")).is_err());
    assert!(readme_rows("no section here").is_err());
}
