//! The checks of a parsed statement against the schema: tables and columns exist, keys are
//! restricted as CQL requires, and every bind marker and result column is typed.

use super::*;

/// The type of each bind marker, in order, and of each result column (`SELECT` only).
#[derive(Debug, Clone, PartialEq)]
pub struct Typed {
    pub binds: Vec<(String, CqlType)>,
    pub results: Vec<(String, CqlType)>,
}

/// Checks `st` against `schema` and types its markers and results; every problem is listed.
pub fn check(schema: &Schema, st: &Statement) -> Result<Typed, Vec<String>> {
    let mut problems = Vec::new();
    let Some(table) = schema.tables.get(&st.table) else {
        return Err(vec![format!("unknown table {}", st.table)]);
    };
    let column = |name: &str, problems: &mut Vec<String>| -> Option<CqlType> {
        let t = table.column_type(name).cloned();
        if t.is_none() {
            problems.push(format!("unknown column {}.{name}", table.name));
        }
        t
    };
    if st.allow_filtering {
        problems.push("ALLOW FILTERING".into());
    }
    for name in &st.columns {
        column(name, &mut problems);
    }
    for rel in st.relations.iter().chain(&st.conditions) {
        for name in &rel.columns {
            column(name, &mut problems);
        }
    }

    // WHERE: the full partition key by equality, then clustering columns in key order: a run of
    // equalities, then at most one column (or one tuple of the next columns) with a range.
    let restricted = |name: &str| {
        st.relations
            .iter()
            .find(|r| r.columns.iter().any(|c| c == name))
    };
    let statics_only = st.kind != StatementKind::Select
        && !st.columns.is_empty()
        && st.columns.iter().all(|c| table.static_columns.contains(c));
    for key in &table.partition_key {
        match restricted(key) {
            Some(r) if r.op == Op::Eq && r.columns.len() == 1 => {}
            Some(_) => problems.push(format!("partition key column {key} must be bound by =")),
            None if st.kind == StatementKind::Insert => {}
            None => problems.push(format!("partition key column {key} is not restricted")),
        }
    }
    let mut index_used = false;
    for rel in &st.relations {
        let first = &rel.columns[0];
        if table.partition_key.contains(first) {
            continue;
        }
        if table.local_indexes.contains(first) && rel.op == Op::Eq && rel.columns.len() == 1 {
            if st.kind != StatementKind::Select {
                problems.push(format!("{first} is indexed: only a SELECT may restrict it"));
            }
            index_used = true;
            continue;
        }
        if !table.clustering.iter().any(|(c, _)| c == first) {
            problems.push(format!(
                "{first} is neither a key column nor locally indexed"
            ));
        }
    }
    if !index_used {
        let mut ended = false; // a range (or a gap) ends the usable prefix
        for (name, _) in &table.clustering {
            match restricted(name) {
                None => ended = true,
                Some(_) if ended => problems.push(format!(
                    "clustering column {name} restricted out of key order"
                )),
                Some(r) => {
                    if r.columns.len() > 1 {
                        let at = table
                            .clustering
                            .iter()
                            .position(|(c, _)| c == &r.columns[0]);
                        let expected: Vec<&String> = at
                            .map(|i| table.clustering[i..].iter().map(|(c, _)| c).collect())
                            .unwrap_or_default();
                        if expected.len() < r.columns.len()
                            || r.columns.iter().zip(&expected).any(|(a, b)| a != *b)
                        {
                            problems.push(format!(
                                "tuple relation {:?} must follow clustering order",
                                r.columns
                            ));
                        }
                        if r.columns.last() == Some(name) {
                            ended = r.op != Op::Eq;
                        }
                    } else if r.op != Op::Eq {
                        ended = true;
                    }
                }
            }
        }
    }
    match st.kind {
        StatementKind::Insert => {
            for key in table
                .partition_key
                .iter()
                .chain(table.clustering.iter().map(|(c, _)| c))
            {
                if !st.columns.contains(key) {
                    problems.push(format!("INSERT lacks primary key column {key}"));
                }
            }
        }
        StatementKind::Update if !statics_only => {
            for (key, _) in &table.clustering {
                if !matches!(restricted(key), Some(r) if r.op == Op::Eq && r.columns.len() == 1) {
                    problems.push(format!("UPDATE must bind clustering column {key} by ="));
                }
            }
        }
        StatementKind::Update | StatementKind::Select | StatementKind::Delete => {}
    }
    for c in &st.columns {
        if table.is_primary_key(c) && st.kind != StatementKind::Insert {
            problems.push(format!("{c} is part of the primary key and cannot be set"));
        }
    }
    // ORDER BY: the first clustering column, to reverse the whole clustering order.
    if let Some((c, _)) = st.order_by.first()
        && (st.order_by.len() > 1 || table.clustering.first().map(|(f, _)| f) != Some(c))
    {
        problems.push(format!(
            "ORDER BY must name only {:?}",
            table.clustering.first()
        ));
    }

    let mut typed = Typed {
        binds: Vec::new(),
        results: Vec::new(),
    };
    for marker in &st.markers {
        match marker {
            Marker::Column(c) => {
                if let Some(t) = column(c, &mut problems) {
                    typed.binds.push((c.clone(), t));
                }
            }
            Marker::Ttl => typed
                .binds
                .push(("[ttl]".into(), CqlType::Native("int".into()))),
            Marker::Timestamp => typed
                .binds
                .push(("[timestamp]".into(), CqlType::Native("bigint".into()))),
            Marker::Limit => typed
                .binds
                .push(("[limit]".into(), CqlType::Native("int".into()))),
        }
    }
    for s in &st.selectors {
        match s {
            Selector::Column(c) => {
                if let Some(t) = column(c, &mut problems) {
                    typed.results.push((c.clone(), t));
                }
            }
            Selector::CountAll => typed
                .results
                .push(("count".into(), CqlType::Native("bigint".into()))),
        }
    }
    if problems.is_empty() {
        Ok(typed)
    } else {
        Err(problems)
    }
}
