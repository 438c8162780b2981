//! CQL scripts as `timeline migrate` runs them.

/// Splits a CQL script into statements (comments removed), each without its `;`.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = script.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            current.push(c);
            in_string = c != '\'';
        } else if c == '\'' {
            current.push(c);
            in_string = true;
        } else if c == '-' && chars.peek() == Some(&'-') {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            current.push('\n');
        } else if c == ';' {
            if !current.trim().is_empty() {
                out.push(current.trim().to_owned());
            }
            current.clear();
        } else {
            current.push(c);
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

/// The tables a script creates, without their keyspace (`CREATE TABLE [IF NOT EXISTS] ks.t (`).
pub fn table_names(script: &str) -> Vec<String> {
    split_statements(script)
        .iter()
        .filter_map(|statement| {
            let words: Vec<&str> = statement.split_whitespace().collect();
            let create_table = words.len() > 2
                && words[0].eq_ignore_ascii_case("CREATE")
                && words[1].eq_ignore_ascii_case("TABLE");
            if !create_table {
                return None;
            }
            let if_not_exists = words.get(2).is_some_and(|w| w.eq_ignore_ascii_case("IF"));
            let name = words.get(if if_not_exists { 5 } else { 2 })?;
            let name = name.split('(').next()?;
            Some(name.rsplit('.').next()?.to_owned())
        })
        .collect()
}
